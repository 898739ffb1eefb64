"""What the crawler relies on from protego, its robots.txt parser, pinned so an upgrade that
changes it fails here rather than in a crawl."""

from __future__ import annotations

import pytest

from tasks.crawl.robots import ALLOW_ALL, parse_robots

UA = "docs2model-crawler/0.1 (+https://docs.test/crawler-info)"


@pytest.mark.parametrize(
    ("value", "delay"),
    [("0.15", 0.15), ("2", 2.0), ("0", None), ("-1", None), ("inf", None), ("soon", None)],
)
def test_crawl_delay_keeps_fractions_and_drops_what_sets_no_limit(
    value: str, delay: float | None
) -> None:
    assert parse_robots(f"User-agent: *\nCrawl-delay: {value}\n", UA).crawl_delay == delay


def test_group_is_chosen_by_product_token_at_a_word_boundary() -> None:
    text = (
        "User-agent: *\nDisallow: /star/\n\n"
        "User-agent: crawler\nDisallow: /suffix/\n\n"
        "User-agent: crawler-info\nDisallow: /from-our-url/\n\n"
        "User-agent: DOCS2MODEL-Crawler\nDisallow: /ours/\n"
    )
    robots = parse_robots(text, UA)
    assert not robots.allows("http://d.test/ours/a.html")
    for path in ("/star/", "/suffix/", "/from-our-url/"):
        assert robots.allows(f"http://d.test{path}a.html"), path
    # without a group of our own, a group named after the end of our token is not ours either
    robots = parse_robots(
        "User-agent: *\nDisallow: /star/\n\nUser-agent: crawler\nDisallow: /\n", UA
    )
    assert robots.allows("http://d.test/a.html") and not robots.allows("http://d.test/star/a")


def test_groups_for_the_same_agent_are_merged() -> None:
    text = "User-agent: docs2model-crawler\nDisallow: /a/\n\nUser-agent: docs2model-crawler\n"
    robots = parse_robots(text + "Disallow: /b/\n", UA)
    assert not robots.allows("http://d.test/a/x") and not robots.allows("http://d.test/b/x")


def test_percent_encodings_compare_equal() -> None:
    robots = parse_robots("User-agent: *\nDisallow: /a%7Eb/\nDisallow: /caf%C3%A9\n", UA)
    assert not robots.allows("http://d.test/a~b/page.html")
    assert not robots.allows("http://d.test/café/page.html")
    assert robots.allows("http://d.test/a-b/page.html")


def test_sitemaps_are_listed_whatever_the_group() -> None:
    text = "Sitemap: http://d.test/one.xml\nUser-agent: other\nSitemap: http://d.test/two.xml\n"
    assert parse_robots(text, UA).sitemaps == ["http://d.test/one.xml", "http://d.test/two.xml"]


def test_no_robots_txt_allows_everything() -> None:
    assert ALLOW_ALL.allows("http://d.test/anything?x=1")
    assert ALLOW_ALL.crawl_delay is None and ALLOW_ALL.sitemaps == []
    assert parse_robots("", UA).allows("http://d.test/")
