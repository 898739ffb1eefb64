"""Crawling documentation built by JavaScript, and private portals, through headless Chromium.

The sites are served on 127.0.0.1 (tests/support/docsite.py) from tasks/services/jssite.py; one
browser serves the whole module, as one serves a whole crawl.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.core.params import CrawlParams, MarkdownParams
from tasks.core.records import ManifestEntry, PageStatus
from tasks.crawl.crawler import CrawlError, crawl_site
from tasks.crawl.render import Browser
from tasks.markdown.convert import convert_page
from tasks.services.jssite import build_js_site, build_routed_site, build_static_twin
from tests.support.docsite import DocSite, serve_site

pytestmark = pytest.mark.browser

PAGES = 4
TOKEN = "Bearer t0ken-9f3c1e"
COOKIE = "s3ss10n-77ab2d"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as running:
        yield running


@pytest.fixture
def tracker() -> Iterator[DocSite]:
    """Another host, which the JS site pings: the browser must never reach it."""
    yield from serve_site()


def make_params(site: DocSite, **kw: Any) -> CrawlParams:
    settings: dict[str, Any] = {
        "start_urls": [site.url("/docs/index.html")],
        "requests_per_second": None,
        "timeout_s": 2.0,
        "retries": 1,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        "render": "browser",
        "render_timeout_s": 10.0,
    }
    settings.update(kw)
    return CrawlParams(**settings)


def crawl(site: DocSite, raw: Path, browser: Browser, **kw: Any) -> dict[str, Any]:
    return crawl_site(make_params(site, **kw), raw, browser=browser, show_progress=False)


def read_entries(site: DocSite, raw: Path) -> dict[str, ManifestEntry]:
    lines = (raw / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    entries = (ManifestEntry.model_validate_json(line) for line in lines)
    return {e.url.removeprefix(site.base): e for e in entries}


def read_page(raw: Path, entry: ManifestEntry) -> bytes:
    return (raw / str(entry.file)).read_bytes()


def snapshot(raw: Path) -> dict[str, bytes]:
    return {str(p.relative_to(raw)): p.read_bytes() for p in sorted(raw.rglob("*")) if p.is_file()}


def test_js_shells_are_flagged_when_not_rendered(docsite: DocSite, tmp_path: Path) -> None:
    docsite.add_files(build_js_site(PAGES))
    report = crawl_site(make_params(docsite, render="none"), tmp_path, show_progress=False)
    assert report["js_shells"] == 1  # the shell links nowhere: the index is all there is
    assert "crawl.render: browser" in report["js_shell_hint"]
    assert "/docs/index.html" in report["js_shell_hint"]
    assert report["render"]["mode"] == "none" and report["render"]["pages"] == 0


def test_rendered_pages_convert_like_their_static_twin(
    docsite: DocSite, tracker: DocSite, tmp_path: Path, browser: Browser
) -> None:
    docsite.add_files(build_js_site(PAGES, tracker_url=tracker.url("/t")))
    twin = build_static_twin(PAGES)
    report = crawl(docsite, tmp_path, browser)
    entries = read_entries(docsite, tmp_path)
    assert [e.status for e in entries.values()] == [PageStatus.OK] * PAGES
    params = MarkdownParams()
    for path, entry in entries.items():
        assert entry.rendered and entry.encoding == "utf-8"
        name = path.removeprefix("/docs/")
        rendered = convert_page(read_page(tmp_path, entry), entry.url, params, entry.encoding)
        static = convert_page(twin[f"twin/{name}"], entry.url, params, "utf-8")
        assert rendered.markdown == static.markdown and rendered.title == static.title
        assert "```" in rendered.markdown and "| Setting" in rendered.markdown
    assert report["js_shells"] == 0 and report["render"]["pages"] == PAGES
    # Per page: the script and the JSON (both in scope); the tracker's fetch is refused and
    # its image never asked for.
    assert report["render"]["subrequests"] == 2 * PAGES
    assert report["render"]["blocked_subrequests"] == {"other_host": PAGES}
    assert report["render"]["unneeded_subrequests"] == PAGES
    assert tracker.hits == []


def test_rendering_keeps_the_rate_limit_for_pages_and_their_subrequests(
    docsite: DocSite, tmp_path: Path, browser: Browser
) -> None:
    docsite.add_files(build_js_site(PAGES))
    rate = 10.0
    crawl(docsite, tmp_path, browser, requests_per_second=rate, concurrency=4)
    times = sorted(h.t for h in docsite.hits)
    assert len(times) >= 3 * PAGES  # each page: its shell, the script, the JSON
    # Starts are spaced exactly; arrivals jitter (through the browser by up to some 50 ms),
    # hence the margins, as in the plain crawl's rate test. Unlimited, all came at once.
    for start in times:
        assert len([t for t in times if start <= t < start + 0.95]) <= rate
    assert times[-1] - times[0] >= (len(times) - 1) / rate * 0.95


def test_subrequests_obey_robots_txt(docsite: DocSite, tmp_path: Path, browser: Browser) -> None:
    docsite.add_files(build_js_site(PAGES))
    docsite.add("/robots.txt", "User-agent: *\nDisallow: /api/\n", content_type="text/plain")
    report = crawl(docsite, tmp_path, browser, render_wait_for="#root:not(:empty)")
    assert report["render"]["blocked_subrequests"] == {"robots_txt": 1}
    assert not docsite.requests_for("/api/index.json")


def test_unchanged_site_leaves_raw_identical_and_api_changes_are_seen(
    docsite: DocSite, tmp_path: Path, browser: Browser
) -> None:
    """Every page's shell is the same, ETag included: its 304 says nothing about the page, so
    each page renders again and its content's hash decides."""
    docsite.add_files(build_js_site(PAGES))
    crawl(docsite, tmp_path, browser)
    before = snapshot(tmp_path)
    again = crawl(docsite, tmp_path, browser)
    assert snapshot(tmp_path) == before
    assert again["render"]["pages"] == PAGES and again["unchanged"] == PAGES
    route = docsite.routes["/api/page-1.json"]
    route.body = route.body.replace(b"Configuring connections", b"Configuring sockets")
    third = crawl(docsite, tmp_path, browser)
    assert third["changed"] == 1 and third["unchanged"] == PAGES - 1
    entry = read_entries(docsite, tmp_path)["/docs/page-1.html"]
    assert b"<h1>Configuring sockets</h1>" in read_page(tmp_path, entry)


