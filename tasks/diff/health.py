"""Crawl health between two versions: pages that newly fail, are newly excluded (by the crawl or
the markdown stage), newly take the readability fallback, or whose Markdown shrank. A template
change that breaks extraction shows up here, before anyone trains on the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.core.records import PageStatus
from tasks.diff.pages import PageChange

Row = dict[str, Any]
# A page that lost more than this share of its words: large enough that ordinary edits stay
# out, small enough that a template change dropping a page's main section is caught.
SHRINK_THRESHOLD = 0.3
READABILITY = "readability"
# Manifest states that keep a page out of the crawl's output on purpose.
EXCLUDING = (PageStatus.SKIPPED.value, PageStatus.BLOCKED.value)


@dataclass(frozen=True)
class HealthItem:
    id: str
    url: str
    stage: str  # crawl or markdown
    reason: str
    detail: str | None = None


@dataclass(frozen=True)
class ShrunkPage:
    id: str
    url: str
    title: str
    words_before: int
    words_after: int
    lost: float  # share of the words that went


def find_newly_failing(a: Sequence[Row], b: Sequence[Row]) -> list[HealthItem]:
    failed = PageStatus.FAILED.value
    before = {str(r["id"]) for r in a if r.get("status") == failed}
    return [
        HealthItem(str(r["id"]), str(r.get("url", "")), "crawl", str(r.get("reason") or failed))
        for r in b
        if r.get("status") == failed and str(r["id"]) not in before
    ]


def list_exclusions(
    manifest: Sequence[Row], crawl: Sequence[Row], markdown: Sequence[Row]
) -> list[HealthItem]:
    items = [
        HealthItem(
            str(r["id"]), str(r.get("url", "")), "crawl", str(r.get("status")), r.get("reason")
        )
        for r in manifest
        if r.get("status") in EXCLUDING
    ]
    for stage, rows in (("crawl", crawl), ("markdown", markdown)):
        items += [
            HealthItem(
                str(r["id"]),
                str(r.get("url", "")),
                stage,
                str(r.get("reason", "")),
                r.get("detail"),
            )
            for r in rows
        ]
    return items


def find_newly_excluded(a: Sequence[HealthItem], b: Sequence[HealthItem]) -> list[HealthItem]:
    """Exclusions of B that A did not have for the same page, stage and reason."""
    before = {(i.id, i.stage, i.reason) for i in a}
    seen: set[tuple[str, str, str]] = set()
    found = []
    for item in b:
        key = (item.id, item.stage, item.reason)
        if key not in before and key not in seen:
            seen.add(key)
            found.append(item)
    return found


def find_newly_readability(a: Mapping[str, Row], b: Mapping[str, Row]) -> list[HealthItem]:
    """Pages whose main content B found only by the readability fallback, and A did not."""
    return [
        HealthItem(page_id, str(row.get("url", "")), "markdown", READABILITY)
        for page_id, row in b.items()
        if row.get("extractor") == READABILITY
        and (a.get(page_id) or {}).get("extractor") != READABILITY
    ]


def find_shrunk(changed: Sequence[PageChange], threshold: float) -> list[ShrunkPage]:
    found = []
    for page in changed:
        lost = 1 - page.words_after / page.words_before if page.words_before else 0.0
        if lost > threshold:
            found.append(
                ShrunkPage(
                    page.id,
                    page.url,
                    page.title,
                    page.words_before,
                    page.words_after,
                    round(lost, 4),
                )
            )
    return found
