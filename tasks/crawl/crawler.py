"""The breadth-first crawl: robots, sitemap seeds, fetching pages, reconciling the manifest.

Threads fetch and store; the main thread consumes each BFS level in queue order, so `order`,
identities and duplicate choices never depend on which request finished first.

Manifest semantics: `http_status`, `sha256` and `fetched_at` describe the stored bytes, so a
304 or an identical 200 changes none of them. A fetch that fails (after retries) keeps the
previous stored version and follows its links; 404/410 on a known page, or a page no longer
reached, makes it REMOVED. robots.txt 4xx allows all; 5xx or unreachable after retries stops
the crawl with CrawlError before anything is written (RFC 9309: assume full disallow).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from tasks.core.encoding import detect_encoding, parse_header_charset
from tasks.core.io import read_jsonl, write_if_changed
from tasks.core.params import CrawlParams
from tasks.core.records import ManifestEntry, PageStatus, content_sha, url_id
from tasks.crawl.fetch import Fetched, Fetcher, RetryPolicy
from tasks.crawl.links import extract_links
from tasks.crawl.robots import ALLOW_ALL, Robots, parse_robots, parse_sitemap
from tasks.crawl.urls import (
    compile_excludes,
    extract_skip_reason,
    normalize_link,
    normalize_scope,
    normalize_url,
)

MANIFEST = "manifest.jsonl"
PAGES = "pages"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
GONE = frozenset({404, 410})
MAX_REDIRECTS = 10
MAX_SITEMAPS = 50
# Creating files in one folder serialises on its lock in the kernel: a second writer thread
# only waits (spinning on a CPU the fetching threads and the server need), so one writes.
WRITER_THREADS = 1
STORED = (PageStatus.OK, PageStatus.DUPLICATE)


class CrawlError(RuntimeError):
    """The crawl cannot start or its start URLs cannot be fetched; nothing was written."""


@dataclass(frozen=True)
class Task:
    url: str
    order: int
    depth: int


@dataclass
class Outcome:
    """What fetching one task produced, before the main thread decides its identity."""

    task: Task
    final_url: str
    status: PageStatus
    http_status: int | None = None
    reason: str | None = None
    detail: str = ""
    body: bytes | None = None
    sha: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    encoding: str | None = None
    fetched: bool = False  # a 200 whose body we read
    not_modified: bool = False
    kept: ManifestEntry | None = None  # the previous entry, kept because this fetch failed
    links: list[str] = field(default_factory=list)
    canonical: str | None = None


@dataclass
class Context:
    params: CrawlParams
    raw_dir: Path
    fetcher: Fetcher
    scope: list[str]
    excludes: list[re.Pattern[str]]
    robots: dict[str, Robots]
    old: dict[str, ManifestEntry]
    writer: ThreadPoolExecutor | None = None
    writes: list[Future[None]] = field(default_factory=list)
    # Page files on disk or being written. Checked in memory rather than with a stat per page:
    # a lookup that misses the dentry cache waits for the directory lock, which every file
    # creation holds for its whole (on some filesystems, slow) inode allocation.
    page_files: set[str] = field(default_factory=set)
    page_files_lock: threading.Lock = field(default_factory=threading.Lock)

    def robots_for(self, url: str) -> Robots:
        return self.robots.get(parse_origin(url), ALLOW_ALL)

    def refusal(self, url: str) -> str | None:
        """Why this normalised URL may not be fetched: a skip reason, 'blocked', or None."""
        reason = extract_skip_reason(url, self.scope, self.excludes, self.params)
        if reason is None and self.params.respect_robots and not self.robots_for(url).allows(url):
            return "blocked"
        return reason


def parse_origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def page_file(sha: str) -> str:
    return f"{PAGES}/{sha}.html"


# --- robots.txt and sitemaps -------------------------------------------------------------


def fetch_following(ctx: Context, url: str) -> Fetched:
    """GET a robots.txt or sitemap, following up to five redirects (RFC 9309 asks for five)."""
    result = ctx.fetcher.fetch(url)
    for _ in range(5):
        location = result.headers.get("Location")
        target = normalize_url(location, base=url) if location else None
        if result.status not in REDIRECTS or not target:
            break
        url = target
        result = ctx.fetcher.fetch(url)
    return result


def fetch_robots(ctx: Context, origin: str, start_url: str) -> Robots:
    """4xx = allow all; 5xx or unreachable after retries = disallow all, so we stop."""
    robots_url = f"{origin}/robots.txt"
    result = fetch_following(ctx, robots_url)
    tried = f"GET {robots_url}, {result.attempts} attempt(s)"
    if result.error:
        raise CrawlError(
            f"start URL {start_url} is unreachable: {tried}: {result.error} {result.detail}"
        )
    if result.status is not None and result.status >= 500:
        raise CrawlError(
            f"{robots_url} answered HTTP {result.status} ({tried}); RFC 9309 says to assume "
            f"the whole site is disallowed, so nothing was crawled from {start_url}"
        )
    if result.status != 200:
        return Robots()
    return parse_robots(result.body.decode("utf-8", "replace"), ctx.params.user_agent)


def fetch_sitemap_urls(ctx: Context, roots: Iterable[str]) -> list[str]:
    """Page URLs from sitemaps and sitemap indexes, in file order, at most MAX_SITEMAPS files."""
    queue, pages = list(roots), []
    seen: set[str] = set()
    hosts = {parse_origin(s) for s in ctx.scope}
    while queue and len(seen) < MAX_SITEMAPS:
        url = queue.pop(0)
        if url in seen or parse_origin(url) not in hosts:
            continue
        seen.add(url)
        result = fetch_following(ctx, url)
        if result.status == 200 and not result.error:
            found, nested = parse_sitemap(result.body)
            pages.extend(found)
            queue.extend(n for n in (normalize_url(u) for u in nested) if n)
    return pages


def read_sitemap_roots(ctx: Context) -> list[str]:
    """Sitemap: lines of robots.txt, else sitemap.xml at each scope prefix."""
    listed = [u for r in ctx.robots.values() for u in r.sitemaps]
    roots = listed or [prefix[: prefix.rindex("/") + 1] + "sitemap.xml" for prefix in ctx.scope]
    return [n for n in (normalize_url(u) for u in roots) if n]


# --- fetching one page -------------------------------------------------------------------


def read_stored(ctx: Context, entry: ManifestEntry | None) -> bytes | None:
    if entry is None or entry.status not in STORED or not entry.file:
        return None
    path = ctx.raw_dir / entry.file
    return path.read_bytes() if path.is_file() else None


def build_conditional_headers(ctx: Context, url: str) -> dict[str, str]:
    old = ctx.old.get(url)
    if old is None or old.status not in STORED or not (ctx.raw_dir / (old.file or "")).is_file():
        return {}
    headers = {}
    if old.etag:
        headers["If-None-Match"] = old.etag
    if old.last_modified:
        headers["If-Modified-Since"] = old.last_modified
    return headers


def fetch_page(ctx: Context, task: Task) -> Outcome:
    """Fetch one URL, following in-scope redirects by hand."""
    url = task.url
    for _ in range(MAX_REDIRECTS + 1):
        result = ctx.fetcher.fetch(url, build_conditional_headers(ctx, url), html_only=True)
        location = result.headers.get("Location")
        if result.status not in REDIRECTS or not location:
            return build_outcome(ctx, task, url, result)
        target = normalize_url(location, base=url)
        refusal = ctx.refusal(target) if target else "bad_redirect"
        if refusal:
            status = PageStatus.BLOCKED if refusal == "blocked" else PageStatus.SKIPPED
            reason = "redirect_blocked" if refusal == "blocked" else f"redirect_{refusal}"
            return Outcome(task, url, status, result.status, reason, detail=location)
        url = target or url
    return Outcome(task, url, PageStatus.FAILED, reason="too_many_redirects")


def build_outcome(ctx: Context, task: Task, url: str, result: Fetched) -> Outcome:
    out = Outcome(task, url, PageStatus.OK, result.status, detail=result.detail)
    out.etag = result.headers.get("ETag")
    out.last_modified = result.headers.get("Last-Modified")
    out.content_type = result.content_type
    if result.error in ("not_html", "too_large"):
        out.status, out.reason = PageStatus.SKIPPED, result.error
    elif result.status == 200 and not result.error:
        out.body, out.fetched = result.body, True
        out.encoding = detect_encoding(result.body, parse_header_charset(result.content_type))
    elif result.status == 304 and (stored := read_stored(ctx, ctx.old.get(url))) is not None:
        return build_not_modified(ctx, out, stored)
    elif result.status in GONE and was_known(ctx, url):
        out.status, out.reason = PageStatus.REMOVED, f"http_{result.status}"
    else:
        return build_failure(ctx, out, result)
    return out


def was_known(ctx: Context, url: str) -> bool:
    old = ctx.old.get(url)
    return old is not None and old.status in (*STORED, PageStatus.REMOVED)


def build_not_modified(ctx: Context, out: Outcome, stored: bytes) -> Outcome:
    old = ctx.old[out.final_url]
    out.not_modified, out.body, out.http_status = True, stored, old.http_status
    out.etag = out.etag or old.etag
    out.last_modified = out.last_modified or old.last_modified
    out.content_type, out.encoding = old.content_type, old.encoding
    return out


def build_failure(ctx: Context, out: Outcome, result: Fetched) -> Outcome:
    """A failed fetch keeps the previous stored version (and follows its links) if there is one."""
    out.status = PageStatus.FAILED
    out.reason = result.error or f"http_{result.status}"
    out.detail = f"{result.attempts} attempt(s): {result.detail or out.reason}"
    old = ctx.old.get(out.final_url)
    stored = read_stored(ctx, old)
    if old is not None and stored is not None:
        out.kept, out.body, out.encoding = old, stored, old.encoding
    return out


def write_page_file(path: Path, data: bytes) -> None:
    """Temp file + rename, so a killed crawl leaves no torn page. No fsync per page (it was
    most of the per-page cost): crawl_site syncs once before the manifest names the files."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def list_page_files(raw_dir: Path) -> set[str]:
    folder = raw_dir / PAGES
    return {f"{PAGES}/{name}" for name in os.listdir(folder)} if folder.is_dir() else set()


