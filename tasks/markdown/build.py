"""The markdown stage's work: decide which pages need converting, convert them in parallel,
write one .md per page plus an ordered index, and count what happened.

A page is converted again only when its conversion key changes: the source sha, the
`markdown:` params or the converter's own code. Everything else is read back from the
previous run's state file, so a one-page change costs one page of work.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import markdownify
from tqdm import tqdm

from tasks.core import documents, encoding
from tasks.core.documents import render_document
from tasks.core.encoding import choose_encoding
from tasks.core.io import read_jsonl, write_bytes_atomic, write_json_atomic, write_jsonl_atomic
from tasks.core.params import MarkdownParams
from tasks.core.records import Exclusion, ManifestEntry, MarkdownDoc, PageStatus
from tasks.core.tokens import count_tokens, load_tokenizer, resolve_tokenizer
from tasks.markdown import convert, extract

STATE_FILE = "state.json"
INDEX_FILE = "index.jsonl"
EXCLUSIONS_FILE = "exclusions.jsonl"


@dataclass(frozen=True)
class PageResult:
    """One page's conversion outcome, kept in the state file between runs."""

    id: str
    key: str
    doc: dict[str, Any] | None  # MarkdownDoc fields; None when dropped
    drop_reason: str | None
    html_tokens: int
    md_tokens: int
    encoding_check: str = "declared"  # declared, guessed or damaged (tasks.core.encoding)
    replacement_chars: int = 0  # U+FFFD in the Markdown: text lost to a wrong encoding


def read_manifest_pages(raw_dir: Path) -> list[ManifestEntry]:
    """Stored pages in the site's reading order (duplicates are stored once, so skipped)."""
    entries = (ManifestEntry.model_validate(row) for row in read_jsonl(raw_dir / "manifest.jsonl"))
    return sorted((e for e in entries if e.status == PageStatus.OK), key=lambda e: e.order)


def fingerprint_converter(params: MarkdownParams) -> str:
    """Changes when the params or the conversion code change, so outputs never go stale."""
    h = hashlib.sha256(params.model_dump_json().encode())
    for module in (extract, convert, encoding, documents):
        h.update(Path(module.__file__ or "").read_bytes())
    h.update(markdownify.__version__.encode() if hasattr(markdownify, "__version__") else b"")
    return h.hexdigest()


def conversion_key(entry: ManifestEntry, fingerprint: str) -> str:
    return hashlib.sha256(f"{entry.sha256}:{fingerprint}".encode()).hexdigest()


def read_state(md_dir: Path) -> dict[str, PageResult]:
    path = md_dir / STATE_FILE
    if not path.is_file():
        return {}
    return {k: PageResult(**v) for k, v in json.loads(path.read_text("utf-8")).items()}


def split_work(
    pages: list[ManifestEntry], state: dict[str, PageResult], fingerprint: str
) -> tuple[list[ManifestEntry], dict[str, PageResult]]:
    """Pages that need converting, and the kept results of those that do not."""
    todo, kept = [], {}
    for entry in pages:
        old = state.get(entry.id)
        if old is not None and old.key == conversion_key(entry, fingerprint):
            kept[entry.id] = old
        else:
            todo.append(entry)
    return todo, kept


_worker: dict[str, Any] = {}


def _init_worker(tokenizer_file: str, raw_dir: Path, md_dir: Path, params: MarkdownParams) -> None:
    _worker.update(tokenizer=load_tokenizer(Path(tokenizer_file)), raw_dir=raw_dir, md_dir=md_dir)
    _worker["params"] = params


def convert_and_write_page(entry: ManifestEntry, key: str) -> PageResult:
    """Convert one stored page and write its .md (in a worker process)."""
    html = (_worker["raw_dir"] / (entry.file or "")).read_bytes()
    charset, check = choose_encoding(html, entry.encoding)
    out = convert.convert_page(html, entry.url, _worker["params"], charset)
    html_text = html.decode(charset, errors="replace")
    html_tokens, md_tokens = count_tokens(_worker["tokenizer"], [html_text, out.markdown])
    if out.drop_reason:
        return PageResult(entry.id, key, None, out.drop_reason, html_tokens, 0, check)
    doc = MarkdownDoc(
        id=entry.id,
        url=entry.url,
        title=out.title,
        product=out.product,
        version=out.version,
        sha=entry.sha256 or "",
        extractor=out.extractor,
    )
    text = render_document(doc, out.markdown)
    write_bytes_atomic(_worker["md_dir"] / f"{entry.id}.md", text.encode("utf-8"))
    damage = out.markdown.count("\ufffd")
    return PageResult(entry.id, key, doc.model_dump(), None, html_tokens, md_tokens, check, damage)