def test_a_shell_of_its_own_answers_304_and_is_not_rendered_again(
    docsite: DocSite, tmp_path: Path, browser: Browser
) -> None:
    files = build_js_site(PAGES)
    for path in [p for p in files if p.startswith("docs/")]:  # e.g. a title per page
        files[path] = files[path].replace(b"<title>", f"<!-- {path} --><title>".encode())
    docsite.add_files(files)
    crawl(docsite, tmp_path, browser)
    before = snapshot(tmp_path)
    again = crawl(docsite, tmp_path, browser)
    assert again["not_modified"] == PAGES and again["render"]["pages"] == 0
    assert snapshot(tmp_path) == before


def test_a_rendered_dom_over_the_size_cap_is_not_stored(
    docsite: DocSite, tmp_path: Path, browser: Browser
) -> None:
    docsite.add_files(build_js_site(PAGES))  # shells of 300 bytes, built into 3 KB and more
    with pytest.raises(CrawlError, match=r"index.html: skipped \(too_large\).*max_page_bytes"):
        crawl(docsite, tmp_path, browser, max_page_bytes=1024)


def test_only_pages_matching_render_patterns_are_rendered(
    docsite: DocSite, tmp_path: Path, browser: Browser
) -> None:
    docsite.add_files(build_js_site(PAGES))
    docsite.page("/docs/static.html", ["index.html"])
    docsite.routes["/docs/static.html"].body = docsite.routes["/docs/static.html"].body.replace(
        b"</body>", b'<a href="index.html">JS</a></body>'
    )
    report = crawl(
        docsite,
        tmp_path,
        browser,
        start_urls=[docsite.url("/docs/static.html")],
        render_patterns=[r"/docs/(index|page-\d+)\.html$"],
    )
    entries = read_entries(docsite, tmp_path)
    assert not entries["/docs/static.html"].rendered
    assert entries["/docs/index.html"].rendered and len(entries) == PAGES + 1
    assert report["render"]["pages"] == PAGES