def claim_page_file(ctx: Context, name: str) -> bool:
    """True for the first caller with a file name not on disk yet: that caller writes it."""
    with ctx.page_files_lock:
        if name in ctx.page_files:
            return False
        ctx.page_files.add(name)
        return True


def store_body(ctx: Context, out: Outcome) -> Outcome:
    """Hash and store the body (in the worker: hashing and file I/O run outside the GIL)."""
    if out.body is not None:
        out.sha = content_sha(out.body)
        name = page_file(out.sha)
        if not claim_page_file(ctx, name):
            return out
        path = ctx.raw_dir / name
        if ctx.writer is None:
            write_page_file(path, out.body)
        else:  # creating files is slow on busy disks: overlap it with the next request
            ctx.writes.append(ctx.writer.submit(write_page_file, path, out.body))
    return out


def finish_outcome(out: Outcome) -> Outcome:
    """Pull out the links and the canonical URL of a stored body."""
    if out.body is None:
        return out
    hrefs, canonical, base = extract_links(out.body, out.encoding or "utf-8")
    base_url = normalize_url(base, base=out.final_url) if base else None
    base_url = base_url or out.final_url
    # Pages link to many #anchors of the same page: normalise each target once.
    targets = dict.fromkeys(h.split("#", 1)[0] for h in hrefs)
    out.links = list(dict.fromkeys(n for n in (normalize_link(h, base_url) for h in targets) if n))
    out.canonical = normalize_url(canonical, base_url) if canonical else None
    out.body = None  # stored on disk; keep memory flat on big sites
    return out


