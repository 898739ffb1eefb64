"""The breadth-first crawl: robots, sitemap seeds, fetching pages, reconciling the manifest.

Threads fetch and store; the main thread consumes each BFS level in queue order, so `order`,
identities and duplicate choices never depend on which request finished first.

Manifest semantics: `http_status`, `sha256` and `fetched_at` describe the stored bytes, so a
304 or an identical 200 changes none of them. A fetch that fails (after retries) keeps the
previous stored version and follows its links; 404/410 on a known page, or a page no longer
reached, makes it REMOVED. robots.txt 4xx allows all; 5xx or unreachable after retries stops
the crawl with CrawlError before anything is written (RFC 9309: assume full disallow).

With crawl.render: browser, a page's fetched HTML goes to the browser (tasks/crawl/render.py)
and the DOM it built takes the body's place; everything around it is the plain crawl's path.
With render none, bodies that look like JavaScript shells are counted for the report's hint.

Every URL seen but not fetched or not stored (out of scope, excluded, a trap, over max_pages,
not HTML, blocked ...) is counted by reason in the report and listed, with the page that
linked it, in exclusions.jsonl beside the manifest; so are sitemaps read in part or not at all.
"""

from __future__ import annotations

import logging
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

from tasks.core.encoding import (
    detect_encoding,
    find_unusable_charsets,
    parse_header_charset,
)
from tasks.core.io import read_jsonl, write_if_changed
from tasks.core.params import CrawlParams
from tasks.core.records import Exclusion, ManifestEntry, PageStatus, content_sha, url_id
from tasks.crawl.fetch import (
    Fetched,
    Fetcher,
    RetryPolicy,
    compute_backoff,
    read_cookie_jar,
)
from tasks.crawl.links import extract_links
from tasks.crawl.render import (
    Browser,
    BrowserUnavailable,
    RenderJob,
    RenderSession,
    RenderStats,
    build_browser_cookies,
)
from tasks.crawl.robots import ALLOW_ALL, Robots, decode_robots, parse_robots, parse_sitemap
from tasks.crawl.shells import is_js_shell
from tasks.crawl.urls import (
    compile_excludes,
    extract_skip_reason,
    is_in_scope,
    normalize_hash_route,
    normalize_link,
    normalize_scope,
    normalize_url,
    parse_url_pattern,
    strip_fragment,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
EXCLUSIONS = "exclusions.jsonl"
PAGES = "pages"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
GONE = frozenset({404, 410})
MAX_REDIRECTS = 10
MAX_SITEMAPS = 50
# Creating files in one folder serialises on its lock in the kernel: a second writer thread
# only waits (spinning on a CPU the fetching threads and the server need), so one writes.
WRITER_THREADS = 1
STORED = (PageStatus.OK, PageStatus.DUPLICATE)
DENIED = frozenset({401, 403})
RENDERED_CONTENT_TYPE = "text/html; charset=utf-8"  # what page.content() is stored as


class CrawlError(RuntimeError):
    """The crawl cannot start or its start URLs cannot be fetched; nothing was written."""


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a flow or task run (so lines show in the UI), else ours."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return log


@dataclass(frozen=True)
class Task:
    url: str
    order: int
    depth: int
    found: str | None = None  # "linked from <page>" or "listed in <sitemap>"; None: a start URL


@dataclass(frozen=True)
class Skip:
    """A URL seen but not fetched or not stored: a line of exclusions.jsonl."""

    order: int  # the file is sorted by it: discovery order, whatever the thread timing
    url: str
    reason: str
    detail: str | None = None

    def to_exclusion(self) -> Exclusion:
        return Exclusion(id=url_id(self.url), url=self.url, reason=self.reason, detail=self.detail)


@dataclass
class SitemapStats:
    """What became of each sitemap; the report's `sitemaps`."""

    read: int = 0
    capped: int = 0  # read up to crawl.max_sitemap_bytes; the URLs after that were not used
    missing: int = 0  # 404 or 410: most sites have no sitemap at the guessed place
    failed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    skips: list[Skip] = field(default_factory=list)

    def add_problem(self, counter: Counter[str], url: str, reason: str, detail: str) -> None:
        counter[reason] += 1
        self.skips.append(Skip(-1, url, f"sitemap_{reason}", detail))

    def to_report(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "capped": self.capped,
            "missing": self.missing,
            "failed_by_reason": dict(sorted(self.failed.items())),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
        }


@dataclass(frozen=True)
class CrawlDelay:
    """The largest Crawl-delay robots.txt asked for, and the one used (at most the cap)."""

    asked: float | None = None
    used: float | None = None


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
    unusable_charsets: list[str] = field(default_factory=list)  # declared, no text encoding
    fetched: bool = False  # a 200 whose body we read
    not_modified: bool = False
    kept: ManifestEntry | None = None  # the previous entry, kept because this fetch failed
    links: list[str] = field(default_factory=list)
    canonical: str | None = None
    rendered: bool = False  # the body is the DOM the browser built
    js_shell: bool = False  # a plain body that looks like a JavaScript shell


@dataclass
class Context:
    params: CrawlParams
    raw_dir: Path
    fetcher: Fetcher
    scope: list[str]
    excludes: list[re.Pattern[str]]
    robots: dict[str, Robots]
    old: dict[str, ManifestEntry]
    robots_truncated: list[str] = field(default_factory=list)
    crawl_delay: CrawlDelay = field(default_factory=CrawlDelay)
    sitemaps: SitemapStats = field(default_factory=SitemapStats)
    writer: ThreadPoolExecutor | None = None
    writes: list[Future[None]] = field(default_factory=list)
    # Page files on disk or being written. Checked in memory rather than with a stat per page:
    # a lookup that misses the dentry cache waits for the directory lock, which every file
    # creation holds for its whole (on some filesystems, slow) inode allocation.
    page_files: set[str] = field(default_factory=set)
    page_files_lock: threading.Lock = field(default_factory=threading.Lock)
    # crawl.render: browser: what this crawl asks of the browser, and its session there.
    render_job: RenderJob | None = None
    render_session: RenderSession | None = None
    # ETags and Last-Modified dates that rendered pages of different content share: a shell
    # served for every page, whose validators cannot tell whether a page changed.
    shared_validators: set[str] = field(default_factory=set)
    render_patterns: list[re.Pattern[str]] = field(default_factory=list)

    def robots_for(self, url: str) -> Robots:
        return self.robots.get(parse_origin(url), ALLOW_ALL)

    def refusal(self, url: str) -> str | None:
        """Why this normalised URL may not be fetched: a skip reason, 'blocked', or None."""
        reason = extract_skip_reason(url, self.scope, self.excludes, self.params)
        if reason is None and self.params.respect_robots and not self.robots_for(url).allows(url):
            return "blocked"
        return reason

    def needs_render(self, url: str) -> bool:
        """Whether the browser builds this page (crawl.render, crawl.render_patterns)."""
        if self.render_job is None:
            return False
        return not self.render_patterns or any(p.search(url) for p in self.render_patterns)

    def refuse_subrequest(self, url: str, resource_type: str) -> str | None:
        """Why the browser may not make this request: the hosts in scope serve a page's
        scripts, styles and data wherever they keep them, but a page (a frame, a script's
        navigation) must be in scope, and robots.txt holds for all of them."""
        target = normalize_url(url)
        if target is None:
            return "bad_url"
        if parse_origin(target) not in {parse_origin(prefix) for prefix in self.scope}:
            return "other_host"
        if resource_type == "document" and not is_in_scope(target, self.scope):
            return "out_of_scope"
        if self.params.respect_robots and not self.robots_for(target).allows(target):
            return "robots_txt"
        return None


def parse_origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def page_file(sha: str) -> str:
    return f"{PAGES}/{sha}.html"


# --- robots.txt and sitemaps -------------------------------------------------------------


def fetch_following(ctx: Context, url: str, max_bytes: int) -> Fetched:
    """GET a robots.txt or sitemap, following up to five redirects (RFC 9309 asks for five);
    a body over max_bytes is cut there and flagged `truncated`, not dropped."""
    result = ctx.fetcher.fetch(url, max_bytes=max_bytes, keep_partial=True)
    for _ in range(5):
        location = result.headers.get("Location")
        target = normalize_url(location, base=url) if location else None
        if result.status not in REDIRECTS or not target:
            break
        url = target
        result = ctx.fetcher.fetch(url, max_bytes=max_bytes, keep_partial=True)
    return result


def fetch_robots(ctx: Context, origin: str, start_url: str) -> Robots:
    """4xx = allow all; 5xx or unreachable after retries = disallow all, so we stop."""
    robots_url = f"{origin}/robots.txt"
    # Its own cap, not the page cap: RFC 9309 asks to parse at least 500 KiB, and a robots.txt
    # over the page cap used to read as an unreachable site.
    result = fetch_following(ctx, robots_url, ctx.params.max_robots_bytes)
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
    if result.truncated:
        ctx.robots_truncated.append(robots_url)
        run_logger().warning(
            "%s is longer than crawl.max_robots_bytes (%d): the rules up to there are obeyed "
            "and the rest is ignored, as RFC 9309 allows",
            robots_url,
            ctx.params.max_robots_bytes,
        )
    text = decode_robots(result.body, result.truncated)
    return parse_robots(text, ctx.params.user_agent)


def fetch_sitemap_urls(ctx: Context, roots: Iterable[str]) -> list[tuple[str, str]]:
    """(page URL, the sitemap listing it) from sitemaps and sitemap indexes, in file order, at
    most MAX_SITEMAPS files; what became of each sitemap goes to ctx.sitemaps."""
    queue = list(roots)
    pages: list[tuple[str, str]] = []
    seen: set[str] = set()
    hosts = {parse_origin(s) for s in ctx.scope}
    stats, fetched = ctx.sitemaps, 0
    while queue:
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        if parse_origin(url) not in hosts:
            stats.add_problem(stats.skipped, url, "out_of_scope", "on a host outside crawl.scope")
        elif fetched >= MAX_SITEMAPS:
            stats.add_problem(stats.skipped, url, "over_limit", f"{MAX_SITEMAPS} were fetched")
        else:
            fetched += 1
            found, nested = fetch_sitemap(ctx, url)
            pages.extend((page, url) for page in found)
            queue.extend(n for n in (normalize_url(u) for u in nested) if n)
    return pages


def fetch_sitemap(ctx: Context, url: str) -> tuple[list[str], list[str]]:
    """(page URLs, nested sitemap URLs) of one sitemap, kept up to crawl.max_sitemap_bytes."""
    cap, stats = ctx.params.max_sitemap_bytes, ctx.sitemaps
    result = fetch_following(ctx, url, cap)
    if result.status in GONE:
        stats.missing += 1
        return [], []
    if result.error or result.status != 200:
        reason = result.error or f"http_{result.status}"
        stats.add_problem(stats.failed, url, reason, result.detail or reason)
        return [], []
    found = parse_sitemap(result.body, cap)
    # A body cut at the cap ends in the middle of the XML: that is the cap, not broken XML.
    if found.problem in ("invalid_xml", "invalid_gzip") and not result.truncated:
        stats.add_problem(stats.failed, url, found.problem, "the URLs before the error are used")
        return found.pages, found.nested
    stats.read += 1
    if result.truncated or found.problem == "capped":
        stats.capped += 1
        detail = f"only its first {cap} bytes of XML were read (crawl.max_sitemap_bytes)"
        stats.skips.append(Skip(-1, url, "sitemap_capped", detail))
        run_logger().warning("sitemap %s: %s; the URLs listed after them are not used", url, detail)
    return found.pages, found.nested


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


def find_shared_validators(old: dict[str, ManifestEntry]) -> set[str]:
    """Validators that rendered pages with different content have in common: those of a shell
    the server sends for every page. A 304 to them says the shell is unchanged, not the page
    (whose content comes from elsewhere, e.g. an API), so such pages render on every crawl."""
    contents: dict[str, set[str | None]] = {}
    for e in old.values():
        if e.rendered and e.status in STORED:
            for validator in (e.etag, e.last_modified):
                if validator:
                    contents.setdefault(validator, set()).add(e.sha256)
    return {v for v, shas in contents.items() if len(shas) > 1}


def build_conditional_headers(ctx: Context, url: str, rendered: bool) -> dict[str, str]:
    """If-None-Match / If-Modified-Since from the stored version. Not when it was stored by
    the other way (rendered or not): a 304 would keep bytes of the wrong kind. Nor for a hash
    route: every route shares the shell, whose validators say nothing about the route."""
    old = ctx.old.get(url)
    if old is None or old.status not in STORED or not (ctx.raw_dir / (old.file or "")).is_file():
        return {}
    if old.rendered != rendered or "#" in url:
        return {}
    headers = {}
    if old.etag and old.etag not in ctx.shared_validators:
        headers["If-None-Match"] = old.etag
    if old.last_modified and old.last_modified not in ctx.shared_validators:
        headers["If-Modified-Since"] = old.last_modified
    return headers


def fetch_page(ctx: Context, task: Task) -> Outcome:
    """Fetch one URL, following in-scope redirects by hand."""
    url = task.url
    for _ in range(MAX_REDIRECTS + 1):
        rendered = ctx.needs_render(url)
        conditional = build_conditional_headers(ctx, url, rendered)
        result = ctx.fetcher.fetch(strip_fragment(url), conditional, html_only=True)
        location = result.headers.get("Location")
        if result.status not in REDIRECTS or not location:
            if rendered and result.status == 200 and not result.error:
                result = fetch_rendered(ctx, url, result)
            out = build_outcome(ctx, task, url, result)
            out.rendered = rendered
            return out
        target = normalize_url(location, base=url)
        refusal = ctx.refusal(target) if target else "bad_redirect"
        if refusal:
            status = PageStatus.BLOCKED if refusal == "blocked" else PageStatus.SKIPPED
            reason = "redirect_blocked" if refusal == "blocked" else f"redirect_{refusal}"
            return Outcome(task, url, status, result.status, reason, detail=location)
        url = target or url
    return Outcome(task, url, PageStatus.FAILED, reason="too_many_redirects")


def fetch_rendered(ctx: Context, url: str, shell: Fetched) -> Fetched:
    """The page as the browser built it from the fetched shell, in the shell's place: the
    shell's validators kept (the next crawl's conditional GET), the body the DOM in UTF-8.
    A browser error is retried like a failed request; a page that never became ready is not,
    since it had its whole crawl.render_timeout_s already."""
    assert ctx.render_session is not None
    policy = ctx.fetcher.policy
    for attempt in range(policy.retries + 1):
        got = ctx.render_session.render(url, shell.body, shell.content_type)
        if got.error != "render_error" or attempt == policy.retries:
            break
        time.sleep(compute_backoff(attempt, policy, None))
    headers = {k: v for k in ("ETag", "Last-Modified") if (v := shell.headers.get(k))}
    headers["Content-Type"] = RENDERED_CONTENT_TYPE
    return Fetched(
        url,
        status=200,
        headers=headers,
        body=got.html,
        error=got.error,
        detail=got.detail,
        attempts=attempt + 1,
    )


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
        out.unusable_charsets = find_unusable_charsets(result.body, result.content_type)
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
        out.js_shell = not out.rendered and is_js_shell(out.body, out.encoding or "utf-8")
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
    page_url = strip_fragment(out.final_url)
    base_url = normalize_url(base, base=page_url) if base else None
    base_url = base_url or page_url
    # Pages link to many #anchors of the same page: normalise each target once.
    targets = dict.fromkeys(h.split("#", 1)[0] for h in hrefs)
    links = [normalize_link(h, base_url) for h in targets]
    if out.rendered:  # a client-side router's #/ routes are pages only once rendered
        links += [normalize_hash_route(h, page_url) for h in hrefs if "#" in h]
    out.links = list(dict.fromkeys(n for n in links if n))
    # A canonical URL names no hash route: every route of the page would take its identity.
    if canonical and "#" not in out.final_url:
        out.canonical = normalize_url(canonical, base_url)
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
    skips: list[Skip] = field(default_factory=list)  # the skipped and blocked URLs, listed
    # Per URL pattern: new URLs found on pages of the same pattern, and those skipped for it.
    pattern_growth: Counter[str] = field(default_factory=Counter)
    trap_patterns: Counter[str] = field(default_factory=Counter)
    admitted: int = 0
    next_order: int = 0

    def admit(
        self, url: str, depth: int, linked_from: str | None = None, listed_in: str | None = None
    ) -> Task | None:
        """Give a newly seen URL its order; a Task when it is to be fetched."""
        if url in self.seen or url in self.entries:
            return None
        self.seen.add(url)
        refusal = self.choose_refusal(url, depth, linked_from)
        order = self.next_order
        self.next_order += 1
        found = f"linked from {linked_from}" if linked_from else None
        found = f"listed in {listed_in}" if listed_in else found
        if refusal == "blocked":
            self.add_entry(url, PageStatus.BLOCKED, order, depth, found, reason="robots_txt")
            return None
        if refusal:
            self.skipped[refusal] += 1
            self.skips.append(Skip(order, url, refusal, found))
            return None
        self.admitted += 1
        return Task(url, order, depth, found)

    def choose_refusal(self, url: str, depth: int, linked_from: str | None) -> str | None:
        """Why a new URL is not fetched, or None; max_pages last, so it counts only URLs that
        would have been fetched."""
        refusal = self.ctx.refusal(url)
        max_depth = self.ctx.params.max_depth
        if refusal is None and max_depth is not None and depth > max_depth:
            refusal = "max_depth"
        if refusal is None and linked_from is not None:
            refusal = self.check_pattern(url, linked_from)
        if refusal is None and self.admitted >= self.ctx.params.max_pages:
            refusal = "max_pages"
        return refusal

    def check_pattern(self, url: str, linked_from: str) -> str | None:
        """trap_pattern once a pattern has found more than its budget of new URLs on its own
        pages. A calendar's next-day link does that on every page, for ever; release notes
        linked from an index are many URLs of one pattern, but none is new on its neighbours."""
        budget = self.ctx.params.max_urls_per_pattern
        if budget is None:
            return None
        pattern = parse_url_pattern(url)
        if pattern is None or pattern != parse_url_pattern(linked_from):
            return None
        self.pattern_growth[pattern] += 1
        if self.pattern_growth[pattern] <= budget:
            return None
        self.trap_patterns[pattern] += 1
        return "trap_pattern"

    def add_entry(
        self,
        url: str,
        status: PageStatus,
        order: int,
        depth: int,
        found: str | None = None,
        **kw: Any,
    ) -> None:
        self.seen.add(url)
        entry = ManifestEntry(
            id=url_id(url), url=url, status=status, order=order, depth=depth, **kw
        )
        self.entries[url] = entry
        if status in (PageStatus.SKIPPED, PageStatus.BLOCKED):
            self.skips.append(Skip(order, url, entry.reason or "unknown", found))


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
                task.found,
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
        fields["rendered"] = out.rendered
    frontier.add_entry(url, out.status, task.order, task.depth, task.found, **fields)


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
            if task := frontier.admit(link, out.task.depth + 1, linked_from=out.final_url):
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


def write_exclusions(raw_dir: Path, skips: list[Skip]) -> None:
    """This crawl's skipped URLs in discovery order (sitemaps first), rewritten only when they
    changed, so an unchanged re-crawl leaves data/raw byte-identical."""
    ordered = sorted(skips, key=lambda s: s.order)  # stable: sitemaps keep their reading order
    lines = [s.to_exclusion().model_dump_json() + "\n" for s in ordered]
    write_if_changed(raw_dir / EXCLUSIONS, "".join(lines).encode("utf-8"))


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


def build_context(
    params: CrawlParams,
    raw_dir: Path,
    auth_header: str | None,
    cookies_file: Path | None = None,
) -> Context:
    cookies = read_cookie_jar(cookies_file) if cookies_file else None
    fetcher = Fetcher(
        user_agent=params.user_agent,
        timeout_s=params.timeout_s,
        deadline_s=params.request_deadline_s,
        max_bytes=params.max_page_bytes,
        policy=RetryPolicy(params.retries, params.backoff_s, params.backoff_max_s),
        rate=params.requests_per_second,
        auth_header=auth_header,
        cookies=cookies,
    )
    ctx = Context(
        params=params,
        raw_dir=raw_dir,
        fetcher=fetcher,
        scope=normalize_scope(params.scope),
        excludes=compile_excludes(params.exclude),
        robots={},
        old=read_manifest(raw_dir),
    )
    ctx.shared_validators = find_shared_validators(ctx.old)
    if params.render == "browser":
        ctx.render_patterns = compile_excludes(params.render_patterns)
        ctx.render_job = RenderJob(
            user_agent=params.user_agent,
            wait_for=params.render_wait_for,
            timeout_s=params.render_timeout_s,
            max_bytes=params.max_page_bytes,
            refuse=ctx.refuse_subrequest,
            limiter=fetcher.limiter,
            pages=params.concurrency,
            auth_header=auth_header,
            cookies=build_browser_cookies(cookies) if cookies else [],
        )
    return ctx


def start_browser(ctx: Context, browser: Browser | None) -> Browser | None:
    """Open this crawl's session in the browser given, else in one started here (returned,
    for the caller to close); nothing when the crawl does not render."""
    if ctx.render_job is None:
        return None
    owned = None
    if browser is None:
        try:
            browser = owned = Browser().start()
        except BrowserUnavailable as exc:
            raise CrawlError(f"crawl.render is browser, but {exc}") from exc
    ctx.render_session = browser.open_session(ctx.render_job)
    return owned


def prepare_robots(ctx: Context, start_urls: list[str]) -> float | None:
    """Fetch robots.txt per origin; returns the effective request rate (the stricter one)."""
    if not ctx.params.respect_robots:
        return ctx.params.requests_per_second
    for url in start_urls + ctx.scope:
        origin = parse_origin(url)
        if origin not in ctx.robots:
            ctx.robots[origin] = fetch_robots(ctx, origin, url)
    ctx.crawl_delay = choose_crawl_delay(ctx.robots.values(), ctx.params.max_crawl_delay_s)
    if ctx.crawl_delay.asked != ctx.crawl_delay.used:
        run_logger().warning(
            "robots.txt asks for Crawl-delay: %g s; waiting crawl.max_crawl_delay_s = %g s "
            "between requests instead (raise crawl.max_crawl_delay_s to obey the site)",
            ctx.crawl_delay.asked,
            ctx.crawl_delay.used,
        )
    return choose_rate(ctx.params.requests_per_second, ctx.crawl_delay)


def choose_crawl_delay(robots: Iterable[Robots], cap: float) -> CrawlDelay:
    """The longest Crawl-delay asked for and the one used: an hours-long delay (seen in the
    wild: 100000 s) would keep a crawl of a few hundred pages going for years."""
    asked = max((r.crawl_delay for r in robots if r.crawl_delay), default=None)
    return CrawlDelay(asked, None if asked is None else min(asked, cap))


def choose_rate(requests_per_second: float | None, delay: CrawlDelay) -> float | None:
    if delay.used is None:
        return requests_per_second
    robots_rate = 1.0 / delay.used
    return robots_rate if requests_per_second is None else min(requests_per_second, robots_rate)


def check_time_budget(params: CrawlParams, rate: float | None, delay: CrawlDelay) -> None:
    """Stop before fetching pages when even a site of crawl.max_pages pages could not be
    crawled within crawl.max_duration_s at this rate (requests start 1/rate apart)."""
    budget = params.max_duration_s
    if budget is None or rate is None or (params.max_pages - 1) / rate <= budget:
        return
    if delay.used is not None and 1.0 / delay.used == rate:
        why = f"robots.txt asks for Crawl-delay: {delay.asked:g} s"
        why += f", at most crawl.max_crawl_delay_s = {params.max_crawl_delay_s:g} s is used"
    else:
        why = f"crawl.requests_per_second = {params.requests_per_second:g}"
    fits = int(budget * rate) + 1
    raise CrawlError(
        f"the rate limit is {rate:g} requests/s ({why}), so crawl.max_pages = "
        f"{params.max_pages} pages take at least {(params.max_pages - 1) / rate:.0f} s, more "
        f"than crawl.max_duration_s = {budget:g} s; no page was fetched. Lower crawl.max_pages "
        f"to {fits} (all that fits), or raise crawl.max_duration_s (null: no budget)"
    )


def describe_start(out: Outcome) -> str:
    """What happened to a start URL, in the words a user needs to fix it."""
    parts = [f"{out.task.url}: {out.status.value}" + (f" ({out.reason})" if out.reason else "")]
    if out.http_status:
        parts.append(f"HTTP {out.http_status}")
    if out.final_url != out.task.url:
        parts.append(f"reached {out.final_url}")
    if out.detail:
        parts.append(
            ("redirected to " if out.reason and "redirect" in out.reason else "") + out.detail
        )
    if out.content_type:
        parts.append(f"Content-Type {out.content_type}")
    if out.reason == "too_large":
        parts.append("over crawl.max_page_bytes (raise it for pages this big)")
    return ", ".join(parts)


def check_access(outcomes: list[Outcome], params: CrawlParams) -> None:
    """Stop at once when a start URL answers 401 or 403: every other page would too, and only
    the credentials can change that."""
    for out in outcomes:
        if out.http_status not in DENIED:
            continue
        given = [
            f"crawl.{k} = {v}"
            for k in ("auth_header_env", "cookies_env")
            if (v := getattr(params, k))
        ]
        fix = (
            f"the credentials from {' and '.join(given)} were refused: renew them"
            if given
            else "the site needs credentials: set crawl.auth_header_env (an env var holding the "
            "Authorization header, e.g. 'Bearer <token>') or crawl.cookies_env (an env var "
            "holding the path of a cookies.txt exported from a logged-in browser)"
        )
        raise CrawlError(
            f"start URL {out.task.url} answered HTTP {out.http_status}; {fix}. Nothing was changed"
        )


def check_start_urls(outcomes: list[Outcome]) -> None:
    """Stop before anything is written when the start URLs yield no page: an empty crawl would
    mark every known page removed, and every later stage would delete its work."""
    for out in outcomes:
        if out.status in (PageStatus.FAILED, PageStatus.REMOVED) and out.kept is None:
            raise CrawlError(
                f"start URL {out.task.url} could not be fetched: GET {out.final_url} "
                f"gave {out.reason} ({out.detail or 'no detail'})"
            )
    if not any(out.sha is not None for out in outcomes):
        raise CrawlError(
            "no start URL yielded a page, so nothing was changed: "
            + "; ".join(describe_start(out) for out in outcomes)
            + ". Point crawl.start_urls at HTML pages inside crawl.scope (for a redirect, the "
            "URL it leads to)"
        )


def check_removals(
    new: dict[str, ManifestEntry], old: dict[str, ManifestEntry], max_fraction: float
) -> None:
    """Refuse a crawl that would remove more than `max_fraction` of the known pages: a site
    that moved, an outage page or a changed scope looks like that, and deleting is final."""
    known = [url for url, e in old.items() if e.status in STORED]
    kept = {url for url, e in new.items() if e.status in STORED}
    gone = [url for url in known if url not in kept]
    if known and len(gone) / len(known) > max_fraction:
        raise CrawlError(
            f"this crawl would remove {len(gone)} of the {len(known)} known pages (e.g. "
            f"{', '.join(gone[:3])}), more than crawl.max_removed_fraction ({max_fraction}); "
            "nothing was changed. If the site really lost them, rerun with "
            "`python -m flows.crawl --force` (or raise crawl.max_removed_fraction)"
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
    ctx = frontier.ctx
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
        # pages read as UTF-8 or by their bytes, since the charset they declare decodes nothing
        "unusable_charsets": dict(
            sorted(Counter(c for o in outcomes for c in o.unusable_charsets).items())
        ),
        "trap_patterns": dict(sorted(frontier.trap_patterns.items())),
        "crawl_delay_s": {"asked": ctx.crawl_delay.asked, "used": ctx.crawl_delay.used},
        "robots_truncated": len(ctx.robots_truncated),
        "sitemaps": ctx.sitemaps.to_report(),
        **summarize_rendering(ctx, outcomes),
        "bytes_downloaded": fetcher.bytes_downloaded,
        "wall_s": round(wall_s, 3),
        "pages_per_s": round(len(outcomes) / wall_s, 2) if wall_s > 0 else 0.0,
    }


def summarize_rendering(ctx: Context, outcomes: list[Outcome]) -> dict[str, Any]:
    """The browser's work, and the pages that look like JavaScript shells it did not build."""
    shells = [o.task.url for o in outcomes if o.js_shell]
    hint = None
    if shells:
        hint = (
            f"{len(shells)} page(s) look like JavaScript shells (scripts and almost no text, "
            f"e.g. {shells[0]}): set crawl.render: browser (or list them in "
            "crawl.render_patterns) so that a browser builds them"
        )
    job = ctx.render_job
    return {
        "render": {"mode": ctx.params.render, **(job.stats if job else RenderStats()).to_report()},
        "js_shells": len(shells),
        "js_shell_hint": hint,
    }


def warn_about_shells(report: dict[str, Any]) -> None:
    if report["js_shell_hint"]:
        run_logger().warning("%s", report["js_shell_hint"])


def crawl_all(
    frontier: Frontier,
    start: list[Task],
    sitemap: list[tuple[str, str]],
    tick: Callable[[], None],
) -> list[Outcome]:
    """Links first (breadth-first from the start URLs), then sitemap URLs not yet seen."""
    ctx = frontier.ctx
    with (
        ThreadPoolExecutor(ctx.params.concurrency, thread_name_prefix="crawl") as pool,
        ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="crawl-write") as ctx.writer,
    ):

        def check_first(got: list[Outcome]) -> None:
            check_access(got, ctx.params)
            check_start_urls(got)

        outcomes = crawl_bfs(frontier, pool, start, tick, check_first)
        seeds = ((normalize_url(url), listed_in) for url, listed_in in sitemap)
        level = [t for t in (frontier.admit(u, 0, listed_in=s) for u, s in seeds if u) if t]
        outcomes += crawl_bfs(frontier, pool, level, tick)
        for write in ctx.writes:
            write.result()  # a failed write (disk full) fails the crawl here
    return outcomes


