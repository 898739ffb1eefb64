"""The markdown stage's work: decide which pages need converting, convert them in parallel,
write one .md per page plus an ordered index, and count what happened.

Before converting, every page is profiled and the site's template learned from all profiles
(tasks.markdown.template); blocks that repeat on most pages and are mostly links are then
removed from every page. A page is converted again only when its conversion key changes: the
source sha, the `markdown:` params, the converter's own code or the learned template; it is
profiled again only when one of the first three changes. Everything else is read back from the
previous run's state.json and profiles.jsonl, so a one-page change costs one page of work,
unless it changes the site's template.
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
from tasks.markdown import convert, extract, template
from tasks.markdown.template import PageProfile, SiteTemplate, learn_template, load_profile

STATE_FILE = "state.json"
TEMPLATE_FILE = "template.json"
PROFILES_FILE = "profiles.jsonl"
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
    template_blocks: int = 0  # blocks removed as the site's template


def read_manifest_pages(raw_dir: Path) -> list[ManifestEntry]:
    """Stored pages in the site's reading order (duplicates are stored once, so skipped)."""
    entries = (ManifestEntry.model_validate(row) for row in read_jsonl(raw_dir / "manifest.jsonl"))
    return sorted((e for e in entries if e.status == PageStatus.OK), key=lambda e: e.order)


def fingerprint_converter(params: MarkdownParams) -> str:
    """Changes when the params or the conversion code change, so outputs never go stale."""
    h = hashlib.sha256(params.model_dump_json().encode())
    for module in (extract, template, convert, encoding, documents):
        h.update(Path(module.__file__ or "").read_bytes())
    h.update(markdownify.__version__.encode() if hasattr(markdownify, "__version__") else b"")
    return h.hexdigest()


def fingerprint_template(fingerprint: str, site_template: SiteTemplate) -> str:
    """The converter's fingerprint with the learned template folded in: a page converted under
    another template is converted again, even though its own source did not change."""
    return hashlib.sha256(f"{fingerprint}:{site_template.digest()}".encode()).hexdigest()


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


def read_profiles(md_dir: Path) -> dict[str, tuple[str, PageProfile]]:
    """Each page's profile from the previous run, with the key it was computed under."""
    path = md_dir / PROFILES_FILE
    if not path.is_file():
        return {}
    return {row["id"]: (row["key"], load_profile(row["profile"])) for row in read_jsonl(path)}


_worker: dict[str, Any] = {}


def _init_profiler(raw_dir: Path, params: MarkdownParams) -> None:
    _worker.update(raw_dir=raw_dir, params=params)


def read_and_profile_page(entry: ManifestEntry) -> PageProfile:
    """One stored page's profile for template learning (in a worker process)."""
    html = (_worker["raw_dir"] / (entry.file or "")).read_bytes()
    charset, _ = choose_encoding(html, entry.encoding)
    return extract.profile_page(html, _worker["params"], charset)


def profile_pages(
    todo: list[ManifestEntry], raw_dir: Path, params: MarkdownParams
) -> dict[str, PageProfile]:
    """Profile pages across `params.workers` processes, with a progress bar."""
    if not todo:
        return {}
    init = (raw_dir, params)
    with ProcessPoolExecutor(params.workers, initializer=_init_profiler, initargs=init) as pool:
        found = pool.map(read_and_profile_page, todo, chunksize=8)
        progress = tqdm(found, desc="template", total=len(todo), unit="page")
        return dict(zip((e.id for e in todo), progress, strict=True))


def read_site_profiles(
    pages: list[ManifestEntry], dirs: tuple[Path, Path], params: MarkdownParams, fingerprint: str
) -> tuple[dict[str, tuple[str, PageProfile]], int]:
    """Every page's profile under its key, and how many pages were read for it (raw pages in
    dirs[0]; unchanged pages keep last run's profile from dirs[1]). None when a content selector
    leaves the generic path, and so the template, unused."""
    if params.content_selector:
        return {}, 0
    cached = read_profiles(dirs[1])
    keys = {e.id: conversion_key(e, fingerprint) for e in pages}
    todo = [e for e in pages if e.id not in cached or cached[e.id][0] != keys[e.id]]
    fresh = profile_pages(todo, dirs[0], params)
    profiles = {
        e.id: (keys[e.id], fresh[e.id] if e.id in fresh else cached[e.id][1]) for e in pages
    }
    return profiles, len(todo)