def test_pushstate_routes_with_real_paths_are_pages(
    docsite: DocSite, tmp_path: Path, browser: Browser
) -> None:
    shell, routes = build_routed_site()
    docsite.generators["/app/"] = lambda path: docsite.add(path, shell)
    crawl(docsite, tmp_path, browser, start_urls=[docsite.url("/app/")])
    entries = read_entries(docsite, tmp_path)
    assert sorted(entries) == sorted(routes)
    titles = {
        path: read_page(tmp_path, e).split(b"<h1>")[1].split(b"</h1>")[0]
        for path, e in entries.items()
    }
    assert len(set(titles.values())) == len(routes) and b"Not found" not in titles.values()


def test_hash_routes_are_pages_when_the_site_uses_them(
    docsite: DocSite, tmp_path: Path, browser: Browser
) -> None:
    shell, routes = build_routed_site(hash_routes=True)
    docsite.add("/hash/index.html", shell)
    crawl(docsite, tmp_path, browser, start_urls=[docsite.url("/hash/index.html")])
    entries = read_entries(docsite, tmp_path)
    expected = ["/hash/index.html"] + [f"/hash/index.html#{r}" for r in routes]
    assert sorted(entries) == sorted(expected)
    stored = {e.sha256 for e in entries.values() if e.status == PageStatus.OK}
    assert len(stored) == len(routes)  # `index.html` and `index.html#/` are the same page


def test_a_page_that_never_becomes_ready_fails_with_its_reason(
    docsite: DocSite, tmp_path: Path, browser: Browser
) -> None:
    docsite.add_files(build_js_site(PAGES))
    docsite.add("/api/page-2.json", b"{}", delay_s=8.0)  # the content never comes in time
    report = crawl(docsite, tmp_path, browser, render_wait_for="main h1", render_timeout_s=3.0)
    entry = read_entries(docsite, tmp_path)["/docs/page-2.html"]
    assert entry.status == PageStatus.FAILED and entry.reason == "render_timeout"
    assert report["failed_by_reason"] == {"render_timeout": 1} and report["pages"] == PAGES - 1


