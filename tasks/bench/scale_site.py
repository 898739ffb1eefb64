"""A docs site of any size built from a real one: copies of its pages, each copy varied so that
no two pages are equal and no copy is a near-duplicate of another.

Copy k of the source lives in c<k>/ (the source's relative links then stay inside the copy);
the root index.html links to every copy's front page, each front page to the copies before and
after it, and sitemap.xml lists every page. In copy k, a share of the words of the page text
(never markup) is swapped for other words of the site, chosen per copy, numbers are shifted by
k and every title says which copy it is: the pages read like the source, stay distinct byte for
byte, and differ in enough word 5-grams that the datasets stage's MinHash dedup keeps them.
The last copy may be partial: it holds the first pages in link order from its front page, so
each is linked from an earlier one, and its links to pages it lacks point into copy 0.

Usage: python -m tasks.bench.scale_site SOURCE_DIR OUT_DIR --pages N --base-url URL
"""

from __future__ import annotations

import argparse
import html
import random
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Markup the variation never touches: comments, tags (attributes and links included), entities.
MARKUP = re.compile(r"(<!--.*?-->|<[^>]*>|&#?\w+;)", re.DOTALL)
WORD = re.compile(r"(\w+)")
HREF = re.compile(r'href="([^"#]*)((?:#[^"]*)?)"')
# A word is swapped with this chance per copy: two copies then share about 8% of their word
# 5-grams, far below the datasets stage's near-duplicate threshold (0.8 estimated Jaccard).
SWAP_SHARE = 0.4
# Words this short ("a", "the", "of") keep the text readable and are never swapped.
MIN_SWAP_LETTERS = 4
# The sitemap protocol's limit of URLs per file; an index lists the files.
SITEMAP_URLS = 50_000
FRONT_PAGE = "index.html"


@dataclass(frozen=True)
class SourcePage:
    """A source page split once into markup and text tokens, joined again per copy."""

    name: str
    tokens: tuple[str, ...]
    links: tuple[str, ...]  # the source pages it links to, in order


@dataclass(frozen=True)
class SiteLayout:
    """Which source pages each copy holds, in the order they are written."""

    copies: list[list[str]]

    @property
    def pages(self) -> int:
        return sum(len(names) for names in self.copies)


def copy_folder(copy: int) -> str:
    return f"c{copy:05d}"


def split_tokens(text: str) -> tuple[str, ...]:
    """Markup tokens as they are; text split into words and what lies between them."""
    tokens: list[str] = []
    for i, part in enumerate(MARKUP.split(text)):
        tokens.extend([part] if i % 2 else (t for t in WORD.split(part) if t))
    return tuple(tokens)


def read_source(site: Path) -> dict[str, SourcePage]:
    """Every HTML page of the source site, with its links to other pages of it."""
    texts = {p.name: p.read_text("utf-8") for p in sorted(site.glob("*.html"))}
    pages = {}
    for name, text in texts.items():
        targets = (m.group(1) for m in HREF.finditer(text))
        links = tuple(dict.fromkeys(t for t in targets if t in texts and t != name))
        pages[name] = SourcePage(name, split_tokens(text), links)
    if FRONT_PAGE not in pages:
        raise FileNotFoundError(f"{site} has no {FRONT_PAGE} to start the copies from")
    return pages


def order_by_links(pages: dict[str, SourcePage]) -> list[str]:
    """Breadth-first from the front page, then pages no link reaches: every page's first linker
    comes before it, so any prefix of the order is a site linked from its front page."""
    order, seen, queue = [], {FRONT_PAGE}, deque([FRONT_PAGE])
    while queue:
        name = queue.popleft()
        order.append(name)
        for target in pages[name].links:
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return order + sorted(set(pages) - seen)


def plan_layout(order: list[str], pages: int) -> SiteLayout:
    """Whole copies of the source, then the first pages (in link order) of one more."""
    if pages < 1:
        raise ValueError(f"pages must be at least 1, got {pages}")
    whole, rest = divmod(pages, len(order))
    copies = [list(order) for _ in range(whole)]
    return SiteLayout(copies + ([order[:rest]] if rest else []))


def collect_words(pages: Iterable[SourcePage]) -> list[str]:
    """The site's own words (lower-cased, long enough to swap), the pool substitutes come from."""
    words = {t.lower() for p in pages for t in p.tokens if t.isalpha() and t.isascii()}
    return sorted(w for w in words if len(w) >= MIN_SWAP_LETTERS)


def match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[0].isupper() else word


def draw_substitutions(vocabulary: list[str], tokens: Iterable[str], copy: int) -> dict[str, str]:
    """Copy `copy`'s swaps: token → replacement for every word and number it changes. Drawn per
    lower-cased word from a generator seeded by the copy, so a rerun writes the same site."""
    rng = random.Random(copy)
    swaps = {
        w: vocabulary[rng.randrange(len(vocabulary))]
        for w in vocabulary
        if rng.random() < SWAP_SHARE
    }
    out: dict[str, str] = {}
    for token in tokens:
        if token.isdigit():
            if copy:
                out[token] = str(int(token) + copy)
        elif token.isalpha() and (new := swaps.get(token.lower())):
            out[token] = match_case(new, token)
    return out