def _init_worker(
    tokenizer_file: str,
    raw_dir: Path,
    md_dir: Path,
    params: MarkdownParams,
    site_template: SiteTemplate,
) -> None:
    _worker.update(tokenizer=load_tokenizer(Path(tokenizer_file)), raw_dir=raw_dir, md_dir=md_dir)
    _worker.update(params=params, template=site_template)


def convert_and_write_page(entry: ManifestEntry, key: str) -> PageResult:
    """Convert one stored page and write its .md (in a worker process)."""
    html = (_worker["raw_dir"] / (entry.file or "")).read_bytes()
    charset, check = choose_encoding(html, entry.encoding)
    out = convert.convert_page(html, entry.url, _worker["params"], charset, _worker["template"])
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
    return PageResult(
        entry.id,
        key,
        doc.model_dump(),
        None,
        html_tokens,
        md_tokens,
        check,
        damage,
        out.template_blocks,
    )


def convert_pages(
    todo: list[ManifestEntry],
    keys: dict[str, str],
    dirs: tuple[Path, Path],
    params: MarkdownParams,
    setup: tuple[Path, SiteTemplate],
) -> dict[str, PageResult]:
    """Convert pages across `params.workers` processes, with a progress bar; `setup` is the
    tokenizer file and the site's template."""
    if not todo:
        return {}
    init = (str(setup[0]), dirs[0], dirs[1], params, setup[1])
    with ProcessPoolExecutor(params.workers, initializer=_init_worker, initargs=init) as pool:
        futures = [pool.submit(convert_and_write_page, e, keys[e.id]) for e in todo]
        results = [f.result() for f in tqdm(futures, desc="markdown", unit="page")]
    return {r.id: r for r in results}


def write_template(
    md_dir: Path, site_template: SiteTemplate, profiles: dict[str, tuple[str, PageProfile]]
) -> None:
    """The learned template (for people to read) and each page's profile (for the next run)."""
    rows = [{"id": k, "key": key, "profile": profile} for k, (key, profile) in profiles.items()]
    write_jsonl_atomic(md_dir / PROFILES_FILE, sorted(rows, key=lambda row: row["id"]))
    write_json_atomic(md_dir / TEMPLATE_FILE, site_template.to_json())


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


def summarize_template(
    site_template: SiteTemplate, results: list[PageResult], profiled: int
) -> dict[str, Any]:
    """What the site's template holds (all of it in template.json) and where it was removed."""
    return {
        "pages_profiled": profiled,
        "block_keys": sorted(site_template.blocks),
        "items": sum(len(items) for items in site_template.blocks.values()),
        "pages_stripped": sum(1 for r in results if r.template_blocks),
        "blocks_removed": sum(r.template_blocks for r in results),
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
    converter = fingerprint_converter(params)
    profiles, profiled = read_site_profiles(pages, (raw_dir, md_dir), params, converter)
    site_template = learn_template((p for _, p in profiles.values()), params.template_min_share)
    fingerprint = fingerprint_template(converter, site_template)
    todo, kept = split_work(pages, read_state(md_dir), fingerprint)
    tokenizer_file, name = resolve_tokenizer(params.tokenizer, tokenizer_cache)
    keys = {e.id: conversion_key(e, fingerprint) for e in todo}
    setup = (tokenizer_file, site_template)
    results = {**kept, **convert_pages(todo, keys, (raw_dir, md_dir), params, setup)}
    md_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(md_dir, pages, results)
    write_template(md_dir, site_template, profiles)
    report = summarize(pages, results, len(todo), name)
    return report | {"template": summarize_template(site_template, [*results.values()], profiled)}
