"""The diff's parts on small record sets: pages (added, removed, changed, moved, unchanged),
crawl health, Q/A and triples by the state of their page, params and metrics with the better
direction, and the Markdown/HTML rendering (capped lists, self-contained page)."""

from __future__ import annotations

from pathlib import Path

from tasks.diff.build import compare_versions
from tasks.diff.health import (
    find_newly_excluded,
    find_newly_failing,
    find_newly_readability,
    find_shrunk,
    list_exclusions,
)
from tasks.diff.metrics import better_direction, diff_metrics, diff_params
from tasks.diff.pages import diff_pages, index_pages, split_pages
from tasks.diff.render import layout, render_markdown
from tasks.diff.snapshot import Snapshot, split_body
from tasks.diff.training import compare_synth, compare_tokens, diff_records
from tasks.diff.write import render_stem, write_diff_files

BODY = "## Setup\n\nInstall the package and start the server with the default settings."


def page(pid: str, url: str = "", title: str = "", extractor: str = "generic") -> dict:
    return {
        "id": pid,
        "url": url or f"http://d/{pid}.html",
        "title": title or pid.upper(),
        "extractor": extractor,
    }


def record(rid: str, page_id: str) -> dict:
    return {"id": rid, "page_id": page_id}


def snapshot(label: str, pages: list[dict], bodies: dict[str, str], **kw: object) -> Snapshot:
    fields: dict = {
        "params": {},
        "manifest": [],
        "crawl_exclusions": [],
        "markdown_exclusions": [],
        "pairs": [],
        "triples": [],
        "reports": {},
    }
    fields.update(kw)
    return Snapshot(
        label=label,
        pages=pages,
        page_hashes={pid: str(hash(body)) for pid, body in bodies.items()},
        markdown_dir="data/markdown",
        bodies=dict(bodies),
        **fields,
    )


def two_versions() -> tuple[Snapshot, Snapshot]:
    a_bodies = {
        "same": BODY,
        "edit": BODY + "\n\n## Tuning\n\nRaise the cache size for large sites.",
        "gone": "## Old\n\nThis page is retired.",
        "oldurl": "## Upgrade\n\nTake a dump before every upgrade.",
        "broken": "## Big\n\n" + " ".join(f"word{i}" for i in range(100)),
    }
    b_bodies = {
        "same": BODY,
        "edit": BODY + "\n\n## Caching\n\nRaise the cache size for very large sites.",
        "new": "## New\n\nA page about security.",
        "newurl": "## Upgrade\n\nTake a dump before every upgrade.",
        "broken": "## Big\n\nLoading.",
    }
    a = snapshot(
        "v1",
        [page(i) for i in a_bodies],
        a_bodies,
        pairs=[
            record("q1", "same"),
            record("q2", "edit"),
            record("q3", "gone"),
            record("q4", "oldurl"),
        ],
        triples=[record("t1", "edit")],
    )
    b = snapshot(
        "v2",
        [page(i) for i in b_bodies],
        b_bodies,
        pairs=[
            record("q1", "same"),
            record("q5", "edit"),
            record("q6", "new"),
            record("q7", "newurl"),
        ],
        triples=[record("t1", "edit")],
    )
    return a, b


def compare(a: Snapshot, b: Snapshot, shrink: float = 0.3) -> dict:
    a_pages, b_pages = index_pages(a.pages), index_pages(b.pages)
    split = split_pages(a_pages, b_pages, a.page_hashes, b.page_hashes)
    pages = diff_pages(a_pages, b_pages, split, a.bodies, b.bodies)
    return compare_versions(a, b, pages, shrink)


