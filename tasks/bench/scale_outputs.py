"""Stand-ins for the crawl and markdown stages' outputs on a generated site, written straight
from the generator, for sizes where running the stages takes longer than the measurement is
worth (100K pages here: hours of conversion on 2 cores). Only the no-op `dvc status` and
`dvc repro` are measured on them, so what matters is that the folders hold the same files the
stages write, of about the same sizes:

- data/raw: pages/<sha256>.html with the very bytes the server sends (the crawl stores those),
  manifest.jsonl (one OK entry per page, in the site's order; depth is the copy's, not the
  breadth-first depth), an empty exclusions.jsonl;
- data/markdown: <id>.md per page (of the generated site, or of what the crawl stage stored
  when the bench runs that stage for real) with the stage's front matter over the page's text
  with the tags stripped (not the converter's Markdown), index.jsonl, exclusions.jsonl,
  state.json, profiles.jsonl and template.json of the stage's shapes.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.bench.scale_site import SiteLayout, Source, render_site
from tasks.core.documents import render_document
from tasks.core.io import write_bytes_atomic, write_jsonl_atomic
from tasks.core.records import ManifestEntry, MarkdownDoc, PageStatus, content_sha, url_id
from tasks.crawl.crawler import page_file, write_manifest
from tasks.markdown.build import read_manifest_pages

TAG = re.compile(r"<[^>]*>")
TITLE = re.compile(r"<title>(.*?)</title>", re.DOTALL)
FETCHED_AT = "2026-01-01T00:00:00+00:00"  # fixed: a rerun writes the same bytes


@dataclass(frozen=True)
class StandIn:
    raw_pages: int
    markdown_pages: int


def strip_tags(text: str) -> str:
    return html.unescape(TAG.sub("", text))


def build_entry(url: str, order: int, data: bytes) -> ManifestEntry:
    sha = content_sha(data)
    return ManifestEntry(
        id=url_id(url),
        url=url,
        status=PageStatus.OK,
        http_status=200,
        sha256=sha,
        file=page_file(sha),
        content_type="text/html",
        encoding="utf-8",
        fetched_at=FETCHED_AT,
        order=order,
        depth=url.count("/") - 3,
    )


def render_markdown(entry: ManifestEntry, text: str) -> tuple[MarkdownDoc, str]:
    found = TITLE.search(text)
    title = strip_tags(found.group(1)).strip() if found else ""
    doc = MarkdownDoc(
        id=entry.id, url=entry.url, title=title, sha=entry.sha256 or "", extractor="generic"
    )
    return doc, render_document(doc, strip_tags(text))


class MarkdownStandIns:
    """data/markdown written page by page, then its index, state and other files at close."""

    def __init__(self, md: Path) -> None:
        md.mkdir(parents=True, exist_ok=True)
        self.md = md
        self.docs: list[dict[str, object]] = []
        self.state: dict[str, dict[str, object]] = {}

    def add(self, entry: ManifestEntry, text: str) -> None:
        doc, document = render_markdown(entry, text)
        (self.md / f"{entry.id}.md").write_text(document, "utf-8")
        self.docs.append(doc.model_copy(update={"order": entry.order}).model_dump())
        self.state[entry.id] = {"id": entry.id, "key": entry.sha256, "doc": doc.model_dump()}

    def close(self) -> int:
        md, state = self.md, self.state
        write_jsonl_atomic(md / "index.jsonl", self.docs)
        write_jsonl_atomic(md / "exclusions.jsonl", [])
        write_jsonl_atomic(md / "profiles.jsonl", ({"id": k, "profile": {}} for k in sorted(state)))
        write_bytes_atomic(md / "state.json", json.dumps(state, sort_keys=True).encode("utf-8"))
        write_bytes_atomic(md / "template.json", b"{}")
        return len(self.docs)


def write_stand_ins(
    source: Source, layout: SiteLayout, base_url: str, raw: Path, md: Path
) -> StandIn:
    """data/raw and data/markdown for the whole generated site, page by page."""
    (raw / "pages").mkdir(parents=True, exist_ok=True)
    markdown = MarkdownStandIns(md)
    entries = []
    for order, (path, text) in enumerate(render_site(source, layout)):
        data = text.encode("utf-8")
        entry = build_entry(base_url + path, order, data)
        (raw / (entry.file or "")).write_bytes(data)
        markdown.add(entry, text)
        entries.append(entry)
    write_manifest(raw, entries)
    write_bytes_atomic(raw / "exclusions.jsonl", b"")
    return StandIn(len(entries), markdown.close())


def write_markdown_stand_ins(raw: Path, md: Path) -> int:
    """data/markdown for the pages the crawl stage stored in `raw` (its manifest's order)."""
    markdown = MarkdownStandIns(md)
    for entry in read_manifest_pages(raw):
        markdown.add(entry, (raw / (entry.file or "")).read_text("utf-8", "replace"))
    return markdown.close()
