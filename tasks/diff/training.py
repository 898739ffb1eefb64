"""Training data between two versions: Q/A pairs and preference triples added, removed and kept
(by their content ids), per source page and by what happened to that page; tokens per set and
the synth stage's calls, from the stage reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]
# A page's state -> the bucket its added or removed records are counted in. A record added on a
# page that changed was regenerated because of the change; one added on an unchanged page was
# regenerated for another reason (prompt, model or params).
SOURCE_BUCKET = {
    "added": "new_pages",
    "removed": "removed_pages",
    "changed": "changed_pages",
    # A moved page's records cite its new URL, so they are regenerated like a changed page's.
    "moved away": "changed_pages",
    "moved here": "changed_pages",
    "unchanged": "unchanged_pages",
}


@dataclass
class PageRecords:
    page_id: str
    url: str
    page: str  # the page's state (PageDiff.status_by_id)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: int = 0


@dataclass
class RecordDiff:
    before: int
    after: int
    added: list[str]
    removed: list[str]
    kept: int
    added_by_source: dict[str, int]  # new_pages, changed_pages, unchanged_pages
    removed_by_source: dict[str, int]  # removed_pages, changed_pages, unchanged_pages
    kept_by_source: dict[str, int]
    by_page: list[PageRecords]  # pages whose records changed, in B's order then A's


def group_by_page(rows: Sequence[Row]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(str(row.get("page_id", "")), []).append(str(row["id"]))
    return groups


def count_by_source(per_page: Mapping[str, int], status: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for page_id, n in per_page.items():
        if n:
            bucket = SOURCE_BUCKET.get(status.get(page_id, ""), "unknown_pages")
            counts[bucket] = counts.get(bucket, 0) + n
    return dict(sorted(counts.items()))


def diff_records(
    a: Sequence[Row], b: Sequence[Row], status: Mapping[str, str], urls: Mapping[str, str]
) -> RecordDiff:
    """`status` gives each page id's state (PageDiff.status_by_id), `urls` its URL."""
    a_pages, b_pages = group_by_page(a), group_by_page(b)
    a_ids, b_ids = {str(r["id"]) for r in a}, {str(r["id"]) for r in b}
    pages = [*b_pages, *(p for p in a_pages if p not in b_pages)]
    by_page = []
    for page_id in pages:
        new, old = b_pages.get(page_id, []), a_pages.get(page_id, [])
        record = PageRecords(
            page_id,
            urls.get(page_id, ""),
            status.get(page_id, "unknown"),
            added=[i for i in new if i not in a_ids],
            removed=[i for i in old if i not in b_ids],
            kept=sum(1 for i in new if i in a_ids),
        )
        by_page.append(record)
    changed = [p for p in by_page if p.added or p.removed]
    return RecordDiff(
        before=len(a),
        after=len(b),
        added=[i for p in by_page for i in p.added],
        removed=[i for p in by_page for i in p.removed],
        kept=len(a_ids & b_ids),
        added_by_source=count_by_source({p.page_id: len(p.added) for p in by_page}, status),
        removed_by_source=count_by_source({p.page_id: len(p.removed) for p in by_page}, status),
        kept_by_source=count_by_source({p.page_id: p.kept for p in by_page}, status),
        by_page=changed,
    )


def dig(report: Mapping[str, Any] | None, dotted: str) -> Any:
    found: Any = report
    for part in dotted.split("."):
        if not isinstance(found, Mapping):
            return None
        found = found.get(part)
    return found


def list_token_sets(
    a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """(set, report, key) for each count the stage reports hold. The datasets report counts the
    CPT corpus in tokens per phase; SFT, ORPO and eval sets it counts in rows."""
    phases = sorted(
        {
            *(dig(a.get("datasets"), "cpt.phases") or {}),
            *(dig(b.get("datasets"), "cpt.phases") or {}),
        }
    )
    return [
        ("Markdown pages (tokens)", "markdown", "markdown_tokens"),
        *[(f"CPT {p} (tokens)", "datasets", f"cpt.phases.{p}.real_tokens") for p in phases],
        ("SFT domain examples (rows)", "datasets", "sft.domain_examples"),
        ("SFT general examples (rows)", "datasets", "sft.general_examples"),
        ("ORPO triples (rows)", "datasets", "orpo.triples"),
        ("eval held-out pages (rows)", "datasets", "eval.pages"),
        ("eval probe pairs (rows)", "datasets", "eval.probe_pairs"),
        ("eval probe triples (rows)", "datasets", "eval.probe_triples"),
    ]


def number_or_none(value: Any) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def compare_tokens(
    a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for name, report, key in list_token_sets(a, b):
        before, after = (
            number_or_none(dig(a.get(report), key)),
            number_or_none(dig(b.get(report), key)),
        )
        if before is None and after is None:
            continue
        delta = None if before is None or after is None else after - before
        rows.append(
            {
                "set": name,
                "source": f"{report}.{key}",
                "before": before,
                "after": after,
                "delta": delta,
            }
        )
    return rows


SYNTH_FIGURES = (
    ("calls made", "calls.made"),
    ("calls reused", "calls.reused"),
    ("calls failed", "calls.failed"),
    ("prompt tokens sent", "tokens.prompt_made"),
    ("completion tokens made", "tokens.completion_made"),
    ("cost of the calls made (USD)", "cost.made_usd"),
)


def compare_synth(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The synth stage's calls and tokens as each version's run reported them: B's `made` is
    what the new release cost, its `reused` what the reply cache saved."""
    rows = []
    for name, key in SYNTH_FIGURES:
        before, after = number_or_none(dig(a, key)), number_or_none(dig(b, key))
        if before is not None or after is not None:
            rows.append(
                {"figure": name, "source": f"synth.{key}", "before": before, "after": after}
            )
    return rows
