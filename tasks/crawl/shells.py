"""Telling a JavaScript shell from a page: the HTML a client-rendered site sends is a few
scripts and an empty element they fill in, with next to no text of its own."""

from __future__ import annotations

import re

# Fewer visible characters than this (outside scripts, styles and <noscript>) is not a page a
# reader could use; the shortest real pages of the test sites carry several hundred.
SHELL_MAX_TEXT_CHARS = 200
# Below this the page is a shell even without a recognised root element.
BARE_MAX_TEXT_CHARS = 40
SCRIPT = re.compile(rb"<script\b", re.IGNORECASE)
HIDDEN = re.compile(
    r"<!--.*?(?:-->|\Z)|<(script|style|noscript|template)\b.*?(?:</\1\s*>|\Z)|<head\b.*?</head\s*>",
    re.IGNORECASE | re.DOTALL,
)
TAG = re.compile(r"<[^>]*>")
# The mount points of the common frameworks (React, Vue, Next.js, Nuxt, Gatsby, Docusaurus,
# Angular's <app-root>) left empty for the scripts to fill.
EMPTY_ROOT = re.compile(
    r"<(div|main|section)\b[^>]*?\bid\s*=\s*[\"']?"
    r"(?:root|app|__next|__nuxt|___gatsby|__docusaurus|main|application)\b[^>]*>\s*</\1\s*>"
    r"|<app-root\b[^>]*>\s*</app-root\s*>",
    re.IGNORECASE,
)


def measure_visible_text(html: str) -> int:
    """Characters of text a reader would see, whitespace left out."""
    text = TAG.sub(" ", HIDDEN.sub(" ", html))
    return sum(1 for c in text if not c.isspace())


def is_js_shell(body: bytes, encoding: str) -> bool:
    """A page with scripts, almost no text of its own, and an empty element for them to fill
    (or no text at all). Pages without a script are never shells, which keeps this free on
    most static documentation."""
    if not SCRIPT.search(body):
        return False
    html = body.decode(encoding, "replace")
    chars = measure_visible_text(html)
    if chars >= SHELL_MAX_TEXT_CHARS:
        return False
    return chars < BARE_MAX_TEXT_CHARS or EMPTY_ROOT.search(html) is not None