def convert_pages(
    todo: list[ManifestEntry],
    keys: dict[str, str],
    dirs: tuple[Path, Path],
    params: MarkdownParams,
    tokenizer_file: Path,
) -> dict[str, PageResult]:
    """Convert pages across `params.workers` processes, with a progress bar."""
    if not todo:
        return {}
    init = (str(tokenizer_file), dirs[0], dirs[1], params)
    with ProcessPoolExecutor(params.workers, initializer=_init_worker, initargs=init) as pool:
        futures = [pool.submit(convert_and_write_page, e, keys[e.id]) for e in todo]
        results = [f.result() for f in tqdm(futures, desc="markdown", unit="page")]
    return {r.id: r for r in results}


def write_outputs(md_dir: Path, pages: list[ManifestEntry], results: dict[str, PageResult]) -> None:
    """Index (reading order), exclusions and state; .md files of vanished pages removed."""
    docs, exclusions = [], []
    for entry in pages:
        result = results[entry.id]
        if result.doc is None:
            reason = result.drop_reason or "dropped"
            exclusions.append(Exclusion(id=entry.id, url=entry.url, reason=reason).model_dump())
        else:
            docs.append(MarkdownDoc(**{**result.doc, "order": entry.order}).model_dump())
    write_jsonl_atomic(md_dir / INDEX_FILE, docs)
    write_jsonl_atomic(md_dir / EXCLUSIONS_FILE, exclusions)
    write_json_atomic(md_dir / STATE_FILE, {k: asdict(results[k]) for k in sorted(results)})
    keep = {f"{d['id']}.md" for d in docs}
    for path in md_dir.glob("*.md"):
        if path.name not in keep:
            path.unlink()


def summarize(
    pages: list[ManifestEntry], results: dict[str, PageResult], converted: int, tokenizer: str
) -> dict[str, Any]:
    kept = [r for r in results.values() if r.doc is not None]
    html_tokens = sum(r.html_tokens for r in results.values())
    md_tokens = sum(r.md_tokens for r in kept)
    drops = Counter(r.drop_reason for r in results.values() if r.doc is None)
    return {
        "pages_in": len(pages),
        "pages_out": len(kept),
        "converted": converted,
        "reused": len(pages) - converted,
        "dropped_by_reason": dict(sorted(drops.items())),
        "extractor": dict(sorted(Counter(r.doc["extractor"] for r in kept if r.doc).items())),
        "tokenizer": tokenizer,
        "html_tokens": html_tokens,
        "markdown_tokens": md_tokens,
        "markdown_to_html_token_ratio": round(md_tokens / html_tokens, 4) if html_tokens else 0,
        "encoding": summarize_encodings(list(results.values())),
        # The docs' own product and version (markdown.product_pattern / version_pattern): a
        # release diff shows when the site moved to another version of the docs.
        "versions": dict(
            sorted(Counter(f"{r.doc['product']} {r.doc['version']}" for r in kept if r.doc).items())
        ),
    }


def summarize_encodings(results: list[PageResult]) -> dict[str, Any]:
    """Pages read with another encoding than declared, and text still lost (U+FFFD)."""
    checks = Counter(r.encoding_check for r in results)
    damaged = sorted(r.id for r in results if r.replacement_chars or r.encoding_check == "damaged")
    return {
        "guessed": checks["guessed"],
        "damaged": checks["damaged"],
        "replacement_chars": sum(r.replacement_chars for r in results),
        "pages_with_replacement_chars": damaged,
    }


def build_markdown(
    raw_dir: Path, md_dir: Path, params: MarkdownParams, tokenizer_cache: Path
) -> dict[str, Any]:
    """The whole stage: returns the report (without wall time)."""
    pages = read_manifest_pages(raw_dir)
    fingerprint = fingerprint_converter(params)
    todo, kept = split_work(pages, read_state(md_dir), fingerprint)
    tokenizer_file, name = resolve_tokenizer(params.tokenizer, tokenizer_cache)
    keys = {e.id: conversion_key(e, fingerprint) for e in todo}
    results = {**kept, **convert_pages(todo, keys, (raw_dir, md_dir), params, tokenizer_file)}
    md_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(md_dir, pages, results)
    return summarize(pages, results, len(todo), name)