# --- the breadth-first crawl -------------------------------------------------------------


@dataclass
class Frontier:
    """Discovery bookkeeping; only the main thread touches it."""

    ctx: Context
    seen: set[str] = field(default_factory=set)
    entries: dict[str, ManifestEntry] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    admitted: int = 0
    next_order: int = 0

    def admit(self, url: str, depth: int) -> Task | None:
        """Give a newly seen URL its order; a Task when it is to be fetched."""
        if url in self.seen or url in self.entries:
            return None
        self.seen.add(url)
        refusal = self.ctx.refusal(url)
        max_depth = self.ctx.params.max_depth
        if refusal is None and max_depth is not None and depth > max_depth:
            refusal = "max_depth"
        if refusal is None and self.admitted >= self.ctx.params.max_pages:
            refusal = "max_pages"
        order = self.next_order
        self.next_order += 1
        if refusal == "blocked":
            self.add_entry(url, PageStatus.BLOCKED, order, depth, reason="robots_txt")
            return None
        if refusal:
            self.skipped[refusal] += 1
            return None
        self.admitted += 1
        return Task(url, order, depth)

    def add_entry(self, url: str, status: PageStatus, order: int, depth: int, **kw: Any) -> None:
        self.seen.add(url)
        self.entries[url] = ManifestEntry(
            id=url_id(url), url=url, status=status, order=order, depth=depth, **kw
        )


