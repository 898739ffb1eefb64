"""The site's template: blocks that repeat across most pages of a site and are mostly links
(prev/next panels, breadcrumbs, sidebars, footers) are chrome whatever their class names.

A block is known by its key (tag, classes, id) and read as items: each link's text and each run
of text between links, normalised. Learning counts, per key, on how many pages each item occurs
in a link-dense block of that key; the items found on at least `min_share` of the pages are the
key's template, for keys whose words are mostly link text over the whole site. On a page, a
block of such a key is chrome when most of its words are links and half its items are template:
a prev/next panel repeats its labels ("Next:", "Up:") and fixed links ("Contents") around the
page-specific titles it links to. A page's own table of contents or "see also" list repeats
nothing, and a notice repeated on every page is text, not links: both stay.
Everything here is pure and deterministic.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lxml.etree import _Element

BLOCK_TAGS = (
    "div",
    "section",
    "header",
    "footer",
    "aside",
    "nav",
    "table",
    "td",
    "ul",
    "ol",
    "dl",
    "p",
)
WORD_RE = re.compile(r"\w+")
# A template item repeats on three pages at least (and the site has as many): two pages share
# links without any template, as a chapter's table of contents lists its sections' own
# entries, and on a two-page site every block of one page repeats on half of the site.
MIN_PAGES = 3
# "Mostly links": more than half of a block's words are link text, and so are more than half
# of the words of all blocks of its key over the site (what keeps paragraphs out, whose common
# phrases between links repeat on every page).
MIN_LINK_SHARE = 0.5
# A prev/next panel holds three page-specific titles among five or more repeated labels and
# links; a breadcrumb keeps its repeated root links. A page's own link list repeats none.
MIN_TEMPLATE_ITEMS = 0.5


class KeyProfile(NamedTuple):
    """One page's blocks of one key: their words, words in links, and the distinct items of
    those that are mostly links."""

    words: int
    link_words: int
    items: tuple[str, ...]


PageProfile = dict[str, KeyProfile]


def load_profile(data: dict[str, list[Any]]) -> PageProfile:
    """A profile read back from JSON, where each KeyProfile was written as a list."""
    return {key: KeyProfile(int(row[0]), int(row[1]), tuple(row[2])) for key, row in data.items()}


@dataclass(frozen=True)
class SiteTemplate:
    """Per block key, the items that repeat on most pages; empty when nothing was learned."""

    blocks: dict[str, frozenset[str]] = field(default_factory=dict)

    def digest(self) -> str:
        """Changes whenever the learned template does: part of every page's conversion key."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, list[str]]:
        return {key: sorted(items) for key, items in sorted(self.blocks.items())}


def block_key(el: _Element) -> str:
    """Tag, sorted classes and id: what a generator's template gives a block on every page."""
    classes = ".".join(sorted(el.get("class", "").split()))
    element_id = el.get("id", "").strip()
    return el.tag + (f".{classes}" if classes else "") + (f"#{element_id}" if element_id else "")


def normalize_item(text: str) -> str:
    """Lower-cased words only: "Next: " and "« Next" read alike, punctuation runs vanish."""
    return " ".join(WORD_RE.findall(text.lower()))


def is_link(el: _Element) -> bool:
    return el.tag == "a" and el.get("href") is not None


@dataclass(frozen=True)
class Pieces:
    """A subtree read once, in document order: link texts ("a:" and its words) and the words of
    the text between them, each element's span of pieces, and running word counts. Any block's
    items and counts then come from a slice, not from reading it again for each level it nests
    in (an index page nests link lists several levels deep)."""

    parts: list[str]
    spans: dict[_Element, tuple[int, int]]
    words: list[int]  # words in parts[:i]
    linked: list[int]  # words of links in parts[:i]

    def counts(self, el: _Element) -> tuple[int, int]:
        """Words of the element, and of those the words of its links."""
        start, end = self.spans[el]
        return self.words[end] - self.words[start], self.linked[end] - self.linked[start]

    def items(self, el: _Element) -> list[str]:
        """The element's link texts ("a:...") and text runs between links ("t:..."), in order."""
        start, end = self.spans[el]
        return merge_items(self.parts[start:end])