def test_pages_added_removed_changed_moved_unchanged() -> None:
    diff = compare(*two_versions())
    pages = diff["pages"]
    assert [p["id"] for p in pages["added"]] == ["new"]
    assert [p["id"] for p in pages["removed"]] == ["gone"]
    assert [(m["old_id"], m["new_id"]) for m in pages["moved"]] == [("oldurl", "newurl")]
    assert pages["unchanged"] == ["same"]
    changed = {c["id"]: c for c in pages["changed"]}
    assert set(changed) == {"edit", "broken"}
    assert changed["edit"]["headings_added"] == ["Caching"]
    assert changed["edit"]["headings_removed"] == ["Tuning"]
    assert (changed["edit"]["words_added"], changed["edit"]["words_removed"]) == (2, 1)
    assert diff["summary"]["pages"] == {
        "before": 5, "after": 5, "added": 1, "removed": 1, "changed": 2, "moved": 1, "unchanged": 1,
    }  # fmt: skip


def test_a_page_whose_front_matter_alone_changed_is_unchanged() -> None:
    a = snapshot("v1", [page("p")], {"p": BODY})
    b = snapshot("v2", [page("p")], {"p": BODY})
    b.page_hashes["p"] = "other"  # e.g. the source HTML's sha after a change to the site chrome
    assert compare(a, b)["pages"]["unchanged"] == ["p"]


def test_empty_pages_never_match_as_moved() -> None:
    a = snapshot("v1", [page("x")], {"x": ""})
    b = snapshot("v2", [page("y")], {"y": ""})
    diff = compare(a, b)
    assert diff["pages"]["moved"] == [] and len(diff["pages"]["added"]) == 1


def test_shrunk_pages_by_the_threshold() -> None:
    diff = compare(*two_versions())
    assert [p["id"] for p in diff["health"]["shrunk"]] == ["broken"]
    assert diff["health"]["shrunk"][0]["lost"] > 0.9
    assert compare(*two_versions(), shrink=0.99)["health"]["shrunk"] == []
    assert find_shrunk([], 0.3) == []


def test_records_by_the_state_of_their_page() -> None:
    diff = compare(*two_versions())
    qa = diff["qa"]
    assert (qa["added_ids"], qa["removed_ids"], qa["kept"]) == (
        ["q5", "q6", "q7"],
        ["q2", "q3", "q4"],
        1,
    )
    assert qa["added_by_source"] == {"changed_pages": 2, "new_pages": 1}  # q5 edit, q7 moved
    assert qa["removed_by_source"] == {"changed_pages": 2, "removed_pages": 1}
    assert qa["kept_by_source"] == {"unchanged_pages": 1}
    assert diff["triples"]["kept_by_source"] == {"changed_pages": 1}
    states = {p["page_id"]: p["page"] for p in qa["by_page"]}
    assert states == {
        "edit": "changed",
        "new": "added",
        "newurl": "moved here",
        "gone": "removed",
        "oldurl": "moved away",
    }


def test_records_regenerated_on_an_unchanged_page_are_told_apart() -> None:
    status = {"p": "unchanged"}
    diff = diff_records([record("old", "p")], [record("new", "p")], status, {"p": "u"})
    assert diff.added_by_source == {"unchanged_pages": 1}
    assert diff.removed_by_source == {"unchanged_pages": 1}


def test_crawl_health_reports_only_what_is_new() -> None:
    a_manifest = [
        {"id": "f", "url": "u/f", "status": "failed", "reason": "timeout"},
        {"id": "k", "status": "ok"},
    ]
    b_manifest = [
        {"id": "f", "url": "u/f", "status": "failed", "reason": "timeout"},
        {"id": "k", "url": "u/k", "status": "failed", "reason": "HTTP 500"},
        {"id": "s", "url": "u/s", "status": "skipped", "reason": "too large"},
    ]
    failing = find_newly_failing(a_manifest, b_manifest)
    assert [(i.id, i.reason) for i in failing] == [("k", "HTTP 500")]
    before = list_exclusions(a_manifest, [{"id": "x", "url": "u/x", "reason": "excluded"}], [])
    after = list_exclusions(
        b_manifest,
        [{"id": "x", "url": "u/x", "reason": "excluded"}],
        [{"id": "m", "url": "u/m", "reason": "empty"}],
    )
    found = find_newly_excluded(before, after)
    assert [(i.id, i.stage, i.reason) for i in found] == [
        ("s", "crawl", "skipped"),
        ("m", "markdown", "empty"),
    ]
    a = index_pages([page("p"), page("r", extractor="readability")])
    b = index_pages(
        [
            page("p", extractor="readability"),
            page("r", extractor="readability"),
            page("n", extractor="readability"),
        ]
    )
    assert [i.id for i in find_newly_readability(a, b)] == ["p", "n"]


