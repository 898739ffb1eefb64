"""The character encoding of an HTML page's bytes, for the crawler (links) and the markdown
stage (content) alike: a byte-order mark, then the declared charset (HTTP header), then the
page's own XML declaration or <meta>, else UTF-8. Only text encodings count: Python's codec
registry also knows bytes-to-bytes transforms (base64, rot13, zlib) that decode no page."""

from __future__ import annotations

import codecs
import re

BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
XML_DECL = re.compile(rb"""^\s*<\?xml[^>]*encoding=["']([A-Za-z0-9._:-]+)["']""")
META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
SNIFF_BYTES = 4096


def normalize_encoding(name: str | bytes | None) -> str | None:
    """The text codec's canonical name, or None when Python does not know it or it is not a
    text encoding."""
    if not name:
        return None
    text = name.decode("ascii", "ignore") if isinstance(name, bytes) else name
    try:
        info = codecs.lookup(text.strip())
    except LookupError:
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def parse_header_charset(content_type: str | None) -> str | None:
    """The charset of a Content-Type header value, when it names a text encoding."""
    match = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", content_type or "", re.I)
    return normalize_encoding(match.group(1)) if match else None


def detect_encoding(data: bytes, declared: str | None = None) -> str:
    """BOM, then `declared` (e.g. the HTTP charset), XML declaration, meta charset, else utf-8."""
    for bom, name in BOMS:
        if data.startswith(bom):
            return name
    head = data[:SNIFF_BYTES]
    for found in (
        normalize_encoding(declared),
        normalize_encoding(m.group(1)) if (m := XML_DECL.match(head)) else None,
        normalize_encoding(m.group(1)) if (m := META_CHARSET.search(head)) else None,
    ):
        if found:
            return found
    return "utf-8"


def choose_encoding(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """The encoding to read a page with, and how sure it is: `declared` when the sniffed one
    decodes every byte, `guessed` when it does not but a likely other one (UTF-8, then
    Windows-1252) does, `damaged` when none does and undecodable bytes will become U+FFFD."""
    sniffed = detect_encoding(data, declared)
    for n, name in enumerate(dict.fromkeys([sniffed, "utf-8", "cp1252"])):
        try:
            data.decode(name)
        except UnicodeDecodeError:
            continue
        return name, "declared" if n == 0 else "guessed"
    return sniffed, "damaged"
