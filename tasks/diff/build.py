"""The whole release diff: two versions read, compared part by part, as one JSON-ready dict."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tasks.diff.health import (
    find_newly_excluded,
    find_newly_failing,
    find_newly_readability,
    find_shrunk,
    list_exclusions,
)
from tasks.diff.metrics import diff_metrics, diff_params
from tasks.diff.pages import PageDiff, diff_pages, index_pages, split_pages
from tasks.diff.snapshot import Snapshot, read_bodies, read_snapshot
from tasks.diff.training import RecordDiff, compare_synth, compare_tokens, diff_records
from tasks.diff.versions import VersionReader


def read_versions(a: VersionReader, b: VersionReader) -> tuple[Snapshot, Snapshot, PageDiff]:
    """Both versions' records, and their pages compared: page bodies are read only where the
    files' hashes differ, so an unchanged page costs its index line and nothing more."""
    old, new = read_snapshot(a), read_snapshot(b)
    a_pages, b_pages = index_pages(old.pages), index_pages(new.pages)
    split = split_pages(a_pages, b_pages, old.page_hashes, new.page_hashes)
    a_bodies = read_bodies(a, old, {*split.removed, *split.differing})
    b_bodies = read_bodies(b, new, {*split.added, *split.differing})
    return old, new, diff_pages(a_pages, b_pages, split, a_bodies, b_bodies)


def summarize_records(diff: RecordDiff) -> dict[str, Any]:
    return {
        "before": diff.before,
        "after": diff.after,
        "added": len(diff.added),
        "removed": len(diff.removed),
        "kept": diff.kept,
        "added_by_source": diff.added_by_source,
        "removed_by_source": diff.removed_by_source,
        "kept_by_source": diff.kept_by_source,
    }


def compare_records(diff: RecordDiff) -> dict[str, Any]:
    return {
        **summarize_records(diff),
        "added_ids": diff.added,
        "removed_ids": diff.removed,
        "by_page": [asdict(p) for p in diff.by_page],
    }


def compare_health(old: Snapshot, new: Snapshot, pages: PageDiff, shrink: float) -> dict[str, Any]:
    before = list_exclusions(old.manifest, old.crawl_exclusions, old.markdown_exclusions)
    after = list_exclusions(new.manifest, new.crawl_exclusions, new.markdown_exclusions)
    return {
        "newly_failing": [asdict(i) for i in find_newly_failing(old.manifest, new.manifest)],
        "newly_excluded": [asdict(i) for i in find_newly_excluded(before, after)],
        "newly_readability": [
            asdict(i)
            for i in find_newly_readability(index_pages(old.pages), index_pages(new.pages))
        ],
        "shrunk": [asdict(p) for p in find_shrunk(pages.changed, shrink)],
    }


def summarize_pages(pages: PageDiff, old: Snapshot, new: Snapshot) -> dict[str, int]:
    return {
        "before": len(old.pages),
        "after": len(new.pages),
        "added": len(pages.added),
        "removed": len(pages.removed),
        "changed": len(pages.changed),
        "moved": len(pages.moved),
        "unchanged": len(pages.unchanged),
    }


def compare_versions(
    old: Snapshot, new: Snapshot, pages: PageDiff, shrink: float
) -> dict[str, Any]:
    status = pages.status_by_id()
    urls = {str(p["id"]): str(p.get("url", "")) for p in (*old.pages, *new.pages)}
    qa = diff_records(old.pairs, new.pairs, status, urls)
    triples = diff_records(old.triples, new.triples, status, urls)
    health = compare_health(old, new, pages, shrink)
    lower = (new.params.get("gate") or {}).get("lower_is_better") or []
    return {
        "a": old.label,
        "b": new.label,
        "shrink_threshold": shrink,
        "summary": {
            "pages": summarize_pages(pages, old, new),
            "health": {name: len(items) for name, items in health.items()},
            "qa": summarize_records(qa),
            "triples": summarize_records(triples),
        },
        "pages": {
            "added": [asdict(p) for p in pages.added],
            "removed": [asdict(p) for p in pages.removed],
            "changed": [asdict(p) for p in pages.changed],
            "moved": [asdict(p) for p in pages.moved],
            "unchanged": pages.unchanged,
            "titles": {str(p["id"]): str(p.get("title", "")) for p in (*old.pages, *new.pages)},
        },
        "health": health,
        "qa": compare_records(qa),
        "triples": compare_records(triples),
        "tokens": compare_tokens(old.reports, new.reports),
        "synth": compare_synth(old.reports.get("synth"), new.reports.get("synth")),
        "params": diff_params(old.params, new.params),
        "metrics": diff_metrics(old.reports, new.reports, lower),
    }


def build_release_diff(a: VersionReader, b: VersionReader, shrink: float) -> dict[str, Any]:
    old, new, pages = read_versions(a, b)
    return compare_versions(old, new, pages, shrink)