def choose_identity(frontier: Frontier, out: Outcome) -> str | None:
    """The URL a stored page is known by: its canonical, else where redirects ended."""
    canonical = out.canonical
    if canonical and canonical not in frontier.entries and not frontier.ctx.refusal(canonical):
        return canonical
    if out.final_url not in frontier.entries:
        return out.final_url
    return None


def record_outcome(frontier: Frontier, out: Outcome) -> None:
    """Turn one outcome into a manifest entry (main thread, queue order)."""
    task = out.task
    if out.kept is not None:
        if out.kept.url not in frontier.entries:
            kept = out.kept.model_copy(update={"order": task.order, "depth": task.depth})
            frontier.seen.add(kept.url)
            frontier.entries[kept.url] = kept
        return
    identity = choose_identity(frontier, out) if out.sha else None
    if out.sha and identity is None and task.url != out.final_url:
        if task.url not in frontier.entries:
            frontier.add_entry(
                task.url,
                PageStatus.SKIPPED,
                task.order,
                task.depth,
                reason="redirect_to_known_url",
                http_status=out.http_status,
            )
        return
    url = identity or (out.final_url if out.status == PageStatus.REMOVED else task.url)
    if url in frontier.entries:
        return  # the page is already recorded under this URL, via a redirect or a canonical
    fields = {
        "http_status": out.http_status,
        "sha256": out.sha,
        "etag": out.etag,
        "last_modified": out.last_modified,
        "content_type": out.content_type,
        "encoding": out.encoding,
        "reason": out.reason,
    }
    if out.sha:
        fields["file"] = page_file(out.sha)
        fields["fetched_at"] = choose_fetched_at(frontier.ctx.old.get(url), out.sha)
    frontier.add_entry(url, out.status, task.order, task.depth, **fields)


def choose_fetched_at(old: ManifestEntry | None, sha: str) -> str:
    """Keep the old timestamp when the bytes are the ones we already had."""
    if old is not None and old.sha256 == sha and old.fetched_at and old.status in STORED:
        return old.fetched_at
    return now_iso()


def crawl_level(
    frontier: Frontier, pool: ThreadPoolExecutor, level: list[Task], tick: Callable[[], None]
) -> tuple[list[Outcome], list[Task]]:
    """Fetch one BFS level in parallel, then record it and queue its links in queue order."""

    def work(task: Task) -> Outcome:
        out = store_body(frontier.ctx, fetch_page(frontier.ctx, task))
        tick()
        return out

    outcomes: list[Outcome] = []
    next_level: list[Task] = []
    # Workers fetch and store; parsing here overlaps with their next requests.
    for out in pool.map(work, level):
        outcomes.append(finish_outcome(out))
        record_outcome(frontier, out)
        for link in out.links:
            if task := frontier.admit(link, out.task.depth + 1):
                next_level.append(task)
    return outcomes, next_level