def test_params_and_metrics_with_the_better_direction() -> None:
    assert diff_params(
        {"synth": {"max_pairs": 2, "x": [1]}}, {"synth": {"max_pairs": 3, "x": [1]}}
    ) == [{"key": "synth.max_pairs", "before": 2, "after": 3}]
    a = {
        "eval": {
            "metrics": {
                "orpo": {
                    "ppl_general": {"value": 20.0, "n": 9},
                    "correctness.probes": {"value": 0.5},
                }
            }
        }
    }
    b = {
        "eval": {
            "metrics": {
                "orpo": {
                    "ppl_general": {"value": 25.0, "n": 9},
                    "correctness.probes": {"value": 0.6},
                }
            }
        }
    }
    rows = {r["key"]: r for r in diff_metrics(a, b)}
    assert rows["metrics.orpo.ppl_general.value"]["verdict"] == "worse"
    assert rows["metrics.orpo.correctness.probes.value"]["verdict"] == "better"
    assert "metrics.orpo.ppl_general.n" not in rows  # unchanged
    assert better_direction("sft", "loss.last") == "lower"
    assert better_direction("crawl", "pages_per_s") == "higher"
    assert better_direction("crawl", "wall_s") == "lower"
    assert better_direction("eval", "metrics.orpo.literal_recall.probes.n") is None
    assert better_direction("eval", "metrics.orpo.custom.value", ["custom"]) == "lower"
    assert better_direction("datasets", "cpt.documents") is None


def test_tokens_and_synth_calls_from_the_reports() -> None:
    a = {
        "datasets": {"cpt": {"phases": {"short": {"real_tokens": 100}}}},
        "markdown": {"markdown_tokens": 80},
    }
    b = {
        "datasets": {
            "cpt": {"phases": {"short": {"real_tokens": 140}, "long": {"real_tokens": 140}}}
        }
    }
    rows = {r["set"]: r for r in compare_tokens(a, b)}
    assert rows["CPT short (tokens)"]["delta"] == 40
    assert rows["CPT long (tokens)"]["before"] is None
    assert rows["Markdown pages (tokens)"]["after"] is None
    synth = compare_synth(
        {"calls": {"made": 30, "reused": 0}}, {"calls": {"made": 4, "reused": 26}}
    )
    assert [(r["figure"], r["before"], r["after"]) for r in synth] == [
        ("calls made", 30, 4),
        ("calls reused", 0, 26),
    ]


def test_renders_capped_lists_and_a_self_contained_page(tmp_path: Path) -> None:
    a, b = two_versions()
    b.pages += [page(f"extra{i}") for i in range(5)]
    b.bodies |= {f"extra{i}": f"## Extra {i}\n\nText {i}." for i in range(5)}
    diff = compare(a, b)
    md = render_markdown(layout(diff, limit=3))
    assert "### Added (6)" in md and "… and 3 more in the JSON report." in md
    assert "[BROKEN](http://d/broken.html)" in md
    paths = write_diff_files(diff, tmp_path, limit=3)
    assert sorted(p.name for p in paths.values()) == ["v1..v2.html", "v1..v2.json", "v1..v2.md"]
    page_html = paths["html"].read_text()
    assert "<svg" in page_html and "<script" not in page_html
    # A bar per non-zero delta: pages added, removed, changed, moved, Q/A added, removed (the
    # one triple is kept, and without stage reports there is no token panel).
    assert page_html.count("<rect") == 6
    assert "http" not in page_html.split("<body>")[0]  # nothing fetched: no external CSS or fonts
    assert render_stem("feature/x", "workspace") == "feature_x..workspace"


def test_split_body_reads_front_matter_it_does_not_know() -> None:
    text = "---\nid: p\nnew_field: 1\n---\n\n## Title\n\nText.\n"
    assert split_body(text) == "## Title\n\nText."
