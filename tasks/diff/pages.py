"""Pages of two versions compared by page id (the hash of the canonical URL): added, removed,
changed (headings and a word-level change size), unchanged, and moved (a new URL for the same
text, matched by the hash of the Markdown body)."""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]
HEADING_RE = re.compile(r"^#{1,6} +(.+?)\s*#*\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PageRef:
    id: str
    url: str
    title: str


@dataclass(frozen=True)
class PageChange:
    id: str
    url: str
    title: str
    old_title: str | None  # when the title changed
    headings_added: list[str]
    headings_removed: list[str]
    words_before: int
    words_after: int
    words_added: int
    words_removed: int
    change: float  # share of the longer version's words that differ


@dataclass(frozen=True)
class MovedPage:
    old_id: str
    new_id: str
    old_url: str
    new_url: str
    title: str


@dataclass
class PageSplit:
    """Page ids by what their file hashes say: only `differing` pages need their bodies read."""

    added: list[str]
    removed: list[str]
    differing: list[str]
    same: list[str]


@dataclass
class PageDiff:
    added: list[PageRef] = field(default_factory=list)
    removed: list[PageRef] = field(default_factory=list)
    changed: list[PageChange] = field(default_factory=list)
    moved: list[MovedPage] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def status_by_id(self) -> dict[str, str]:
        """Each page id of either version: added, removed, changed, unchanged, or for a moved
        page, moved away (its old id) and moved here (its new id)."""
        status = {p.id: "added" for p in self.added} | {p.id: "removed" for p in self.removed}
        status |= {p.id: "changed" for p in self.changed}
        status |= {i: "unchanged" for i in self.unchanged}
        for move in self.moved:
            status[move.old_id], status[move.new_id] = "moved away", "moved here"
        return status


def index_pages(pages: Sequence[Row]) -> dict[str, Row]:
    return {str(row["id"]): row for row in pages}


def to_ref(row: Row) -> PageRef:
    return PageRef(str(row["id"]), str(row.get("url", "")), str(row.get("title", "")))


def split_pages(
    a: Mapping[str, Row],
    b: Mapping[str, Row],
    a_hashes: Mapping[str, str],
    b_hashes: Mapping[str, str],
) -> PageSplit:
    """Ids in reading order (B's, then A's removed ones)."""
    both = [i for i in b if i in a]
    return PageSplit(
        added=[i for i in b if i not in a],
        removed=[i for i in a if i not in b],
        differing=[i for i in both if not a_hashes.get(i) or a_hashes.get(i) != b_hashes.get(i)],
        same=[i for i in both if a_hashes.get(i) and a_hashes.get(i) == b_hashes.get(i)],
    )


def hash_body(body: str) -> str:
    return hashlib.sha256(body.strip().encode("utf-8")).hexdigest()


def match_moved(
    removed: Sequence[str],
    added: Sequence[str],
    a_bodies: Mapping[str, str],
    b_bodies: Mapping[str, str],
) -> list[tuple[str, str]]:
    """(old id, new id) of removed and added pages with the same body; empty bodies never
    match, as every page that lost its text would look like every other."""
    by_hash: dict[str, list[str]] = {}
    for old in removed:
        body = a_bodies.get(old, "")
        if body.strip():
            by_hash.setdefault(hash_body(body), []).append(old)
    pairs = []
    for new in added:
        body = b_bodies.get(new, "")
        olds = by_hash.get(hash_body(body)) if body.strip() else None
        if olds:
            pairs.append((olds.pop(0), new))
    return pairs


def extract_headings(body: str) -> list[str]:
    return [m.group(1) for m in HEADING_RE.finditer(body)]


def count_word_changes(before: Sequence[str], after: Sequence[str]) -> tuple[int, int]:
    """(words added, words removed) by difflib's word-level opcodes."""
    added = removed = 0
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            removed += i2 - i1
        if tag in ("replace", "insert"):
            added += j2 - j1
    return added, removed


def compare_page(old: Row, new: Row, before: str, after: str) -> PageChange | None:
    """What changed in one page, or None when its title and body are the same (the front
    matter alone differs, e.g. the source HTML's hash after a change to the chrome)."""
    title, old_title = str(new.get("title", "")), str(old.get("title", ""))
    if before == after and title == old_title:
        return None
    heads_a, heads_b = Counter(extract_headings(before)), Counter(extract_headings(after))
    words_a, words_b = before.split(), after.split()
    added, removed = count_word_changes(words_a, words_b)
    return PageChange(
        id=str(new["id"]),
        url=str(new.get("url", "")),
        title=title,
        old_title=old_title if old_title != title else None,
        headings_added=sorted((heads_b - heads_a).elements()),
        headings_removed=sorted((heads_a - heads_b).elements()),
        words_before=len(words_a),
        words_after=len(words_b),
        words_added=added,
        words_removed=removed,
        change=round(max(added, removed) / max(len(words_a), len(words_b), 1), 4),
    )


def diff_pages(
    a: Mapping[str, Row],
    b: Mapping[str, Row],
    split: PageSplit,
    a_bodies: Mapping[str, str],
    b_bodies: Mapping[str, str],
) -> PageDiff:
    moves = match_moved(split.removed, split.added, a_bodies, b_bodies)
    moved_old, moved_new = {o for o, _ in moves}, {n for _, n in moves}
    diff = PageDiff(
        added=[to_ref(b[i]) for i in split.added if i not in moved_new],
        removed=[to_ref(a[i]) for i in split.removed if i not in moved_old],
        moved=[
            MovedPage(
                o, n, str(a[o].get("url", "")), str(b[n].get("url", "")), str(b[n].get("title", ""))
            )
            for o, n in moves
        ],
        unchanged=list(split.same),
    )
    for page_id in split.differing:
        change = compare_page(
            a[page_id], b[page_id], a_bodies.get(page_id, ""), b_bodies.get(page_id, "")
        )
        if change is None:
            diff.unchanged.append(page_id)
        else:
            diff.changed.append(change)
    return diff
