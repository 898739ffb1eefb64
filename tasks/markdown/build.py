"""The markdown stage's work: decide which pages need converting, convert them in parallel,
write one .md per page plus an ordered index, and count what happened.

The per-page work runs in `markdown.workers` processes, which read the stored pages and write
the .md files themselves, or, with `cluster.address` set, on a Dask cluster
(tasks.core.cluster), whose workers get the pages' bytes and send back the Markdown for this
process to write. Both call the same per-page functions, so the outputs are the same bytes.

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
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import markdownify
from tokenizers import Tokenizer
from tqdm import tqdm

from tasks.core import documents, encoding
from tasks.core.cluster import run_batches, split_batches
from tasks.core.documents import render_document
from tasks.core.encoding import choose_encoding
from tasks.core.io import read_jsonl, write_bytes_atomic, write_json_atomic, write_jsonl_atomic
from tasks.core.params import ClusterParams, MarkdownParams
from tasks.core.records import Exclusion, ManifestEntry, MarkdownDoc, PageStatus
from tasks.core.tokens import count_tokens, resolve_tokenizer
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
    """Changes when the params or the conversion code change, so outputs never go stale; not
    with the number of workers, which changes where a page is converted, not how."""
    h = hashlib.sha256(params.model_dump_json(exclude={"workers"}).encode())
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


def profile_stored_page(entry: ManifestEntry, html: bytes, params: MarkdownParams) -> PageProfile:
    charset, _ = choose_encoding(html, entry.encoding)
    return extract.profile_page(html, params, charset)


def read_and_profile_page(entry: ManifestEntry) -> PageProfile:
    """One stored page's profile for template learning (in a worker process)."""
    html = (_worker["raw_dir"] / (entry.file or "")).read_bytes()
    return profile_stored_page(entry, html, _worker["params"])


def profile_batch(
    setup: MarkdownParams, pages: list[tuple[ManifestEntry, bytes]]
) -> list[PageProfile]:
    """Profiles of pages sent with their bytes (on a cluster worker)."""
    return [profile_stored_page(entry, html, setup) for entry, html in pages]


def read_stored_pages(
    todo: list[ManifestEntry], raw_dir: Path, size: int
) -> Iterator[list[tuple[ManifestEntry, bytes]]]:
    """Batches of pages with their bytes, read only as each batch is sent."""
    for batch in split_batches(todo, size):
        yield [(entry, (raw_dir / (entry.file or "")).read_bytes()) for entry in batch]


def profile_pages(
    todo: list[ManifestEntry], raw_dir: Path, params: MarkdownParams, cluster: ClusterParams
) -> dict[str, PageProfile]:
    """Profile pages across `params.workers` processes, or on the Dask cluster at
    `cluster.address`, with a progress bar."""
    if not todo:
        return {}
    if cluster.address:
        return profile_pages_on_cluster(todo, raw_dir, params, cluster)
    init = (raw_dir, params)
    with ProcessPoolExecutor(params.workers, initializer=_init_profiler, initargs=init) as pool:
        found = pool.map(read_and_profile_page, todo, chunksize=8)
        progress = tqdm(found, desc="template", total=len(todo), unit="page")
        return dict(zip((e.id for e in todo), progress, strict=True))


def profile_pages_on_cluster(
    todo: list[ManifestEntry], raw_dir: Path, params: MarkdownParams, cluster: ClusterParams
) -> dict[str, PageProfile]:
    found: list[PageProfile] = []
    with tqdm(desc="template", total=len(todo), unit="page") as progress:

        def collect(profiles: list[PageProfile]) -> None:
            found.extend(profiles)
            progress.update(len(profiles))

        batches = read_stored_pages(todo, raw_dir, cluster.batch_pages)
        run_batches(profile_batch, params, batches, cluster, collect)
    return dict(zip((e.id for e in todo), found, strict=True))


def read_site_profiles(
    pages: list[ManifestEntry],
    dirs: tuple[Path, Path],
    params: MarkdownParams,
    fingerprint: str,
    cluster: ClusterParams,
) -> tuple[dict[str, tuple[str, PageProfile]], int]:
    """Every page's profile under its key, and how many pages were read for it (raw pages in
    dirs[0]; unchanged pages keep last run's profile from dirs[1]). None when a content selector
    leaves the generic path, and so the template, unused."""
    if params.content_selector:
        return {}, 0
    cached = read_profiles(dirs[1])
    keys = {e.id: conversion_key(e, fingerprint) for e in pages}
    todo = [e for e in pages if e.id not in cached or cached[e.id][0] != keys[e.id]]
    fresh = profile_pages(todo, dirs[0], params, cluster)
    profiles = {
        e.id: (keys[e.id], fresh[e.id] if e.id in fresh else cached[e.id][1]) for e in pages
    }
    return profiles, len(todo)


@dataclass(frozen=True)
class ConvertSetup:
    """What converting any page needs besides the page: the tokenizer travels as its JSON
    (with a digest to know it by), so a cluster worker needs no file of ours."""

    params: MarkdownParams
    template: SiteTemplate
    tokenizer_json: str
    tokenizer_digest: str