def crawl_site(
    params: CrawlParams,
    raw_dir: Path,
    *,
    auth_header: str | None = None,
    cookies_file: Path | None = None,
    browser: Browser | None = None,
    show_progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Crawl, write raw_dir/pages/* and raw_dir/manifest.jsonl atomically, return the report.
    With crawl.render: browser, pages render in `browser` (else one started for this crawl)."""
    started = time.monotonic()
    ctx = build_context(params, raw_dir, auth_header, cookies_file)
    owned = None
    start_urls = [u for u in (normalize_url(s) for s in params.start_urls) if u]
    lock = threading.Lock()
    bar = tqdm(desc="crawl", unit="page", file=sys.stderr, disable=not show_progress)

    def tick() -> None:
        with lock:
            bar.update(1)

    try:
        rate = prepare_robots(ctx, start_urls)
        check_time_budget(params, rate, ctx.crawl_delay)
        ctx.fetcher.set_rate(rate)
        owned = start_browser(ctx, browser)
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
        if ctx.render_session is not None:
            ctx.render_session.close()
        if owned is not None:
            owned.close()
    if not force:
        check_removals(frontier.entries, ctx.old, params.max_removed_fraction)
    entries = reconcile(frontier.entries, ctx.old)
    os.sync()  # the pages, before the manifest that names them
    write_exclusions(raw_dir, ctx.sitemaps.skips + frontier.skips)
    write_manifest(raw_dir, entries)
    delete_unreferenced(raw_dir, entries)
    warn_about_traps(frontier.trap_patterns, params.max_urls_per_pattern)
    report = summarize(
        entries, ctx.old, outcomes, frontier, ctx.fetcher, time.monotonic() - started
    )
    warn_about_shells(report)
    return report


def warn_about_traps(trap_patterns: Counter[str], budget: int | None) -> None:
    if trap_patterns:
        run_logger().warning(
            "skipped %d URL(s) of patterns that kept making new URLs on their own pages "
            "(crawl.max_urls_per_pattern = %s; raise it, or null, if they are real pages): %s",
            sum(trap_patterns.values()),
            budget,
            ", ".join(f"{pattern} ({n})" for pattern, n in sorted(trap_patterns.items())),
        )
