"""The markdown stage's output format, read by every later stage: one `<id>.md` per page with
YAML front matter (a MarkdownDoc) above the body, and index.jsonl giving the reading order.

It lives apart from the HTML converter so that changing how pages are converted does not
change the code synth and datasets depend on."""

from __future__ import annotations

from pathlib import Path

import yaml

from tasks.core.io import read_jsonl
from tasks.core.records import MarkdownDoc


def render_document(doc: MarkdownDoc, body: str) -> str:
    """YAML front matter in field order, a blank line, then the body; one final newline.

    The reading order stays out: it lives in the stage's index.jsonl, so a page added
    elsewhere on the site does not rewrite every file after it.
    """
    fields = doc.model_dump(mode="json", exclude={"order"})
    front = yaml.safe_dump(fields, sort_keys=False, allow_unicode=True, width=10_000)
    body = body.strip("\n")
    return f"---\n{front}---\n" + (f"\n{body}\n" if body else "")


def parse_document(text: str) -> tuple[MarkdownDoc, str]:
    """Inverse of render_document: the front-matter record and the body."""
    if not text.startswith("---\n"):
        raise ValueError("document does not start with a front-matter line '---'")
    end = text.find("\n---\n", 3)
    if end < 0:
        raise ValueError("front matter is not closed by a line '---'")
    front = yaml.safe_load(text[4 : end + 1]) or {}
    body = text[end + 5 :]
    body = body[1:] if body.startswith("\n") else body
    return MarkdownDoc.model_validate(front), body.removesuffix("\n")


def read_pages(md_dir: Path) -> list[tuple[MarkdownDoc, str]]:
    """The markdown stage's pages in reading order, with their bodies."""
    pages = []
    for row in read_jsonl(md_dir / "index.jsonl"):
        doc, body = parse_document((md_dir / f"{row['id']}.md").read_text("utf-8"))
        pages.append((doc, body))
    return pages