def read_convert_setup(
    tokenizer_file: Path, params: MarkdownParams, site_template: SiteTemplate
) -> ConvertSetup:
    text = tokenizer_file.read_text("utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    return ConvertSetup(params, site_template, text, digest)


def _init_worker(raw_dir: Path, md_dir: Path, setup: ConvertSetup) -> None:
    tokenizer = Tokenizer.from_str(setup.tokenizer_json)
    _worker.update(tokenizer=tokenizer, raw_dir=raw_dir, md_dir=md_dir, setup=setup)


def convert_stored_page(
    entry: ManifestEntry, key: str, html: bytes, setup: ConvertSetup, tokenizer: Tokenizer
) -> tuple[PageResult, str | None]:
    """One page's outcome and its .md text (None when dropped)."""
    charset, check = choose_encoding(html, entry.encoding)
    out = convert.convert_page(html, entry.url, setup.params, charset, setup.template)
    html_text = html.decode(charset, errors="replace")
    html_tokens, md_tokens = count_tokens(tokenizer, [html_text, out.markdown])
    if out.drop_reason:
        return PageResult(entry.id, key, None, out.drop_reason, html_tokens, 0, check), None
    doc = MarkdownDoc(
        id=entry.id,
        url=entry.url,
        title=out.title,
        product=out.product,
        version=out.version,
        sha=entry.sha256 or "",
        extractor=out.extractor,
    )
    damage = out.markdown.count("\ufffd")
    result = PageResult(
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
    return result, render_document(doc, out.markdown)


def write_page(md_dir: Path, page_id: str, text: str | None) -> None:
    if text is not None:
        write_bytes_atomic(md_dir / f"{page_id}.md", text.encode("utf-8"))


def convert_and_write_page(entry: ManifestEntry, key: str) -> PageResult:
    """Convert one stored page and write its .md (in a worker process)."""
    html = (_worker["raw_dir"] / (entry.file or "")).read_bytes()
    result, text = convert_stored_page(entry, key, html, _worker["setup"], _worker["tokenizer"])
    write_page(_worker["md_dir"], entry.id, text)
    return result


_tokenizers: dict[str, Tokenizer] = {}


def convert_batch(
    setup: ConvertSetup, pages: list[tuple[ManifestEntry, str, bytes]]
) -> list[tuple[PageResult, str | None]]:
    """Pages sent with their keys and bytes, converted (on a cluster worker)."""
    if setup.tokenizer_digest not in _tokenizers:  # parsed once per worker, not per batch
        _tokenizers[setup.tokenizer_digest] = Tokenizer.from_str(setup.tokenizer_json)
    tokenizer = _tokenizers[setup.tokenizer_digest]
    return [convert_stored_page(e, key, html, setup, tokenizer) for e, key, html in pages]


def convert_pages(
    todo: list[ManifestEntry],
    keys: dict[str, str],
    dirs: tuple[Path, Path],
    setup: ConvertSetup,
    cluster: ClusterParams,
) -> dict[str, PageResult]:
    """Convert pages across `markdown.workers` processes, or on the Dask cluster at
    `cluster.address`, with a progress bar."""
    if not todo:
        return {}
    if cluster.address:
        return convert_pages_on_cluster(todo, keys, dirs, setup, cluster)
    init = (dirs[0], dirs[1], setup)
    workers = setup.params.workers
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init) as pool:
        futures = [pool.submit(convert_and_write_page, e, keys[e.id]) for e in todo]
        results = [f.result() for f in tqdm(futures, desc="markdown", unit="page")]
    return {r.id: r for r in results}


def convert_pages_on_cluster(
    todo: list[ManifestEntry],
    keys: dict[str, str],
    dirs: tuple[Path, Path],
    setup: ConvertSetup,
    cluster: ClusterParams,
) -> dict[str, PageResult]:
    """The workers get page bytes and send back .md text, which is written here: they need
    no access to this machine's disk."""
    results: dict[str, PageResult] = {}
    with tqdm(desc="markdown", total=len(todo), unit="page") as progress:

        def collect(done: list[tuple[PageResult, str | None]]) -> None:
            for result, text in done:
                write_page(dirs[1], result.id, text)
                results[result.id] = result
            progress.update(len(done))

        stored = read_stored_pages(todo, dirs[0], cluster.batch_pages)
        batches = ([(e, keys[e.id], html) for e, html in batch] for batch in stored)
        run_batches(convert_batch, setup, batches, cluster, collect)
    return results


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
    raw_dir: Path,
    md_dir: Path,
    params: MarkdownParams,
    tokenizer_cache: Path,
    cluster: ClusterParams | None = None,
) -> dict[str, Any]:
    """The whole stage: returns the report (without wall time)."""
    cluster = cluster or ClusterParams()
    pages = read_manifest_pages(raw_dir)
    converter = fingerprint_converter(params)
    dirs = (raw_dir, md_dir)
    profiles, profiled = read_site_profiles(pages, dirs, params, converter, cluster)
    site_template = learn_template((p for _, p in profiles.values()), params.template_min_share)
    fingerprint = fingerprint_template(converter, site_template)
    todo, kept = split_work(pages, read_state(md_dir), fingerprint)
    tokenizer_file, name = resolve_tokenizer(params.tokenizer, tokenizer_cache)
    keys = {e.id: conversion_key(e, fingerprint) for e in todo}
    setup = read_convert_setup(tokenizer_file, params, site_template)
    results = {**kept, **convert_pages(todo, keys, dirs, setup, cluster)}
    md_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(md_dir, pages, results)
    write_template(md_dir, site_template, profiles)
    report = summarize(pages, results, len(todo), name)
    return report | {"template": summarize_template(site_template, [*results.values()], profiled)}