def read_pieces(root: _Element) -> Pieces:
    parts: list[str] = []
    spans: dict[_Element, tuple[int, int]] = {}

    def visit(el: _Element) -> None:
        start = len(parts)
        if el is not root and is_link(el):
            parts.append("a:" + normalize_item(" ".join(el.itertext())))
        else:
            parts.append(normalize_item(el.text or ""))
            for child in el:
                if isinstance(child.tag, str):
                    visit(child)
                parts.append(normalize_item(child.tail or ""))
        spans[el] = (start, len(parts))

    visit(root)
    words, linked = [0], [0]
    for part in parts:
        n = len(part.split()) if part else 0
        words.append(words[-1] + n)
        linked.append(linked[-1] + (n if part.startswith("a:") else 0))
    return Pieces(parts, spans, words, linked)


def merge_items(parts: list[str]) -> list[str]:
    """Pieces to items: each link one item, the words between two links one more."""
    items: list[str] = []
    run: list[str] = []
    for part in parts:
        if part.startswith("a:"):
            if run:
                items.append("t:" + " ".join(run))
                run = []
            if len(part) > 2:
                items.append(part)
        elif part:
            run.append(part)
    if run:
        items.append("t:" + " ".join(run))
    return items


def is_mostly_links(words: int, link_words: int) -> bool:
    return link_words > MIN_LINK_SHARE * words


def profile_body(body: _Element) -> PageProfile:
    """Per block key on one page: words, words in links, and the items of link blocks."""
    words: Counter[str] = Counter()
    linked: Counter[str] = Counter()
    items: dict[str, set[str]] = {}
    pieces = read_pieces(body)
    for el in body.iter(*BLOCK_TAGS):
        n, n_linked = pieces.counts(el)
        if not n:
            continue
        key = block_key(el)
        words[key] += n
        linked[key] += n_linked
        if is_mostly_links(n, n_linked):
            items.setdefault(key, set()).update(pieces.items(el))
    return {
        key: KeyProfile(words[key], linked[key], tuple(sorted(items.get(key, ()))))
        for key in sorted(words)
    }


def learn_template(profiles: Iterable[PageProfile], min_share: float) -> SiteTemplate:
    """Items on at least `min_share` of the pages, per key whose words are mostly links; pages
    with nothing to profile (empty, unparseable, redirects) do not count."""
    pages = [profile for profile in profiles if profile]
    if len(pages) < MIN_PAGES:
        return SiteTemplate()
    need = max(MIN_PAGES, math.ceil(min_share * len(pages)))
    words: Counter[str] = Counter()
    linked: Counter[str] = Counter()
    seen: Counter[tuple[str, str]] = Counter()
    for page in pages:
        for key, profile in page.items():
            words[key] += profile.words
            linked[key] += profile.link_words
            seen.update((key, item) for item in profile.items)
    blocks: dict[str, set[str]] = {}
    for (key, item), pages_seen in seen.items():
        if pages_seen >= need and is_mostly_links(words[key], linked[key]):
            blocks.setdefault(key, set()).add(item)
    return SiteTemplate({key: frozenset(items) for key, items in blocks.items()})


def is_template_block(el: _Element, template_items: frozenset[str]) -> bool:
    """Mostly links, and half or more items that the site repeats in blocks of this key."""
    pieces = read_pieces(el)
    found = pieces.items(el)
    repeated = sum(1 for item in found if item in template_items)
    return is_mostly_links(*pieces.counts(el)) and repeated >= MIN_TEMPLATE_ITEMS * len(found)


def find_template_blocks(body: _Element, template: SiteTemplate) -> list[_Element]:
    """The outermost blocks of the page that belong to the site's template."""
    found: list[_Element] = []
    for el in body.iter(*BLOCK_TAGS):
        items = template.blocks.get(block_key(el))
        if not items or any(a in found for a in el.iterancestors()):
            continue
        if is_template_block(el, items):
            found.append(el)
    return found


def strip_template(body: _Element, template: SiteTemplate) -> int:
    """Remove the site's template blocks in place; returns how many were removed."""
    if not template.blocks:
        return 0
    doomed = find_template_blocks(body, template)
    for el in doomed:
        el.drop_tree()
    return len(doomed)