def test_a_page_that_never_goes_idle_fails_naming_the_setting(
    docsite: DocSite, tmp_path: Path, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    poll = b"<script>setInterval(function () { fetch('/docs/ping.json'); }, 100);</script>"
    docsite.add("/docs/index.html", b"<html><body><p>Live</p>" + poll + b"</body></html>")
    docsite.add("/docs/ping.json", b"{}", content_type="application/json")
    with pytest.raises(CrawlError, match=r"render_timeout.*crawl.render_wait_for"):
        crawl(docsite, tmp_path, browser, render_timeout_s=1.0)


def write_cookies(path: Path, site: DocSite, value: str) -> Path:
    path.write_text(
        f"# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\t{value}\n"
    )
    return path


def test_cookie_login_site(
    docsite: DocSite, tmp_path: Path, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    docsite.add_files(build_js_site(PAGES))
    docsite.guard = lambda path, h: None if f"session={COOKIE}" in h.get("cookie", "") else 401
    raw = tmp_path / "raw"
    with pytest.raises(CrawlError, match=r"/docs/index.html answered HTTP 401.*crawl.cookies_env"):
        crawl(docsite, raw, browser)
    cookies = write_cookies(tmp_path / "cookies.txt", docsite, COOKIE)
    caplog.set_level(logging.DEBUG)
    report = crawl_site(
        make_params(docsite), raw, cookies_file=cookies, browser=browser, show_progress=False
    )
    assert report["pages"] == PAGES and report["render"]["pages"] == PAGES
    entry = read_entries(docsite, raw)["/docs/page-1.html"]
    assert b"<h1>Configuring connections</h1>" in read_page(raw, entry)
    assert docsite.requests_for("/api/page-1.json")[-1].headers["Cookie"] == f"session={COOKIE}"
    assert_secret_absent(COOKIE, raw, report, caplog.text)


def test_bearer_token_site(
    docsite: DocSite,
    tracker: DocSite,
    tmp_path: Path,
    browser: Browser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    docsite.add_files(build_js_site(PAGES, tracker_url=tracker.url("/t")))
    docsite.guard = lambda path, h: None if h.get("authorization") == TOKEN else 401
    with pytest.raises(CrawlError, match=r"answered HTTP 401.*crawl.auth_header_env"):
        crawl(docsite, tmp_path, browser)
    caplog.set_level(logging.DEBUG)
    report = crawl_site(
        make_params(docsite), tmp_path, auth_header=TOKEN, browser=browser, show_progress=False
    )
    assert report["pages"] == PAGES
    entry = read_entries(docsite, tmp_path)["/docs/page-1.html"]
    assert b"<h1>Configuring connections</h1>" in read_page(tmp_path, entry)
    assert tracker.hits == []  # the token goes to the hosts in scope only
    assert_secret_absent(TOKEN.split()[1], tmp_path, report, caplog.text)


def test_refused_credentials_name_the_setting(
    docsite: DocSite, tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    docsite.add_files(build_js_site(PAGES))
    docsite.guard = lambda path, h: 403
    monkeypatch.setenv("DOCS_TOKEN_FOR_TEST", "Bearer expired")
    params = make_params(docsite, auth_header_env="DOCS_TOKEN_FOR_TEST")
    with pytest.raises(CrawlError, match=r"HTTP 403; the credentials from crawl.auth_header_env"):
        crawl_site(
            params, tmp_path, auth_header=params.auth_header(), browser=browser, show_progress=False
        )
    # robots.txt, the sitemap and the start page: it stopped there
    assert [h.path for h in docsite.hits][-1] == "/docs/index.html" and len(docsite.hits) == 3


def assert_secret_absent(secret: str, raw: Path, report: dict[str, Any], logs: str) -> None:
    for path in raw.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in repr(report) and secret not in logs


def test_the_crawl_flow_writes_no_secret_anywhere(
    prefect_harness: None, docsite: DocSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the flow, as `dvc repro crawl` runs it: data/, reports/, the Prefect database
    (run parameters, logs, the report artifact) hold neither the token nor the cookie."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from flows.crawl import crawl_flow
    from tasks.core.params import PathsParams

    docsite.add_files(build_js_site(PAGES))
    docsite.guard = lambda path, h: (
        None if h.get("authorization") == TOKEN and COOKIE in h.get("cookie", "") else 401
    )
    monkeypatch.setenv("DOCS_TOKEN_FOR_TEST", TOKEN)
    monkeypatch.setenv(
        "DOCS_COOKIES_FOR_TEST", str(write_cookies(tmp_path / "c.txt", docsite, COOKIE))
    )
    params = make_params(
        docsite, auth_header_env="DOCS_TOKEN_FOR_TEST", cookies_env="DOCS_COOKIES_FOR_TEST"
    )
    paths = PathsParams(raw=tmp_path / "data" / "raw", reports=tmp_path / "reports")
    report = crawl_flow(paths, params)
    assert report["pages"] == PAGES
    database = Path(str(PREFECT_API_DATABASE_CONNECTION_URL.value()).split("///", 1)[1])
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    files += [tmp_path / "reports" / "crawl.json"]
    stored = [p for p in database.parent.glob(database.name + "*") if p.is_file()]
    assert database in stored
    files += stored
    for path in files:
        data = path.read_bytes()
        assert TOKEN.split()[1].encode() not in data and COOKIE.encode() not in data, path
    assert os.environ["DOCS_TOKEN_FOR_TEST"] == TOKEN
