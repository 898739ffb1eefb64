"""The crawler against a local documentation site (tests/support/docsite.py); no mocks of HTTP."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tasks.core.encoding import detect_encoding, parse_header_charset
from tasks.core.params import CrawlParams
from tasks.core.records import ManifestEntry, PageStatus, content_sha
from tasks.crawl.crawler import CrawlError, crawl_site, run_logger
from tasks.crawl.fetch import RetryPolicy, compute_backoff, parse_retry_after
from tasks.crawl.links import extract_links
from tasks.crawl.robots import decode_robots, parse_robots, parse_sitemap
from tasks.crawl.urls import remove_dot_segments
from tests.support.docsite import DocSite, render_page

UA = "docs2model-crawler/0.1"


def make_params(site: DocSite, **kw: Any) -> CrawlParams:
    settings: dict[str, Any] = {
        "start_urls": [site.url("/docs/index.html")],
        "requests_per_second": None,
        "timeout_s": 2.0,
        "retries": 2,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        "user_agent": UA,
    }
    settings.update(kw)
    return CrawlParams(**settings)


def crawl(site: DocSite, raw: Path, **kw: Any) -> dict[str, Any]:
    return crawl_site(make_params(site, **kw), raw, show_progress=False)


def read_manifest(raw: Path) -> list[ManifestEntry]:
    text = (raw / "manifest.jsonl").read_text(encoding="utf-8")
    return [ManifestEntry.model_validate_json(line) for line in text.splitlines()]


def by_path(site: DocSite, raw: Path) -> dict[str, ManifestEntry]:
    return {e.url.removeprefix(site.base): e for e in read_manifest(raw)}


def snapshot(raw: Path) -> dict[str, bytes]:
    return {str(p.relative_to(raw)): p.read_bytes() for p in sorted(raw.rglob("*")) if p.is_file()}


def small_site(site: DocSite) -> None:
    site.page("/docs/index.html", ["a.html", "b.html", "/elsewhere/x.html", "#top"])
    site.page("/docs/a.html", ["c.html", "index.html"])
    site.page("/docs/b.html", ["a.html", "sub/d.html"])
    site.page("/docs/c.html")
    site.page("/docs/sub/d.html", ["../c.html"])


# --- pure parts ------------------------------------------------------------------------


def test_robots_longest_match_wins_and_allow_wins_ties() -> None:
    robots = parse_robots(
        "User-agent: *\nDisallow: /\n\n"
        "User-agent: docs2model-crawler\nDisallow: /docs/private/\nAllow: /docs/private/ok\n"
        "Disallow: /*.bak$\nAllow: /docs/tie\nDisallow: /docs/tie\nCrawl-delay: 0.25\n",
        UA,
    )
    assert robots.allows("http://d.test/docs/a.html")
    assert not robots.allows("http://d.test/docs/private/x.html")
    assert robots.allows("http://d.test/docs/private/ok.html")
    assert not robots.allows("http://d.test/docs/file.bak")
    assert robots.allows("http://d.test/docs/file.bak.html")
    assert robots.allows("http://d.test/docs/tie")
    assert robots.crawl_delay == 0.25
    other = parse_robots("User-agent: *\nDisallow: /\n", UA)
    assert not other.allows("http://d.test/docs/a.html")


def test_sitemap_parsing_urlset_and_index() -> None:
    ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
    pages, nested, _ = parse_sitemap(
        f"<urlset {ns}><url><loc> http://d.test/a </loc></url><url><loc>http://d.test/b</loc>"
        "</url></urlset>".encode()
    )
    assert (pages, nested) == (["http://d.test/a", "http://d.test/b"], [])
    pages, nested, _ = parse_sitemap(
        f"<sitemapindex {ns}><sitemap><loc>http://d.test/s2.xml</loc></sitemap>"
        "</sitemapindex>".encode()
    )
    assert (pages, nested) == ([], ["http://d.test/s2.xml"])
    assert parse_sitemap(b"not xml") == ([], [], "invalid_xml")


def test_encoding_is_read_from_the_bytes() -> None:
    assert detect_encoding(b"<meta charset='ISO-8859-1'><p>\xe9</p>", None) == "iso8859-1"
    assert detect_encoding(b'<?xml version="1.0" encoding="windows-1252"?><html/>', None) == (
        "cp1252"
    )
    assert detect_encoding(b"\xef\xbb\xbf<p>x</p>", "latin-1") == "utf-8"
    assert detect_encoding(b"<p>x</p>", parse_header_charset("text/html; charset=latin-1")) == (
        "iso8859-1"
    )
    assert detect_encoding(b"<p>caf\xc3\xa9</p>", parse_header_charset("text/html")) == "utf-8"


def test_a_charset_that_names_no_text_encoding_is_ignored() -> None:
    # Python's codec registry knows base64, rot13 and zlib, which decode no page.
    for charset in ("base64", "rot13", "zlib_codec", "hex"):
        declared = parse_header_charset(f"text/html; charset={charset}")
        assert detect_encoding(b"<p>caf\xc3\xa9</p>", declared) == "utf-8"
        assert detect_encoding(f"<meta charset={charset}><p>x</p>".encode()) == "utf-8"


def test_a_page_declaring_a_charset_that_decodes_nothing_is_stored_and_counted(
    docsite: DocSite, tmp_path: Path
) -> None:
    docsite.page("/docs/index.html", ["a.html", "b.html"])
    docsite.add("/docs/a.html", render_page("a"), content_type="text/html; charset=base64")
    docsite.add("/docs/b.html", b"<meta charset=rot13><title>b</title><p>caf\xc3\xa9</p>")
    report = crawl(docsite, tmp_path)
    entries = by_path(docsite, tmp_path)
    assert entries["/docs/a.html"].status == entries["/docs/b.html"].status == PageStatus.OK
    assert entries["/docs/b.html"].encoding == "utf-8"
    assert report["unusable_charsets"] == {"base64": 1, "rot13": 1}


def test_links_are_read_like_an_html_parser_reads_them() -> None:
    page = b"""<html><head><BASE HREF='/base/'><base href="/second/">
    <link rel="stylesheet" href="s.css"><LINK REL="Canonical alternate" href="/c.html">
    <link rel="canonical" href="/later.html">
    <script type="text/javascript">var s = '<a href="in-script.html">';</script>
    <style>a[href="x.html"] { color: red }</style>
    </head><body><!-- <a href="in-comment.html"> -->
    <a href="one.html?a=1&amp;b=2">1</a><a title="x > y" href='two.html'>2</a>
    <a href=three.html>3</a><A class=x
       HREF = " four.html ">4</A><a data-href="no.html">x</a><abbr href="no2.html">
    <a href="mailto:x@y.test">m</a><a href="#top">t</a><a name="anchor">n</a>
    <a href="caf\xc3\xa9.html" href="second.html">5</a><a href="one.html">again</a>
    </body></html>"""
    hrefs, canonical, base = extract_links(page, "utf-8")
    assert hrefs == [
        "one.html?a=1&b=2",
        "two.html",
        "three.html",
        "four.html",
        "#top",
        "caf\u00e9.html",
        "one.html",
    ]
    assert (canonical, base) == ("/c.html", "/base/")
    assert extract_links(b"", "utf-8") == ([], None, None)
    unclosed = b'<p><a href="a.html">a</a><a href="b.html'
    assert extract_links(unclosed, "utf-8") == (["a.html"], None, None)
    assert extract_links("<a href='\u00e9.html'>".encode("utf-16"), "utf-16")[0] == ["\u00e9.html"]
    # Tags that never close cost one short scan each (this took 30 s when it was quadratic).
    assert extract_links(b"<a " * 20_000 + b"<a x=" * 20_000, "utf-8") == ([], None, None)


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert parse_retry_after("garbage") is None


def test_backoff_grows_has_jitter_and_is_capped() -> None:
    policy = RetryPolicy(retries=5, backoff_s=1.0, backoff_max_s=5.0)
    delays = [compute_backoff(2, policy, None) for _ in range(50)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1
    assert compute_backoff(6, policy, None) == 5.0
    assert compute_backoff(0, policy, "3") == 3.0
    assert compute_backoff(0, policy, "100") == 5.0


# --- crawling --------------------------------------------------------------------------


def test_breadth_first_order_depth_and_content_addressed_files(
    docsite: DocSite, tmp_path: Path
) -> None:
    small_site(docsite)
    report = crawl(docsite, tmp_path, concurrency=4)
    entries = read_manifest(tmp_path)
    assert [e.url.removeprefix(docsite.base) for e in entries] == [
        "/docs/index.html", "/docs/a.html", "/docs/b.html", "/docs/c.html", "/docs/sub/d.html"
    ]  # fmt: skip
    assert [e.depth for e in entries] == [0, 1, 1, 2, 2]
    assert [e.order for e in entries] == sorted(e.order for e in entries)
    for e in entries:
        assert e.status == PageStatus.OK and e.http_status == 200
        assert e.file == f"pages/{e.sha256}.html"
        assert content_sha((tmp_path / e.file).read_bytes()) == e.sha256
        assert e.etag and e.last_modified and e.fetched_at
    assert report["pages"] == 5 and report["new"] == 5 and report["fetched"] == 5
    assert report["skipped_by_reason"] == {"out_of_scope": 1}
    assert report["bytes_downloaded"] > 0 and report["pages_per_s"] > 0
    assert not docsite.requests_for("/elsewhere/x.html")


def test_encoded_dot_segments_neither_leave_scope_nor_dodge_robots(
    docsite: DocSite, tmp_path: Path
) -> None:
    robots = "User-agent: *\nDisallow: /docs/private/\n"
    docsite.add("/robots.txt", robots, content_type="text/plain")
    links = ["%2e%2e/private/secret.html", "sub/%2E%2e/private/key.html", ".%2e/x.html", "a.html"]
    docsite.page("/docs/index.html", links)
    for path in ("/private/secret.html", "/docs/private/key.html", "/x.html", "/docs/a.html"):
        docsite.page(path)
    report = crawl(docsite, tmp_path)
    # What the server saw, read as a server reads it (escapes decoded, dot segments removed).
    seen = {remove_dot_segments(unquote(urlsplit(h.path).path)) for h in docsite.hits}
    assert seen <= {"/robots.txt", "/docs/sitemap.xml", "/docs/index.html", "/docs/a.html"}, seen
    assert report["skipped_by_reason"] == {"out_of_scope": 2}
    assert report["blocked_by_robots"] == 1


def test_order_is_deterministic_despite_threads(docsite: DocSite, tmp_path: Path) -> None:
    names = [f"p{i}.html" for i in range(20)]
    docsite.page("/docs/index.html", names)
    for i, name in enumerate(names):
        docsite.page(f"/docs/{name}", [f"q{i}.html"], delay_s=0.02 * ((i * 7) % 5))
        docsite.page(f"/docs/q{i}.html")
    crawl(docsite, tmp_path / "one", concurrency=8)
    crawl(docsite, tmp_path / "two", concurrency=3)
    first = [(e.url, e.order) for e in read_manifest(tmp_path / "one")]
    assert first == [(e.url, e.order) for e in read_manifest(tmp_path / "two")]
    assert [u.rsplit("/", 1)[1] for u, _ in first[1:21]] == names


def test_robots_rules_are_obeyed(docsite: DocSite, tmp_path: Path) -> None:
    docsite.add(
        "/robots.txt",
        "User-agent: *\nDisallow: /docs/private/\nAllow: /docs/private/ok.html\n",
        content_type="text/plain",
    )
    docsite.page("/docs/index.html", ["private/secret.html", "private/ok.html", "a.html"])
    for path in ("/docs/private/secret.html", "/docs/private/ok.html", "/docs/a.html"):
        docsite.page(path)
    report = crawl(docsite, tmp_path)
    entries = by_path(docsite, tmp_path)
    assert entries["/docs/private/secret.html"].status == PageStatus.BLOCKED
    assert entries["/docs/private/ok.html"].status == PageStatus.OK
    assert report["blocked_by_robots"] == 1
    assert not docsite.requests_for("/docs/private/secret.html")
    assert all(h.headers.get("User-Agent") == UA for h in docsite.hits)


def test_missing_robots_allows_everything(docsite: DocSite, tmp_path: Path) -> None:
    small_site(docsite)
    assert crawl(docsite, tmp_path)["pages"] == 5
    assert len(docsite.requests_for("/robots.txt")) == 1


def test_robots_5xx_stops_the_crawl_before_writing(docsite: DocSite, tmp_path: Path) -> None:
    small_site(docsite)
    docsite.add("/robots.txt", "oops", status=503, content_type="text/plain")
    with pytest.raises(CrawlError, match=r"503.*RFC 9309"):
        crawl(docsite, tmp_path, retries=1)
    assert len(docsite.requests_for("/robots.txt")) == 2
    assert not docsite.page_hits()
    assert not (tmp_path / "manifest.jsonl").exists()


def test_fractional_crawl_delay_limits_the_rate(docsite: DocSite, tmp_path: Path) -> None:
    docsite.add("/robots.txt", "User-agent: *\nCrawl-delay: 0.15\n", content_type="text/plain")
    docsite.page("/docs/index.html", [f"p{i}.html" for i in range(6)])
    for i in range(6):
        docsite.page(f"/docs/p{i}.html")
    crawl(docsite, tmp_path, concurrency=4, requests_per_second=100.0, use_sitemap=False)
    times = [h.t for h in docsite.hits]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 8
    # Starts are spaced exactly; arrivals jitter on a loaded machine, so one gap may shrink
    # while its neighbour grows. Unlimited, the gaps would be ~0.
    assert min(gaps) >= 0.15 * 0.6, gaps
    assert times[-1] - times[0] >= 7 * 0.15 * 0.95


def test_rate_limit_is_never_exceeded_across_threads(docsite: DocSite, tmp_path: Path) -> None:
    rate = 10.0
    docsite.page("/docs/index.html", [f"p{i}.html" for i in range(14)])
    for i in range(14):
        docsite.page(f"/docs/p{i}.html", failures=[(503, {})] if i % 5 == 0 else [])
    crawl(docsite, tmp_path, concurrency=8, requests_per_second=rate, backoff_s=0.0)
    times = sorted(h.t for h in docsite.hits)
    assert len(times) >= 17  # robots, sitemap, index, 14 pages and the retried ones
    # Arrival times jitter by a few ms around the slots, hence the 5% margin on the window.
    for start in times:
        in_window = [t for t in times if start <= t < start + 0.95]
        assert len(in_window) <= rate, (start, in_window)
    assert times[-1] - times[0] >= (len(times) - 1) / rate * 0.95


def test_sitemap_seeds_unlinked_pages_in_scope_only(docsite: DocSite, tmp_path: Path) -> None:
    ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
    docsite.add(
        "/robots.txt", f"Sitemap: {docsite.url('/sitemap_index.xml')}\n", content_type="text/plain"
    )
    docsite.add(
        "/sitemap_index.xml",
        f"<sitemapindex {ns}><sitemap><loc>{docsite.url('/docs/sm.xml')}</loc></sitemap>"
        "</sitemapindex>",
        content_type="application/xml",
    )
    docsite.add(
        "/docs/sm.xml",
        f"<urlset {ns}><url><loc>{docsite.url('/docs/orphan.html')}</loc></url>"
        f"<url><loc>{docsite.url('/blog/post.html')}</loc></url>"
        f"<url><loc>{docsite.url('/docs/index.html')}</loc></url></urlset>",
        content_type="application/xml",
    )
    docsite.page("/docs/index.html", ["a.html"])
    docsite.page("/docs/a.html")
    docsite.page("/docs/orphan.html", ["orphan-child.html"])
    docsite.page("/docs/orphan-child.html")
    docsite.page("/blog/post.html")
    crawl(docsite, tmp_path)
    urls = [e.url.removeprefix(docsite.base) for e in read_manifest(tmp_path)]
    assert urls == [
        "/docs/index.html", "/docs/a.html", "/docs/orphan.html", "/docs/orphan-child.html"
    ]  # fmt: skip
    assert not docsite.requests_for("/blog/post.html")


def test_default_sitemap_at_scope_root(docsite: DocSite, tmp_path: Path) -> None:
    ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
    docsite.add(
        "/docs/sitemap.xml",
        f"<urlset {ns}><url><loc>{docsite.url('/docs/orphan.html')}</loc></url></urlset>",
        content_type="application/xml",
    )
    docsite.page("/docs/index.html")
    docsite.page("/docs/orphan.html")
    crawl(docsite, tmp_path)
    assert by_path(docsite, tmp_path)["/docs/orphan.html"].status == PageStatus.OK


def test_redirects_in_scope_followed_out_of_scope_not(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", ["old.html", "away.html"])
    docsite.redirect("/docs/old.html", "/docs/new/page.html")
    docsite.page("/docs/new/page.html")
    docsite.redirect("/docs/away.html", "/blog/landing.html", status=302)
    docsite.page("/blog/landing.html")
    report = crawl(docsite, tmp_path)
    entries = by_path(docsite, tmp_path)
    assert entries["/docs/new/page.html"].status == PageStatus.OK
    assert entries["/docs/new/page.html"].http_status == 200
    assert "/docs/old.html" not in entries
    assert entries["/docs/away.html"].status == PageStatus.SKIPPED
    assert entries["/docs/away.html"].reason == "redirect_out_of_scope"
    assert not docsite.requests_for("/blog/landing.html")
    assert report["skipped_by_reason"]["redirect_out_of_scope"] == 1


def test_404_is_failed_without_retry(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", ["missing.html", "a.html"])
    docsite.page("/docs/a.html")
    report = crawl(docsite, tmp_path, retries=3)
    entry = by_path(docsite, tmp_path)["/docs/missing.html"]
    assert (entry.status, entry.http_status, entry.file) == (PageStatus.FAILED, 404, None)
    assert entry.reason == "http_404"
    assert len(docsite.requests_for("/docs/missing.html")) == 1
    assert report["failed_by_reason"] == {"http_404": 1} and report["pages"] == 2


def test_429_retry_after_is_honoured(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", ["busy.html"])
    docsite.page("/docs/busy.html", failures=[(429, {"Retry-After": "1"})])
    crawl(docsite, tmp_path, backoff_max_s=5.0)
    hits = docsite.requests_for("/docs/busy.html")
    assert len(hits) == 2
    assert hits[1].t - hits[0].t >= 0.95
    assert by_path(docsite, tmp_path)["/docs/busy.html"].status == PageStatus.OK


def test_retry_after_is_capped_by_backoff_max(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", ["busy.html"])
    docsite.page("/docs/busy.html", failures=[(429, {"Retry-After": "3600"})])
    crawl(docsite, tmp_path, backoff_max_s=0.2)
    hits = docsite.requests_for("/docs/busy.html")
    assert len(hits) == 2 and hits[1].t - hits[0].t < 1.0


def test_5xx_then_success_and_5xx_forever(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", ["flaky.html", "down.html"])
    docsite.page("/docs/flaky.html", failures=[(503, {}), (500, {})])
    docsite.page("/docs/down.html", failures=[(502, {})] * 10)
    report = crawl(docsite, tmp_path, retries=2)
    entries = by_path(docsite, tmp_path)
    assert entries["/docs/flaky.html"].status == PageStatus.OK
    assert len(docsite.requests_for("/docs/flaky.html")) == 3
    assert entries["/docs/down.html"].status == PageStatus.FAILED
    assert entries["/docs/down.html"].reason == "http_502"
    assert len(docsite.requests_for("/docs/down.html")) == 3
    assert report["failed_by_reason"] == {"http_502": 1}


def test_slow_page_times_out_and_the_crawl_goes_on(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", ["slow.html", "a.html"])
    docsite.page("/docs/slow.html", delay_s=1.5)
    docsite.page("/docs/a.html")
    started = time.monotonic()
    report = crawl(docsite, tmp_path, timeout_s=0.3, retries=1)
    assert time.monotonic() - started < 3.0
    entries = by_path(docsite, tmp_path)
    assert entries["/docs/slow.html"].status == PageStatus.FAILED
    assert entries["/docs/slow.html"].reason == "timeout"
    assert entries["/docs/a.html"].status == PageStatus.OK
    assert len(docsite.requests_for("/docs/slow.html")) == 2
    assert report["failed_by_reason"] == {"timeout": 1}


def calendar_trap(site: DocSite) -> None:
    """Every month links the next one, every listing page the next page, forever."""

    def month(path: str) -> Any:
        year, mon = (int(x) for x in path.strip("/").split("/")[-2:])
        nxt = (year + (mon == 12), mon % 12 + 1)
        return render_page(path, [f"/docs/cal/{nxt[0]}/{nxt[1]:02d}/"])

    def listing(path: str) -> Any:
        n = int(path.split("page=")[1]) if "page=" in path else 1
        return render_page(path, [f"/docs/list?page={n + 1}"])

    from tests.support.docsite import Route

    site.generators["/docs/cal/"] = lambda p: Route(body=month(p))
    site.generators["/docs/list"] = lambda p: Route(body=listing(p))
    site.generators["/docs/a/"] = lambda p: Route(body=render_page(p, ["a/"]))
    site.page("/docs/index.html", ["cal/2024/01/", "list?page=1", "a/"])


def test_url_traps_stay_bounded(docsite: DocSite, tmp_path: Path) -> None:
    calendar_trap(docsite)
    report = crawl(docsite, tmp_path / "pages", max_pages=40, use_sitemap=False)
    assert len(docsite.page_hits()) == 40 and report["skipped_by_reason"]["max_pages"] >= 1
    assert report["skipped_by_reason"]["trap_repeated_segment"] == 1
    assert not any("/a/a/a/a/" in h.path for h in docsite.hits)
    docsite.hits.clear()
    report = crawl(docsite, tmp_path / "depth", max_depth=5, use_sitemap=False)
    assert max(e.depth for e in read_manifest(tmp_path / "depth")) == 5
    assert report["skipped_by_reason"]["max_depth"] == 2
    assert len(docsite.page_hits()) == 1 + 5 + 5 + 3


def test_conditional_get_304_keeps_files_and_fetched_at(docsite: DocSite, tmp_path: Path) -> None:
    small_site(docsite)
    crawl(docsite, tmp_path)
    before = read_manifest(tmp_path)
    docsite.hits.clear()
    time.sleep(1.1)  # fetched_at has second resolution; a rewrite would show
    report = crawl(docsite, tmp_path)
    page_hits = docsite.page_hits()
    assert len(page_hits) == 5
    assert all(h.headers.get("If-None-Match") for h in page_hits)
    assert all(h.headers.get("If-Modified-Since") for h in page_hits)
    assert report["not_modified"] == 5 and report["fetched"] == 0
    assert report["unchanged"] == 5 and report["new"] == 0 and report["changed"] == 0
    assert read_manifest(tmp_path) == before


def test_last_modified_alone_gives_304(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", headers={})
    crawl(docsite, tmp_path)
    entry = read_manifest(tmp_path)[0]
    assert entry.etag
    # A server without ETags: only If-Modified-Since can match.
    raw = (tmp_path / "manifest.jsonl").read_text().replace(entry.etag.replace('"', '\\"'), "x")
    (tmp_path / "manifest.jsonl").write_text(raw)
    docsite.hits.clear()
    report = crawl(docsite, tmp_path)
    assert docsite.page_hits()[0].headers["If-Modified-Since"] == entry.last_modified
    assert report["not_modified"] == 0  # If-None-Match "x" does not match, server sends 200
    assert report["unchanged"] == 1


def test_changed_page_is_refetched_and_old_file_dropped(docsite: DocSite, tmp_path: Path) -> None:
    small_site(docsite)
    crawl(docsite, tmp_path)
    old = by_path(docsite, tmp_path)["/docs/c.html"]
    docsite.add("/docs/c.html", render_page("c", text="new text"))
    report = crawl(docsite, tmp_path)
    new = by_path(docsite, tmp_path)["/docs/c.html"]
    assert new.sha256 != old.sha256 and report["changed"] == 1 and report["not_modified"] == 4
    assert not (tmp_path / (old.file or "")).exists()
    assert (tmp_path / (new.file or "")).exists()


def test_charset_from_meta_and_default_utf8(docsite: DocSite, tmp_path: Path) -> None:
    latin = "<html><head><meta charset='iso-8859-1'><title>Caf\xe9</title></head><body>"
    latin += "<a href='utf.html'>x</a> na\xefve</body></html>"
    docsite.add("/docs/index.html", latin.encode("latin-1"), content_type="text/html")
    utf = "<html><head><title>Caf\xe9 \u2013</title></head><body>\u00fc</body></html>"
    docsite.add("/docs/utf.html", utf.encode("utf-8"), content_type="text/html")
    crawl(docsite, tmp_path)
    entries = by_path(docsite, tmp_path)
    assert entries["/docs/index.html"].encoding == "iso8859-1"
    assert entries["/docs/utf.html"].encoding == "utf-8"
    stored = (tmp_path / (entries["/docs/index.html"].file or "")).read_bytes()
    assert stored == latin.encode("latin-1")


def test_duplicate_content_is_stored_once(docsite: DocSite, tmp_path: Path) -> None:
    body = render_page("same")
    docsite.page("/docs/index.html", ["one.html", "two.html"])
    docsite.add("/docs/one.html", body)
    docsite.add("/docs/two.html", body)
    report = crawl(docsite, tmp_path)
    entries = by_path(docsite, tmp_path)
    one, two = entries["/docs/one.html"], entries["/docs/two.html"]
    assert one.status == PageStatus.OK and two.status == PageStatus.DUPLICATE
    assert two.duplicate_of == one.id and two.file == one.file
    assert report["duplicates"] == 1 and report["pages"] == 2
    assert len(list((tmp_path / "pages").iterdir())) == 2


def test_canonical_link_sets_identity(docsite: DocSite, tmp_path: Path) -> None:
    canon = '<link rel="canonical" href="/docs/real.html">'
    docsite.page("/docs/index.html", ["alias.html", "real.html"])
    docsite.add("/docs/alias.html", render_page("alias", extra_head=canon))
    docsite.page("/docs/real.html")
    crawl(docsite, tmp_path)
    entries = by_path(docsite, tmp_path)
    assert "/docs/alias.html" not in entries
    assert entries["/docs/real.html"].sha256 == content_sha(render_page("alias", extra_head=canon))


def test_max_pages(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", [f"p{i}.html" for i in range(10)])
    for i in range(10):
        docsite.page(f"/docs/p{i}.html")
    report = crawl(docsite, tmp_path, max_pages=4)
    assert len(docsite.page_hits()) == 4
    assert report["pages"] == 4 and report["skipped_by_reason"]["max_pages"] == 7


def test_non_html_and_oversized_pages_are_skipped(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", ["data", "big.html", "stream.html", "exclude-me.html"])
    docsite.add("/docs/data", b'{"a": 1}', content_type="application/json")
    docsite.add("/docs/big.html", render_page("big", text="x" * 5000))
    docsite.add("/docs/stream.html", render_page("stream", text="y" * 5000), omit_length=True)
    docsite.page("/docs/exclude-me.html")
    report = crawl(docsite, tmp_path, max_page_bytes=2048, exclude=["exclude-me"])
    entries = by_path(docsite, tmp_path)
    assert entries["/docs/data"].reason == "not_html"
    assert entries["/docs/big.html"].reason == "too_large"
    assert entries["/docs/stream.html"].reason == "too_large"
    assert all(e.file is None for p, e in entries.items() if p != "/docs/index.html")
    assert report["skipped_by_reason"] == {"excluded": 1, "not_html": 1, "too_large": 2}
    assert not docsite.requests_for("/docs/exclude-me.html")


def test_recrawl_of_unchanged_site_is_byte_identical(docsite: DocSite, tmp_path: Path) -> None:
    small_site(docsite)
    docsite.page("/docs/c.html", ["gone.html", "dup.html"])
    docsite.add("/docs/dup.html", render_page("/docs/a.html", ["c.html", "index.html"]))
    crawl(docsite, tmp_path)
    first = snapshot(tmp_path)
    mtimes = {p: (tmp_path / p).stat().st_mtime_ns for p in first}
    time.sleep(1.1)
    crawl(docsite, tmp_path)
    assert snapshot(tmp_path) == first
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in first} == mtimes


def test_removed_pages_on_recrawl(docsite: DocSite, tmp_path: Path) -> None:
    small_site(docsite)
    docsite.page("/docs/b.html", ["a.html", "sub/d.html", "twin.html"])
    docsite.add("/docs/twin.html", render_page("/docs/c.html"))
    crawl(docsite, tmp_path)
    before = by_path(docsite, tmp_path)
    docsite.remove("/docs/sub/d.html")  # now 404
    docsite.page("/docs/a.html", ["index.html"])  # c.html is no longer linked
    report = crawl(docsite, tmp_path)
    after = by_path(docsite, tmp_path)
    assert after["/docs/sub/d.html"].status == PageStatus.REMOVED
    assert after["/docs/sub/d.html"].reason == "http_404"
    assert not (tmp_path / (before["/docs/sub/d.html"].file or "")).exists()
    assert after["/docs/c.html"].status == PageStatus.REMOVED
    assert after["/docs/c.html"].reason == "not_reached" and after["/docs/c.html"].file is None
    # c.html's bytes live on: twin.html has the same content and now owns the file.
    assert after["/docs/twin.html"].status == PageStatus.OK
    assert (tmp_path / (after["/docs/twin.html"].file or "")).exists()
    assert report["removed"] == 2
    # A third crawl keeps the removals as they are.
    manifest = (tmp_path / "manifest.jsonl").read_bytes()
    assert crawl(docsite, tmp_path)["removed"] == 0
    assert (tmp_path / "manifest.jsonl").read_bytes() == manifest


def test_unreachable_start_url_names_it(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = f"http://127.0.0.1:{port}/docs/index.html"
    params = CrawlParams(start_urls=[start], retries=1, backoff_s=0.0, timeout_s=1.0)
    with pytest.raises(CrawlError) as err:
        crawl_site(params, tmp_path, show_progress=False)
    assert start in str(err.value) and "robots.txt" in str(err.value)
    assert "2 attempt(s)" in str(err.value) and "connection_error" in str(err.value)


def test_missing_start_page_names_it(docsite: DocSite, tmp_path: Path) -> None:
    with pytest.raises(CrawlError, match=r"start URL .*/docs/index.html.*http_404"):
        crawl(docsite, tmp_path)
    assert not (tmp_path / "manifest.jsonl").exists()


def test_start_url_blocked_by_robots_is_an_error(docsite: DocSite, tmp_path: Path) -> None:
    docsite.add("/robots.txt", "User-agent: *\nDisallow: /docs/\n", content_type="text/plain")
    docsite.page("/docs/index.html")
    with pytest.raises(CrawlError, match=r"blocked by robots.txt: \['http://127.0.0.1:\d+/docs/"):
        crawl(docsite, tmp_path)
    assert not docsite.page_hits()


def test_auth_header_is_sent(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html")
    crawl_site(make_params(docsite), tmp_path, auth_header="Bearer t0k", show_progress=False)
    assert {h.headers.get("Authorization") for h in docsite.hits} == {"Bearer t0k"}


def test_cookie_jar_is_sent_where_its_cookies_apply(docsite: DocSite, tmp_path: Path) -> None:
    docsite.page("/docs/index.html", ["guide/a.html"])
    docsite.page("/docs/guide/a.html")
    jar = tmp_path / "cookies.txt"
    jar.write_text(
        "# Netscape HTTP Cookie File\n"
        "127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tabc\n"  # 0: a session cookie
        "127.0.0.1\tFALSE\t/docs/guide\tFALSE\t0\tguide\tg1\n"
        "127.0.0.1\tFALSE\t/\tFALSE\t1\tstale\told\n"  # expired in 1970
        "#HttpOnly_.other.test\tTRUE\t/\tFALSE\t0\tforeign\tx\n"
    )
    crawl_site(make_params(docsite), tmp_path / "raw", cookies_file=jar, show_progress=False)
    cookies = {h.path: h.headers.get("Cookie") for h in docsite.hits}
    assert cookies["/docs/index.html"] == "session=abc"
    assert cookies["/docs/guide/a.html"] == "guide=g1; session=abc"


def test_refused_start_page_fails_at_once_naming_the_settings(
    docsite: DocSite, tmp_path: Path
) -> None:
    docsite.page("/docs/index.html", ["a.html"])
    docsite.add("/docs/index.html", b"log in first", status=401)
    with pytest.raises(CrawlError, match=r"index.html answered HTTP 401.*crawl.auth_header_env"):
        crawl(docsite, tmp_path)
    assert [h.path for h in docsite.page_hits()] == ["/docs/index.html"]
    assert not (tmp_path / "manifest.jsonl").exists()


def test_gzip_bodies_are_stored_decoded(docsite: DocSite, tmp_path: Path) -> None:
    body = render_page("/docs/index.html", text="z" * 3000)
    docsite.add("/docs/index.html", gzip.compress(body), headers={"Content-Encoding": "gzip"})
    crawl(docsite, tmp_path)
    entry = by_path(docsite, tmp_path)["/docs/index.html"]
    assert (tmp_path / str(entry.file)).read_bytes() == body
    assert "gzip" in docsite.page_hits()[0].headers["Accept-Encoding"]


def test_proxy_from_the_environment_is_used(
    docsite: DocSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test site doubles as the proxy: it serves the path of the absolute URL it is sent.
    docsite.page("/docs/index.html", ["a.html"])
    docsite.page("/docs/a.html")
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", docsite.base.replace("http://", "http://u:pw@"))
    start = "http://docs.invalid/docs/index.html"
    crawl_site(make_params(docsite, start_urls=[start]), tmp_path, show_progress=False)
    assert [h.path for h in docsite.page_hits()] == [start, "http://docs.invalid/docs/a.html"]
    expected = "Basic " + base64.b64encode(b"u:pw").decode()
    sent = [{k.lower(): v for k, v in h.headers.items()} for h in docsite.hits]
    assert {headers.get("proxy-authorization") for headers in sent} == {expected}


def test_progress_goes_to_stderr(
    docsite: DocSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_site(docsite)
    crawl_site(make_params(docsite), tmp_path / "quiet", show_progress=False)
    assert capsys.readouterr().err == ""
    crawl_site(make_params(docsite), tmp_path / "loud", show_progress=True)
    captured = capsys.readouterr()
    assert "crawl" in captured.err and "5" in captured.err and captured.out == ""


KILL_SCRIPT = """
import sys
from pathlib import Path
from tasks.crawl.crawler import crawl_site
from tasks.core.params import CrawlParams
params = CrawlParams(start_urls=[sys.argv[1]], requests_per_second=20, concurrency=2)
crawl_site(params, Path(sys.argv[2]), show_progress=False)
"""


def test_killed_crawl_leaves_no_torn_files(docsite: DocSite, tmp_path: Path) -> None:
    names = [f"p{i}.html" for i in range(60)]
    docsite.page("/docs/index.html", names)
    for i, name in enumerate(names):
        docsite.add(f"/docs/{name}", render_page(name, text="z" * 20000 + str(i)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, docsite.url("/docs/index.html"), str(tmp_path)],
        env=env,
    )
    deadline = time.monotonic() + 20
    while len(docsite.page_hits()) < 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "manifest.jsonl").exists()
    for path in (tmp_path / "pages").glob("*.html"):
        assert content_sha(path.read_bytes()) == path.stem
    (tmp_path / "pages" / ".leftover.html.tmp").write_bytes(b"torn")
    report = crawl(docsite, tmp_path)
    assert report["pages"] == 61
    files = sorted(p.name for p in (tmp_path / "pages").iterdir())
    assert files == sorted(f"{e.sha256}.html" for e in read_manifest(tmp_path))


def test_a_start_url_that_yields_no_page_fails_before_changing_anything(
    docsite: DocSite, tmp_path: Path
) -> None:
    docsite.page("/docs/index.html", ["a.html"])
    docsite.page("/docs/a.html")
    crawl(docsite, tmp_path)
    before = (tmp_path / "manifest.jsonl").read_bytes()
    pages = sorted((tmp_path / "pages").iterdir())

    docsite.add("/docs/index.html", status=301, headers={"Location": "https://elsewhere.test/"})
    with pytest.raises(CrawlError) as moved:
        crawl(docsite, tmp_path)
    message = str(moved.value)
    assert "no start URL yielded a page, so nothing was changed" in message
    assert f"{docsite.url('/docs/index.html')}: skipped (redirect_" in message
    assert "redirected to https://elsewhere.test/" in message and "crawl.start_urls" in message

    docsite.add("/docs/index.html", b"%PDF-1.4", content_type="application/pdf")
    with pytest.raises(CrawlError, match=r"skipped \(not_html\).*Content-Type application/pdf"):
        crawl(docsite, tmp_path)

    docsite.add("/docs/index.html", "<html><body>" + "<p>words</p>" * 400 + "</body></html>")
    with pytest.raises(CrawlError, match=r"skipped \(too_large\).*over crawl.max_page_bytes"):
        crawl(docsite, tmp_path, max_page_bytes=2000)
    assert (tmp_path / "manifest.jsonl").read_bytes() == before
    assert sorted((tmp_path / "pages").iterdir()) == pages


def test_a_crawl_that_would_remove_most_pages_stops_unless_forced(
    docsite: DocSite, tmp_path: Path
) -> None:
    docsite.page("/docs/index.html", ["a.html", "b.html", "c.html"])
    for name in ("a", "b", "c"):
        docsite.page(f"/docs/{name}.html")
    crawl(docsite, tmp_path)
    before = (tmp_path / "manifest.jsonl").read_bytes()

    docsite.page("/docs/index.html", [])  # an outage page, a redesign: 3 of 4 pages unlinked
    with pytest.raises(CrawlError, match=r"remove 3 of the 4 known pages.*--force"):
        crawl(docsite, tmp_path)
    assert (tmp_path / "manifest.jsonl").read_bytes() == before

    report = crawl_site(make_params(docsite), tmp_path, show_progress=False, force=True)
    assert report["removed"] == 3
    assert crawl(docsite, tmp_path, max_removed_fraction=0.0)["removed"] == 0  # nothing left


# --- limits: sitemaps, robots.txt, Crawl-delay, slow bodies, traps, exclusions ----------


def read_exclusions(raw: Path) -> list[dict[str, Any]]:
    text = (raw / "exclusions.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


SITEMAP_NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


@pytest.mark.parametrize(
    ("path", "encoded", "headers"),
    [
        ("/docs/sitemap.xml.gz", True, {}),  # a .gz file, served as it is
        ("/docs/sitemap.xml", False, {"Content-Encoding": "gzip"}),  # compressed in transit
        ("/docs/sitemap.xml.gz", True, {"Content-Encoding": "gzip"}),  # both
    ],
)
def test_a_gzipped_sitemap_is_decompressed_up_to_its_cap(
    docsite: DocSite, tmp_path: Path, path: str, encoded: bool, headers: dict[str, str]
) -> None:
    head = f"<urlset {SITEMAP_NS}><url><loc>{docsite.url('/docs/orphan.html')}</loc></url>"
    # 64 MB of XML in 62 KB: the first URL is listed before the padding, the last one after it.
    xml = head.encode() + b" " * 64_000_000
    xml += f"<url><loc>{docsite.url('/docs/late.html')}</loc></url></urlset>".encode()
    body = gzip.compress(gzip.compress(xml) if encoded and headers else xml)
    docsite.add("/robots.txt", f"Sitemap: {docsite.url(path)}\n", content_type="text/plain")
    docsite.add(path, body, content_type="application/gzip", headers=headers)
    for page in ("/docs/index.html", "/docs/orphan.html", "/docs/late.html"):
        docsite.page(page)
    run_logger()  # the first call imports prefect (~25 MB), which is not the sitemap's memory
    tracemalloc.start()
    try:
        report = crawl(docsite, tmp_path, max_sitemap_bytes=1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16_000_000, peak  # decompressing it whole took 64 MB (the probe's: 1 GiB)
    entries = by_path(docsite, tmp_path)
    assert entries["/docs/orphan.html"].status == PageStatus.OK  # what was parsed is kept
    assert "/docs/late.html" not in entries
    assert report["sitemaps"] == {
        "read": 1, "capped": 1, "missing": 0, "failed_by_reason": {}, "skipped_by_reason": {}
    }  # fmt: skip
    rows = [r for r in read_exclusions(tmp_path) if r["reason"].startswith("sitemap_")]
    assert [(r["url"], r["reason"]) for r in rows] == [(docsite.url(path), "sitemap_capped")]
    assert "crawl.max_sitemap_bytes" in rows[0]["detail"]


def test_sitemap_parsing_stops_at_the_cap_and_keeps_what_it_read() -> None:
    locs = "".join(f"<url><loc>http://d.test/{i}</loc></url>" for i in range(100))
    xml = f"<urlset {SITEMAP_NS}>{locs}</urlset>".encode()
    assert parse_sitemap(xml, max_bytes=len(xml)) == (
        [f"http://d.test/{i}" for i in range(100)],
        [],
        None,
    )
    pages, nested, problem = parse_sitemap(gzip.compress(xml), max_bytes=len(xml) // 2)
    assert problem == "capped" and not nested and 40 <= len(pages) < 50
    assert pages == [f"http://d.test/{i}" for i in range(len(pages))]


def test_a_huge_crawl_delay_is_capped_logged_and_reported(
    docsite: DocSite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docsite.add("/robots.txt", "User-agent: *\nCrawl-delay: 100000\n", content_type="text/plain")
    docsite.page("/docs/index.html", ["a.html", "b.html"])
    docsite.page("/docs/a.html")
    docsite.page("/docs/b.html")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tasks.crawl.crawler"):
        report = crawl(docsite, tmp_path, max_crawl_delay_s=0.2, use_sitemap=False)
    assert time.monotonic() - started < 5.0
    assert report["pages"] == 3
    assert report["crawl_delay_s"] == {"asked": 100000.0, "used": 0.2}
    times = [h.t for h in docsite.page_hits()]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.2 * 0.6
    assert "Crawl-delay: 100000" in caplog.text and "crawl.max_crawl_delay_s" in caplog.text


def test_a_rate_too_slow_for_max_pages_fails_before_fetching_pages(
    docsite: DocSite, tmp_path: Path
) -> None:
    docsite.add("/robots.txt", "User-agent: *\nCrawl-delay: 100000\n", content_type="text/plain")
    small_site(docsite)
    with pytest.raises(CrawlError) as slow:
        crawl(docsite, tmp_path, max_pages=1000, max_duration_s=3600)
    message = str(slow.value)
    for key in ("crawl.max_pages", "crawl.max_duration_s", "crawl.max_crawl_delay_s"):
        assert key in message, message
    assert "Crawl-delay" in message
    assert [h.path for h in docsite.hits] == ["/robots.txt"]
    assert not (tmp_path / "manifest.jsonl").exists()
    with pytest.raises(CrawlError, match=r"crawl\.requests_per_second.*crawl\.max_duration_s"):
        crawl(docsite, tmp_path, respect_robots=False, requests_per_second=1, max_duration_s=10)
    # A budget the rate fits, or none, crawls as before.
    assert crawl(docsite, tmp_path, max_pages=5, max_crawl_delay_s=0.05, max_duration_s=60)
    assert crawl(docsite, tmp_path, max_crawl_delay_s=0.05)["pages"] == 5


def test_a_robots_txt_bigger_than_the_page_cap_is_read_up_to_its_own_cap(
    docsite: DocSite, tmp_path: Path
) -> None:
    filler = "# " + "x" * 97 + "\n"  # 100 bytes a line
    text = "User-agent: *\nDisallow: /docs/early/\n" + filler * 4990  # ~499 KB
    text += "Disallow: /docs/mid/\n" + filler * 10_000 + "Disallow: /docs/late/\n"  # ~1.5 MB
    docsite.add("/robots.txt", text, content_type="text/plain")
    docsite.page("/docs/index.html", ["early/a.html", "mid/b.html", "late/c.html"])
    for path in ("/docs/early/a.html", "/docs/mid/b.html", "/docs/late/c.html"):
        docsite.page(path)
    report = crawl(docsite, tmp_path, max_page_bytes=2048, use_sitemap=False)
    entries = by_path(docsite, tmp_path)
    # RFC 9309: at least the first 500 KiB are parsed, and what lies beyond the cap is ignored.
    assert entries["/docs/early/a.html"].status == PageStatus.BLOCKED
    assert entries["/docs/mid/b.html"].status == PageStatus.BLOCKED
    assert entries["/docs/late/c.html"].status == PageStatus.OK
    assert report["robots_truncated"] == 1


def test_a_robots_txt_cut_at_the_cap_drops_its_partial_last_line() -> None:
    body = b"User-agent: *\nDisallow: /private/\nAllow: /private/pub"  # was /private/public/
    robots = parse_robots(decode_robots(body, truncated=True), UA)
    assert not robots.allows("http://d.test/private/pub-secret.html")
    assert parse_robots(decode_robots(body, truncated=False), UA).allows(
        "http://d.test/private/pub"
    )


def test_a_body_dripped_slowly_fails_at_the_request_deadline_and_is_retried(
    docsite: DocSite, tmp_path: Path
) -> None:
    docsite.page("/docs/index.html", ["drip.html", "a.html"])
    docsite.page("/docs/drip.html", drip_s=0.05)  # ~200 bytes: 10 s, each byte within 0.05 s
    docsite.page("/docs/a.html")
    started = time.monotonic()
    report = crawl(docsite, tmp_path, timeout_s=0.5, request_deadline_s=1.0, retries=1)
    assert time.monotonic() - started < 6.0
    entry = by_path(docsite, tmp_path)["/docs/drip.html"]
    assert (entry.status, entry.reason, entry.file) == (PageStatus.FAILED, "deadline", None)
    assert len(docsite.requests_for("/docs/drip.html")) == 2  # retried like a timeout
    assert report["failed_by_reason"] == {"deadline": 1} and report["pages"] == 2


def test_the_request_deadline_may_not_be_shorter_than_the_timeout() -> None:
    with pytest.raises(ValueError, match=r"request_deadline_s.*timeout_s"):
        CrawlParams(start_urls=["http://d.test/"], timeout_s=20, request_deadline_s=10)


def test_a_calendar_trap_is_cut_at_the_pattern_budget(docsite: DocSite, tmp_path: Path) -> None:
    from tests.support.docsite import Route

    def next_day(path: str) -> Route:
        day = date.fromisoformat(path.split("d=")[1]) + timedelta(days=1)
        return Route(body=render_page(path, [f"/docs/cal?d={day}"]))

    docsite.generators["/docs/cal?d="] = next_day
    # Release notes linked from one index, each linking the next: many URLs of one pattern,
    # but a finite list, not one that grows with every page fetched.
    releases = [f"release-15-{i}.html" for i in range(30)]
    docsite.page("/docs/index.html", ["cal?d=2024-01-01", "releases.html"])
    docsite.page("/docs/releases.html", releases)
    for i, name in enumerate(releases):
        docsite.page(f"/docs/{name}", [f"release-15-{i + 1}.html", "releases.html"])
    report = crawl(docsite, tmp_path, max_pages=120, max_urls_per_pattern=10, use_sitemap=False)
    cal_hits = [h for h in docsite.page_hits() if h.path.startswith("/docs/cal")]
    assert len(cal_hits) == 1 + 10
    assert report["skipped_by_reason"]["trap_pattern"] == 1
    assert report["trap_patterns"] == {docsite.url("/docs/cal?d=*"): 1}
    entries = by_path(docsite, tmp_path)
    assert all(entries[f"/docs/{name}"].status == PageStatus.OK for name in releases)
    trap = [r for r in read_exclusions(tmp_path) if r["reason"] == "trap_pattern"]
    assert [r["url"] for r in trap] == [docsite.url("/docs/cal?d=2024-01-12")]
    assert trap[0]["detail"] == f"linked from {docsite.url('/docs/cal?d=2024-01-11')}"


def test_skipped_urls_are_listed_with_their_reason_and_linking_page(
    docsite: DocSite, tmp_path: Path
) -> None:
    docsite.add(
        "/robots.txt", "User-agent: *\nDisallow: /docs/private/\n", content_type="text/plain"
    )
    links = ["a.html", "/elsewhere/x.html", "skip-me.html", "style.css", "data", "private/p.html"]
    docsite.page("/docs/index.html", links + [f"p{i}.html" for i in range(5)])
    docsite.page("/docs/a.html", ["a" * 600 + ".html"])
    docsite.add("/docs/data", b'{"a": 1}', content_type="application/json")
    for i in range(5):
        docsite.page(f"/docs/p{i}.html")
    report = crawl(docsite, tmp_path / "one", exclude=["skip-me"], max_pages=6, concurrency=1)
    rows = read_exclusions(tmp_path / "one")
    expected = Counter(report["skipped_by_reason"])
    expected["robots_txt"] = report["blocked_by_robots"]
    assert Counter(r["reason"] for r in rows) == expected
    assert set(expected) == {
        "out_of_scope", "excluded", "not_html_url", "not_html", "robots_txt", "max_pages",
        "trap_url_too_long",
    }  # fmt: skip
    found = {r["url"].removeprefix(docsite.base): r for r in rows}
    assert found["/elsewhere/x.html"]["reason"] == "out_of_scope"
    assert found["/elsewhere/x.html"]["detail"] == f"linked from {docsite.url('/docs/index.html')}"
    assert found["/docs/data"]["reason"] == "not_html"
    assert all(r["id"] and r["url"].startswith("http") for r in rows)
    # The file's order does not depend on thread timing.
    crawl(docsite, tmp_path / "two", exclude=["skip-me"], max_pages=6, concurrency=8)
    one = (tmp_path / "one" / "exclusions.jsonl").read_bytes()
    assert (tmp_path / "two" / "exclusions.jsonl").read_bytes() == one