def crawl_bfs(
    frontier: Frontier,
    pool: ThreadPoolExecutor,
    level: list[Task],
    tick: Callable[[], None],
    check_first: Callable[[list[Outcome]], None] | None = None,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    while level:
        got, level = crawl_level(frontier, pool, level, tick)
        if check_first is not None and not outcomes:
            check_first(got)
        outcomes += got
    return outcomes


# --- the manifest ------------------------------------------------------------------------


def read_manifest(raw_dir: Path) -> dict[str, ManifestEntry]:
    path = raw_dir / MANIFEST
    if not path.is_file():
        return {}
    entries = (ManifestEntry.model_validate(row) for row in read_jsonl(path))
    return {e.url: e for e in entries}


def mark_duplicates(entries: list[ManifestEntry]) -> list[ManifestEntry]:
    """The first page (in order) with given bytes is OK; later ones point at it."""
    first: dict[str, ManifestEntry] = {}
    result = []
    for e in entries:
        if e.status in STORED and e.sha256:
            owner = first.setdefault(e.sha256, e)
            dup = owner is not e
            e = e.model_copy(
                update={
                    "status": PageStatus.DUPLICATE if dup else PageStatus.OK,
                    "duplicate_of": owner.id if dup else None,
                }
            )
        result.append(e)
    return result


def reconcile(new: dict[str, ManifestEntry], old: dict[str, ManifestEntry]) -> list[ManifestEntry]:
    """Merge this crawl with the last manifest: vanished pages become REMOVED, without a file."""
    merged = dict(new)
    for url, e in old.items():
        if url in new or e.status not in (*STORED, PageStatus.REMOVED):
            continue
        if e.status == PageStatus.REMOVED:
            merged[url] = e
        else:
            merged[url] = e.model_copy(
                update={
                    "status": PageStatus.REMOVED,
                    "file": None,
                    "duplicate_of": None,
                    "reason": "not_reached",
                }
            )
    ordered = sorted(merged.values(), key=lambda e: (e.order, e.url))
    return mark_duplicates(ordered)


def write_manifest(raw_dir: Path, entries: list[ManifestEntry]) -> None:
    lines = [e.model_dump_json() + "\n" for e in entries]
    write_if_changed(raw_dir / MANIFEST, "".join(lines).encode("utf-8"))


def delete_unreferenced(raw_dir: Path, entries: list[ManifestEntry]) -> int:
    """Remove page files no entry uses, and temp files a killed crawl left behind."""
    keep = {raw_dir / e.file for e in entries if e.file}
    deleted = 0
    for path in sorted((raw_dir / PAGES).glob("*")) if (raw_dir / PAGES).is_dir() else []:
        if path.is_file() and path not in keep:
            path.unlink()
            deleted += 1
    return deleted


# --- entry point -------------------------------------------------------------------------


def build_context(params: CrawlParams, raw_dir: Path, auth_header: str | None) -> Context:
    fetcher = Fetcher(
        user_agent=params.user_agent,
        timeout_s=params.timeout_s,
        max_bytes=params.max_page_bytes,
        policy=RetryPolicy(params.retries, params.backoff_s, params.backoff_max_s),
        rate=params.requests_per_second,
        auth_header=auth_header,
    )
    return Context(
        params=params,
        raw_dir=raw_dir,
        fetcher=fetcher,
        scope=normalize_scope(params.scope),
        excludes=compile_excludes(params.exclude),
        robots={},
        old=read_manifest(raw_dir),
    )


def prepare_robots(ctx: Context, start_urls: list[str]) -> float | None:
    """Fetch robots.txt per origin; returns the effective request rate (the stricter one)."""
    rate = ctx.params.requests_per_second
    if not ctx.params.respect_robots:
        return rate
    for url in start_urls + ctx.scope:
        origin = parse_origin(url)
        if origin not in ctx.robots:
            ctx.robots[origin] = fetch_robots(ctx, origin, url)
    delays = [r.crawl_delay for r in ctx.robots.values() if r.crawl_delay]
    if delays:
        robots_rate = 1.0 / max(delays)
        rate = robots_rate if rate is None else min(rate, robots_rate)
    return rate


def check_start_urls(outcomes: list[Outcome]) -> None:
    for out in outcomes:
        if out.status in (PageStatus.FAILED, PageStatus.REMOVED) and out.kept is None:
            raise CrawlError(
                f"start URL {out.task.url} could not be fetched: GET {out.final_url} "
                f"gave {out.reason} ({out.detail or 'no detail'})"
            )


def summarize(
    entries: list[ManifestEntry],
    old: dict[str, ManifestEntry],
    outcomes: list[Outcome],
    frontier: Frontier,
    fetcher: Fetcher,
    wall_s: float,
) -> dict[str, Any]:
    current = [e for e in entries if e.url in frontier.entries]
    stored = [e for e in current if e.status in STORED]
    prior = {u: e.sha256 for u, e in old.items() if e.status in STORED}
    failed = Counter(o.reason or "unknown" for o in outcomes if o.status == PageStatus.FAILED)
    skipped = frontier.skipped + Counter(
        e.reason or "unknown" for e in current if e.status == PageStatus.SKIPPED
    )
    pages = sum(e.status == PageStatus.OK for e in entries)
    return {
        "pages": pages,
        "fetched": sum(o.fetched for o in outcomes),
        "not_modified": sum(o.not_modified for o in outcomes),
        "new": sum(e.url not in prior for e in stored),
        "changed": sum(e.url in prior and prior[e.url] != e.sha256 for e in stored),
        "unchanged": sum(prior.get(e.url) == e.sha256 for e in stored),
        "removed": sum(e.status == PageStatus.REMOVED and e.url in prior for e in entries),
        "duplicates": sum(e.status == PageStatus.DUPLICATE for e in entries),
        "failed": sum(failed.values()),
        "failed_by_reason": dict(sorted(failed.items())),
        "skipped_by_reason": dict(sorted(skipped.items())),
        "blocked_by_robots": sum(e.status == PageStatus.BLOCKED for e in current),
        "bytes_downloaded": fetcher.bytes_downloaded,
        "wall_s": round(wall_s, 3),
        "pages_per_s": round(len(outcomes) / wall_s, 2) if wall_s > 0 else 0.0,
    }


def crawl_all(
    frontier: Frontier, start: list[Task], sitemap: list[str], tick: Callable[[], None]
) -> list[Outcome]:
    """Links first (breadth-first from the start URLs), then sitemap URLs not yet seen."""
    ctx = frontier.ctx
    with (
        ThreadPoolExecutor(ctx.params.concurrency, thread_name_prefix="crawl") as pool,
        ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="crawl-write") as ctx.writer,
    ):
        outcomes = crawl_bfs(frontier, pool, start, tick, check_start_urls)
        seeds = (normalize_url(u) for u in sitemap)
        level = [t for t in (frontier.admit(u, 0) for u in seeds if u) if t]
        outcomes += crawl_bfs(frontier, pool, level, tick)
        for write in ctx.writes:
            write.result()  # a failed write (disk full) fails the crawl here
    return outcomes


