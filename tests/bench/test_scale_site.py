"""The scale bench's generated site: the size asked for, no two pages equal, copies far from
near-duplicates, every page reachable by links from the root; and its stand-in outputs read
back by the stages' own readers."""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tasks.bench.scale_outputs import write_markdown_stand_ins, write_stand_ins
from tasks.bench.scale_site import (
    FRONT_PAGE,
    Source,
    order_by_links,
    plan_layout,
    render_sitemaps,
    write_site,
)
from tasks.core.documents import read_pages
from tasks.datasets.dedup import estimate_similarity
from tasks.markdown.build import read_manifest_pages

BASE = "http://127.0.0.1:8830/"
WORDS = [
    "table",
    "index",
    "vacuum",
    "replica",
    "backup",
    "server",
    "column",
    "tuple",
    "planner",
    "statistics",
    "checkpoint",
    "transaction",
    "snapshot",
    "buffer",
    "cluster",
    "schema",
    "trigger",
    "function",
    "cursor",
    "sequence",
    "partition",
    "tablespace",
    "connection",
    "session",
    "analyze",
    "restore",
    "archive",
    "segment",
    "timeline",
    "standby",
]
# A small manual: a front page, two chapters, three sections; section-b is linked only from
# chapter-2, so a partial copy must hold chapter-2 before it.
LINKS = {
    "index.html": ["chapter-1.html", "chapter-2.html"],
    "chapter-1.html": ["section-a.html", "index.html"],
    "chapter-2.html": ["section-b.html", "section-c.html#part", "index.html"],
    "section-a.html": ["section-b.html", "chapter-1.html"],
    "section-b.html": ["chapter-2.html"],
    "section-c.html": ["chapter-2.html", "https://example.com/elsewhere.html"],
}


def render_source_page(name: str, links: list[str], seed: int) -> str:
    words = " ".join(WORDS[(seed * 7 + i * i) % len(WORDS)] for i in range(300))
    anchors = "".join(f'<a href="{href}">{href} &amp; more</a> ' for href in links)
    return (
        '<html><head><meta charset="utf-8"><title>Chapter on ' + name + " version 15</title>"
        f"</head><body><h1>{name}</h1><p>{words} 42 tables</p><div>{anchors}</div>"
        "</body></html>"
    )


@pytest.fixture
def source_site(tmp_path: Path) -> Path:
    site = tmp_path / "source"
    site.mkdir()
    for i, (name, links) in enumerate(LINKS.items()):
        (site / name).write_text(render_source_page(name, links, i), "utf-8")
    return site


def crawl_links(site: Path) -> set[str]:
    """Paths reached from the root index.html by following <a href> within the site."""
    seen, queue = {FRONT_PAGE}, deque([FRONT_PAGE])
    while queue:
        path = queue.popleft()
        for href in re.findall(r'<a [^>]*href="([^"#]*)', (site / path).read_text("utf-8")):
            url = urljoin(BASE + path, href)
            if url.startswith(BASE) and (target := url.removeprefix(BASE)) not in seen:
                assert (site / target).is_file(), f"{path} links to missing {target}"
                seen.add(target)
                queue.append(target)
    return seen


@pytest.mark.parametrize("pages", [4, 6, 15])
def test_the_site_has_the_pages_asked_for_all_distinct_and_all_linked(
    source_site: Path, tmp_path: Path, pages: int
) -> None:
    out = tmp_path / "site"
    layout = write_site(source_site, out, pages, BASE)
    written = sorted(p.relative_to(out).as_posix() for p in out.glob("c*/*.html"))
    assert layout.pages == len(written) == pages
    bodies = [(out / p).read_bytes() for p in written]
    assert len(set(bodies)) == pages
    assert crawl_links(out) == {FRONT_PAGE, *written}
    sitemap = (out / "sitemap.xml").read_text("utf-8")
    assert sorted(re.findall(r"<loc>(.*?)</loc>", sitemap)) == sorted(
        BASE + p for p in [FRONT_PAGE, *written]
    )


def test_copies_read_alike_but_are_no_near_duplicates(source_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    write_site(source_site, out, 12, BASE)
    first = (out / "c00000/chapter-1.html").read_text("utf-8")
    second = (out / "c00001/chapter-1.html").read_text("utf-8")
    assert re.search(r"<title>\w+ on [^<]* 16 \(copy 1\)</title>", second)  # 15 + copy 1
    assert 'href="section-a.html"' in second  # links and markup untouched
    assert "&amp; more" in second  # entities too
    assert first.count(" ") == second.count(" ")  # words swapped one for one
    # The datasets stage drops pages at 0.8 estimated Jaccard of word 5-grams.
    assert estimate_similarity(first, second) < 0.3


def test_a_partial_copy_links_its_missing_pages_into_copy_zero(
    source_site: Path, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    write_site(source_site, out, 8, BASE)  # copy 1 holds index and chapter-1 only
    assert sorted(p.name for p in (out / "c00001").iterdir()) == ["chapter-1.html", "index.html"]
    front = (out / "c00001/index.html").read_text("utf-8")
    assert 'href="../c00000/chapter-2.html"' in front
    assert 'href="../c00000/index.html"' in front  # the previous copy


def test_order_by_links_puts_every_page_after_a_page_linking_to_it(source_site: Path) -> None:
    order = order_by_links(Source.read(source_site).pages)
    assert order[0] == FRONT_PAGE
    assert order.index("chapter-2.html") < order.index("section-b.html")
    assert len(plan_layout(order, 3).copies[0]) == 3


def test_many_urls_go_to_a_sitemap_index() -> None:
    files = render_sitemaps([f"{BASE}{i}.html" for i in range(50_001)], BASE)
    assert sorted(files) == ["sitemap-0.xml", "sitemap-1.xml", "sitemap.xml"]
    assert f"<loc>{BASE}sitemap-1.xml</loc>" in files["sitemap.xml"]


def test_stand_in_outputs_read_back_as_the_stages_outputs(
    source_site: Path, tmp_path: Path
) -> None:
    source = Source.read(source_site)
    layout = plan_layout(order_by_links(source.pages), 9)
    raw, md = tmp_path / "raw", tmp_path / "md"
    written = write_stand_ins(source, layout, BASE, raw, md)
    assert written.raw_pages == written.markdown_pages == 10  # the root index too
    entries = read_manifest_pages(raw)
    assert [e.url for e in entries][:2] == [BASE + FRONT_PAGE, BASE + "c00000/index.html"]
    assert all((raw / (e.file or "")).is_file() for e in entries)
    pages = read_pages(md)
    assert len(pages) == 10 and pages[1][0].title.endswith(" 15 (copy 0)")


def test_markdown_stand_ins_from_stored_pages_match_the_generators(
    source_site: Path, tmp_path: Path
) -> None:
    """What a real crawl stored (here: the generator's data/raw) gives the same data/markdown
    as the generator writes beside it, file for file."""
    source = Source.read(source_site)
    layout = plan_layout(order_by_links(source.pages), 9)
    raw, md = tmp_path / "raw", tmp_path / "md"
    write_stand_ins(source, layout, BASE, raw, md)
    assert write_markdown_stand_ins(raw, tmp_path / "md2") == 10
    files = sorted(p.name for p in md.iterdir())
    assert files == sorted(p.name for p in (tmp_path / "md2").iterdir()) and len(files) == 15
    for name in files:
        assert (md / name).read_bytes() == (tmp_path / "md2" / name).read_bytes(), name