def redirect_missing(token: str, present: set[str], copy_zero_whole: bool) -> str:
    """A link of a partial copy to a page it lacks: into copy 0, or no link when copy 0 is
    partial too (then nothing links to the missing page, and nothing breaks)."""

    def fix(m: re.Match[str]) -> str:
        target, fragment = m.group(1), m.group(2)
        if not target.endswith(".html") or "/" in target or target in present:
            return m.group(0)
        if copy_zero_whole:
            return f'href="../{copy_folder(0)}/{target}{fragment}"'
        return f'data-missing="{target}"'

    return HREF.sub(fix, token) if "href=" in token else token


def render_page(page: SourcePage, swaps: dict[str, str], copy: int, extra: str = "") -> str:
    """The page in copy `copy`: words swapped, the title marked, `extra` markup ending the body."""
    tokens = list(map(swaps.get, page.tokens, page.tokens))
    if "</title>" in tokens:
        tokens.insert(tokens.index("</title>"), f" (copy {copy})")
    if extra and "</body>" in tokens:
        tokens.insert(tokens.index("</body>"), extra)
    return "".join(tokens)


def render_copy_links(copy: int, copies: int) -> str:
    """On a copy's front page: links to the copies before and after it."""
    links = [
        f'<a href="../{copy_folder(k)}/{FRONT_PAGE}">copy {k}</a>'
        for k in (copy - 1, copy + 1)
        if 0 <= k < copies
    ]
    return f'<p class="copies">{" ".join(links)}</p>' if links else ""


def render_root(copies: int) -> str:
    items = "".join(
        f'<li><a href="{copy_folder(k)}/{FRONT_PAGE}">copy {k}</a></li>' for k in range(copies)
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Documentation copies</title>'
        f"</head><body><h1>Documentation copies</h1><ul>{items}</ul></body></html>\n"
    )


def render_sitemaps(urls: list[str], base_url: str) -> dict[str, str]:
    """sitemap.xml (an index when there are more URLs than one file may list) and its parts."""
    head = '<?xml version="1.0" encoding="UTF-8"?>\n'
    ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
    parts = [urls[i : i + SITEMAP_URLS] for i in range(0, len(urls), SITEMAP_URLS)]
    files = {
        f"sitemap-{i}.xml": head
        + f"<urlset {ns}>"
        + "".join(f"<url><loc>{html.escape(u)}</loc></url>" for u in part)
        + "</urlset>\n"
        for i, part in enumerate(parts)
    }
    if len(files) == 1:
        return {"sitemap.xml": files.pop("sitemap-0.xml")}
    listed = "".join(f"<sitemap><loc>{base_url}{name}</loc></sitemap>" for name in files)
    return files | {"sitemap.xml": f"{head}<sitemapindex {ns}>{listed}</sitemapindex>\n"}


@dataclass(frozen=True)
class Source:
    """The source site read once: its pages, the words substitutes come from, its tokens."""

    pages: dict[str, SourcePage]
    vocabulary: list[str]
    tokens: list[str]  # distinct, sorted: what each copy draws its swaps over

    @classmethod
    def read(cls, site: Path) -> Source:
        pages = read_source(site)
        tokens = sorted({t for p in pages.values() for t in p.tokens})
        return cls(pages, collect_words(pages.values()), tokens)


def render_copy(copy: int, source: Source, layout: SiteLayout) -> Iterator[tuple[str, str]]:
    """Copy `copy`'s pages: (path in the site, HTML)."""
    names = layout.copies[copy]
    swaps = draw_substitutions(source.vocabulary, source.tokens, copy)
    present = set(names)
    if len(present) < len(source.pages):  # a partial copy: its links to missing pages redirected
        whole = len(layout.copies[0]) == len(source.pages)
        swaps |= {t: redirect_missing(t, present, whole) for t in source.tokens if "href=" in t}
    links = render_copy_links(copy, len(layout.copies))
    for name in names:
        extra = links if name == FRONT_PAGE else ""
        yield f"{copy_folder(copy)}/{name}", render_page(source.pages[name], swaps, copy, extra)


def render_site(source: Source, layout: SiteLayout) -> Iterator[tuple[str, str]]:
    """Every page of the site, the root index first, then the copies in order."""
    yield FRONT_PAGE, render_root(len(layout.copies))
    for copy in range(len(layout.copies)):
        yield from render_copy(copy, source, layout)


def write_site(source_dir: Path, out: Path, pages: int, base_url: str) -> SiteLayout:
    """Write a site of `pages` pages (plus the root index.html and sitemaps) into `out`."""
    source = Source.read(source_dir)
    layout = plan_layout(order_by_links(source.pages), pages)
    urls = []
    for path, text in render_site(source, layout):
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text, "utf-8")
        urls.append(base_url + path)
    for name, text in render_sitemaps(urls, base_url).items():
        (out / name).write_text(text, "utf-8")
    return layout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--base-url", default="http://127.0.0.1:8830/")
    args = parser.parse_args(argv)
    layout = write_site(args.source, args.out, args.pages, args.base_url)
    print(f"{layout.pages} pages in {len(layout.copies)} copies under {args.out}")


if __name__ == "__main__":
    main()