def crawl_site(
    params: CrawlParams,
    raw_dir: Path,
    *,
    auth_header: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Crawl, write raw_dir/pages/* and raw_dir/manifest.jsonl atomically, return the report."""
    started = time.monotonic()
    ctx = build_context(params, raw_dir, auth_header)
    start_urls = [u for u in (normalize_url(s) for s in params.start_urls) if u]
    lock = threading.Lock()
    bar = tqdm(desc="crawl", unit="page", file=sys.stderr, disable=not show_progress)

    def tick() -> None:
        with lock:
            bar.update(1)

    try:
        ctx.fetcher.set_rate(prepare_robots(ctx, start_urls))
        (raw_dir / PAGES).mkdir(parents=True, exist_ok=True)
        ctx.page_files = list_page_files(raw_dir)
        sitemap = fetch_sitemap_urls(ctx, read_sitemap_roots(ctx)) if params.use_sitemap else []
        frontier = Frontier(ctx)
        start = [t for t in (frontier.admit(u, 0) for u in start_urls) if t]
        if not start:
            raise CrawlError(
                f"none of the start URLs {start_urls} may be fetched (scope {ctx.scope}, "
                f"skipped: {dict(frontier.skipped)}, blocked by robots.txt: "
                f"{[u for u, e in frontier.entries.items() if e.status == PageStatus.BLOCKED]})"
            )
        outcomes = crawl_all(frontier, start, sitemap, tick)
    finally:
        bar.close()
        ctx.fetcher.close()
    entries = reconcile(frontier.entries, ctx.old)
    os.sync()  # the pages, before the manifest that names them
    write_manifest(raw_dir, entries)
    delete_unreferenced(raw_dir, entries)
    return summarize(entries, ctx.old, outcomes, frontier, ctx.fetcher, time.monotonic() - started)
