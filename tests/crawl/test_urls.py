"""URL normalisation, scope and trap guards."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from tasks.core.params import CrawlParams
from tasks.crawl.urls import (
    extract_skip_reason,
    extract_trap_reason,
    is_in_scope,
    looks_like_html,
    normalize_hash_route,
    normalize_scope,
    normalize_url,
    parse_url_pattern,
)

PARAMS = CrawlParams(start_urls=["http://docs.test/guide/index.html"])


def test_normalize_drops_fragment_default_port_and_lowercases_host() -> None:
    assert (
        normalize_url("HTTP://Docs.Test:80/Guide/a.html#intro") == "http://docs.test/Guide/a.html"
    )
    assert normalize_url("https://docs.test:443/") == "https://docs.test/"
    assert normalize_url("https://docs.test:8443/x") == "https://docs.test:8443/x"


def test_normalize_resolves_dot_segments_relative_and_absolute() -> None:
    base = "http://docs.test/guide/part/page.html"
    assert normalize_url("../other.html", base) == "http://docs.test/guide/other.html"
    assert normalize_url("./sub/", base) == "http://docs.test/guide/part/sub/"
    assert normalize_url("http://docs.test/a/./b/../c.html") == "http://docs.test/a/c.html"
    assert normalize_url("http://docs.test/../../x") == "http://docs.test/x"


def test_normalize_sorts_query_strips_empty_query_keeps_trailing_slash() -> None:
    assert normalize_url("http://docs.test/s?b=2&a=1&&") == "http://docs.test/s?a=1&b=2"
    assert normalize_url("http://docs.test/s?") == "http://docs.test/s"
    assert normalize_url("http://docs.test/dir/") == "http://docs.test/dir/"
    assert normalize_url("http://docs.test/dir") == "http://docs.test/dir"
    assert normalize_url("http://docs.test") == "http://docs.test/"


def test_normalize_rejects_other_schemes_and_bad_ports() -> None:
    assert normalize_url("mailto:someone@docs.test") is None
    assert normalize_url("ftp://docs.test/file") is None
    assert normalize_url("javascript:void(0)", "http://docs.test/") is None
    assert normalize_url("http://docs.test:notaport/") is None


url_parts = st.builds(
    lambda scheme, host, port, segs, query, frag: (
        f"{scheme}://{host}{port}/{'/'.join(segs)}{query}{frag}"
    ),
    st.sampled_from(["http", "HTTPS", "Http"]),
    st.sampled_from(["docs.test", "DOCS.Test", "127.0.0.1", "[::1]"]),
    st.sampled_from(["", ":80", ":443", ":8080"]),
    st.lists(st.sampled_from(["a", "B", ".", "..", "", "x.html", "%2E", "~u", "a b"]), max_size=6),
    st.sampled_from(["", "?", "?b=1&a=2", "?a=&&c", "?x=%20y"]),
    st.sampled_from(["", "#", "#top"]),
)


@given(url_parts)
def test_normalize_is_idempotent(url: str) -> None:
    once = normalize_url(url)
    assert once is not None
    assert normalize_url(once) == once


@given(st.text(max_size=40), st.sampled_from(["http://docs.test/a/b.html", "https://x.test/"]))
def test_normalize_of_any_href_is_idempotent_or_none(href: str, base: str) -> None:
    once = normalize_url(href, base)
    if once is not None:
        assert normalize_url(once) == once
        assert "#" not in once


def test_default_scope_is_start_directory() -> None:
    scope = normalize_scope(PARAMS.scope)
    assert scope == ["http://docs.test/guide/"]
    assert is_in_scope("http://docs.test/guide/x/y.html", scope)
    assert not is_in_scope("http://docs.test/blog/", scope)
    assert not is_in_scope("http://other.test/guide/", scope)


def test_skip_reasons() -> None:
    scope = normalize_scope(PARAMS.scope)
    excludes = [re.compile(r"/private/")]
    assert extract_skip_reason("http://docs.test/guide/a.html", scope, excludes, PARAMS) is None
    assert extract_skip_reason("http://docs.test/out.html", scope, excludes, PARAMS) == (
        "out_of_scope"
    )
    assert extract_skip_reason("http://docs.test/guide/private/a", scope, excludes, PARAMS) == (
        "excluded"
    )
    assert extract_skip_reason("http://docs.test/guide/logo.PNG", scope, excludes, PARAMS) == (
        "not_html_url"
    )


def test_html_looking_urls() -> None:
    assert looks_like_html("http://d.test/a/")
    assert looks_like_html("http://d.test/a/page")
    assert looks_like_html("http://d.test/a/page.html?x=1")
    assert not looks_like_html("http://d.test/a/manual.pdf")
    assert not looks_like_html("http://d.test/static/site.css")


def test_trap_guards() -> None:
    assert extract_trap_reason("http://d.test/guide/" + "x" * 600, PARAMS) == "trap_url_too_long"
    deep = "http://d.test/" + "/".join(f"s{i}" for i in range(13)) + "/"
    assert extract_trap_reason(deep, PARAMS) == "trap_too_many_segments"
    assert extract_trap_reason("http://d.test/a/a/a/a/", PARAMS) == "trap_repeated_segment"
    assert extract_trap_reason("http://d.test/a/a/a/", PARAMS) is None
    assert extract_trap_reason("http://d.test/cal/2024/01/", PARAMS) is None


def test_url_patterns_abstract_query_values_and_path_digits_only() -> None:
    assert parse_url_pattern("http://d.test:8080/cal?d=2024-01-01") == "http://d.test:8080/cal?d=*"
    assert parse_url_pattern("http://d.test/cal?d=1&view=week") == "http://d.test/cal?d=*&view=*"
    assert parse_url_pattern("http://d.test/cal/2024/01/") == "http://d.test/cal/{n}/{n}/"
    assert parse_url_pattern("http://d.test/release-15-1.html") == (
        "http://d.test/release-{n}-{n}.html"
    )
    assert parse_url_pattern("http://d.test/print?all") == "http://d.test/print?all"
    # Nothing to abstract (the port's digits are not the path's): a pattern of one URL.
    assert parse_url_pattern("http://d.test:8080/guide/index.html") is None


def test_hash_routes_keep_their_route_and_anchors_are_not_routes() -> None:
    base = "http://docs.test/app/index.html"
    assert normalize_hash_route("#/guide", base) == base + "#/guide"
    assert normalize_hash_route("#!/guide/x", base + "#/other") == base + "#!/guide/x"
    assert normalize_hash_route("other.html#/a", base) == "http://docs.test/app/other.html#/a"
    assert normalize_hash_route("#intro", base) is None
    assert normalize_hash_route("other.html", base) is None
