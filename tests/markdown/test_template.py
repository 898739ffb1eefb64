"""The learned site template on a small site whose chrome carries class names no rule knows:
a prev/next/up panel (top and bottom), a sidebar and a footer, all plain divs. The template
removes them; the pages' own content, their own link lists and a notice repeated on every
page stay. A changed template converts unchanged pages again."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tasks.core.documents import parse_document
from tasks.core.params import CrawlParams, MarkdownParams
from tasks.core.procs import free_port
from tasks.core.records import ManifestEntry, PageStatus
from tasks.crawl.crawler import crawl_site
from tasks.markdown.build import build_markdown, conversion_key, fingerprint_template
from tasks.markdown.convert import convert_page
from tasks.markdown.extract import profile_page
from tasks.markdown.template import SiteTemplate, learn_template
from tasks.services.local import serve_directory

SITE = Path(__file__).parents[1] / "fixtures" / "sites" / "plain-panels"
PAGES = ("index.html", "install.html", "usage.html", "reference.html")
PARAMS = MarkdownParams(workers=1)
# the chrome of every page as it reads in Markdown without the template; and the panel's
# labels, of which the first and last pages lack one or two
CHROME = ("[Contents](", "[Overview](", "[Privacy policy](")
PANEL = ("Next: [", "Previous: [", "Up: [")


def learn(pages: tuple[str, ...] = PAGES) -> SiteTemplate:
    profiles = [profile_page((SITE / page).read_bytes(), PARAMS) for page in pages]
    return learn_template(profiles, PARAMS.template_min_share)


def convert(page: str, template: SiteTemplate | None) -> str:
    html = (SITE / page).read_bytes()
    return convert_page(html, f"https://widget.example/{page}", PARAMS, template=template).markdown


@pytest.mark.parametrize("page", PAGES)
def test_plain_div_chrome_leaks_without_the_template_and_goes_with_it(page: str) -> None:
    before = convert(page, None)
    assert all(chrome in before for chrome in CHROME)
    assert any(label in before for label in PANEL)

    after = convert(page, learn())
    assert not [chrome for chrome in CHROME + PANEL if chrome in after]
    assert after.startswith("# ")  # the page now opens on its own title


def test_template_holds_the_chrome_blocks_only() -> None:
    template = learn()
    assert {"div.kz-strip", "div.kz-col", "div.kz-end"} <= set(template.blocks)
    assert {"t:next", "t:previous", "t:up", "a:contents"} <= template.blocks["div.kz-strip"]
    # the content wrapper, the notice and the pages' own lists are not the site's template
    assert not {"div.kz-page", "p.kz-note", "ul.kz-list"} & set(template.blocks)


def test_content_own_links_and_a_repeated_notice_are_kept() -> None:
    template = learn()
    index, install, usage = (convert(page, template) for page in PAGES[:3])
    # a repeated notice is prose, not navigation: it stays (deduplication is not chrome removal)
    notice = "Widget is free software: you can redistribute it"
    assert all(notice in page for page in (index, install, usage))
    # each page's own link list, even the index's list of the very pages the panels link to
    assert "- [Installing Widget](https://widget.example/install.html): getting Widget" in index
    assert "- [Building from source](https://widget.example/install.html#from-source)" in install
    assert (
        "```\ntar xf widget-2.1.tar.gz\ncd widget-2.1 && ./configure && make install\n```"
        in install
    )
    assert "see [Command Reference](https://widget.example/reference.html)." in usage


def test_a_site_too_small_to_repeat_anything_learns_no_template() -> None:
    assert learn(PAGES[:2]).blocks == {}
    assert convert("install.html", learn(PAGES[:2])) == convert("install.html", None)


def test_redirect_stubs_do_not_outvote_the_pages() -> None:
    stub = (
        b'<html><head><meta http-equiv="Refresh" content="0; url=usage.html#x"></head>'
        b'<body><p>The node you are looking for is at <a href="usage.html#x">x</a>.</p></body>'
        b"</html>"
    )
    pages = [profile_page((SITE / page).read_bytes(), PARAMS) for page in PAGES]
    stubs = [profile_page(stub, PARAMS)] * 3 * len(PAGES)
    assert stubs[0] == {}
    learned = learn_template(pages + stubs, PARAMS.template_min_share)
    assert learned == learn()


def test_a_page_key_changes_with_the_template_only() -> None:
    entry = ManifestEntry(id="p", url="https://widget.example/", status=PageStatus.OK, sha256="0")
    learned = conversion_key(entry, fingerprint_template("converter", learn()))
    assert learned == conversion_key(entry, fingerprint_template("converter", learn()))
    assert learned != conversion_key(entry, fingerprint_template("converter", SiteTemplate()))


def crawl(site: Path, raw: Path, port: int) -> None:
    with serve_directory(site, port=port) as base:
        params = CrawlParams(start_urls=[base + "index.html"], requests_per_second=None)
        crawl_site(params, raw, show_progress=False)


def read_bodies(md: Path) -> dict[str, str]:
    docs = (parse_document(path.read_text("utf-8")) for path in md.glob("*.md"))
    return {Path(doc.url).name: body for doc, body in docs}


def test_a_changed_template_converts_unchanged_pages_again(tmp_path: Path) -> None:
    site, raw, md, port = tmp_path / "site", tmp_path / "raw", tmp_path / "md", free_port()
    shutil.copytree(SITE, site)
    crawl(site, raw, port)
    first = build_markdown(raw, md, PARAMS, tmp_path / "tokenizers")
    assert first["converted"] == 4 and first["template"]["pages_stripped"] == 4
    assert not any("Previous: [" in body for body in read_bodies(md).values())

    again = build_markdown(raw, md, PARAMS, tmp_path / "tokenizers")
    assert (again["converted"], again["template"]["pages_profiled"]) == (0, 0)

    # three pages lose their panels: the one left is no longer the site's template
    for page in PAGES[1:]:
        html = (site / page).read_text("utf-8")
        (site / page).write_text(re.sub(r'<div class="kz-strip">.*?</div>', "", html, flags=re.S))
    crawl(site, raw, port)
    changed = build_markdown(raw, md, PARAMS, tmp_path / "tokenizers")
    assert changed["template"]["pages_profiled"] == 3
    assert changed["converted"] == 4  # index.html is unchanged, but its template is not
    assert "Next: [Installing Widget]" in read_bodies(md)["index.html"]
    for key in ("div.kz-col", "div.kz-end"):
        assert key in changed["template"]["block_keys"]
