"""tasks/synth/coverage.py on small hand-made pages: which sections a pair is about, which
points kept both triples, and what each uncovered page, section and point is excluded with."""

from __future__ import annotations

from tasks.core.records import Competency, MarkdownDoc, PreferenceTriple, QAPair, TripleKind
from tasks.synth.coverage import (
    PagePlan,
    Verdict,
    find_covered_points,
    find_covered_sections,
    locate_sections,
    measure_coverage,
    select_last_verdicts,
    span_sections,
)

DOC = MarkdownDoc(id="p1", url="https://docs.example.org/backup.html", title="Backup", sha="0")
DUMPS = "## Dumps\n\npg_dump writes a consistent snapshot of one database."
RESTORES = "## Restores\n\npsql replays a plain script into an empty database."
ARCHIVES = "## Archives\n\nWAL segments are copied by archive_command."
GOOD, FALSE = TripleKind.GOOD, TripleKind.FALSE_PREMISE


def pair(chunk: int, question: str, answer: str) -> QAPair:
    return QAPair(
        id=question,
        page_id=DOC.id,
        url=DOC.url,
        chunk=chunk,
        question=question,
        answer=f"{answer} (Source: {DOC.url}, PostgreSQL 15)",
        model="m",
        prompt_version="v",
    )


def triple(chunk: int, point: str, kind: TripleKind) -> PreferenceTriple:
    return PreferenceTriple(
        id=f"{point}{kind}",
        page_id=DOC.id,
        url=DOC.url,
        chunk=chunk,
        point=point,
        kind=kind,
        competency=Competency.CONVERSATIONAL,
        prompt="q",
        chosen="c",
        rejected="r",
        model="m",
        prompt_version="v",
    )


def verdict(call: str, chunk: int, attempt: int, kept: int, *drops: str, slot: int = 0) -> Verdict:
    return Verdict(call, DOC.id, chunk, slot, attempt, kept, drops)


def test_sections_are_found_in_order_and_reach_into_the_next_chunk() -> None:
    # The same heading twice, and a section split over two chunks (its heading repeated).
    sections = ["# Backup", "## Example\n\none", "## Big\n\npart one\n\npart two", "## Example"]
    chunks = [
        "# Backup\n\n## Example\n\none",
        "## Big\n\npart one",
        "## Big\n\npart two\n\n## Example",
    ]
    starts = locate_sections(sections, chunks)
    assert starts == [0, 0, 1, 2]
    assert span_sections(starts, len(chunks)) == [
        range(0, 1),
        range(0, 2),
        range(1, 3),
        range(2, 3),
    ]


def test_a_pair_covers_the_section_of_its_chunk_it_shares_most_words_with() -> None:
    sections = [DUMPS, RESTORES, ARCHIVES]
    chunks = [f"{DUMPS}\n\n{RESTORES}", ARCHIVES]
    pairs = [
        (0, "How does psql restore a plain script? It replays it into an empty database."),
        (1, "Which program writes a consistent snapshot? pg_dump."),  # chunk 1 has no pg_dump
    ]
    assert find_covered_sections(sections, chunks, pairs) == [False, True, False]
    assert find_covered_sections(sections, chunks, [(0, "Unrelated words only")]) == [False] * 3


def test_a_point_is_covered_only_with_both_its_triples() -> None:
    kept = {("A", GOOD), ("A", FALSE), ("B", GOOD)}
    assert find_covered_points(["A", "B", "C"], kept) == [[], [3], [4, 5]]


def test_the_last_attempt_decides_a_calls_verdict() -> None:
    first, second = verdict("qa", 0, 0, 0, "qa.ungrounded"), verdict("qa", 0, 1, 2)
    assert select_last_verdicts([second, first, verdict("qa", 1, 0, 1)])[first.key] == second


def test_coverage_counts_and_excludes_what_kept_nothing() -> None:
    page = PagePlan(
        DOC,
        sections=(DUMPS, RESTORES, ARCHIVES),
        chunks=(f"{DUMPS}\n\n{RESTORES}", ARCHIVES),
        points_asked=(2, 1),
        points_given=(("Dumps are consistent.", "Restores need an empty database."), ()),
    )
    pairs = [pair(0, "What does pg_dump write?", "A consistent snapshot of one database.")]
    triples = [
        triple(0, "Dumps are consistent.", GOOD),
        triple(0, "Dumps are consistent.", FALSE),
        triple(0, "Restores need an empty database.", GOOD),
    ]
    verdicts = [
        verdict("qa", 0, 0, 1),
        verdict("qa", 1, 0, 0, "qa.truncated"),
        verdict("qa", 1, 2, 0, "qa.ungrounded", "qa.ungrounded", "qa.placeholder"),
        verdict("points", 0, 0, 2),
        verdict("points", 1, 2, 0, "points.no_blocks"),
        verdict("triple", 0, 0, 0, "triples.near_duplicate", slot=3),
        verdict("triple", 0, 2, 0, "triples.chosen_equals_rejected", slot=3),
    ]
    cov = measure_coverage([page], pairs, triples, verdicts)

    assert cov.summary() == {
        "pages": {"covered": 1, "total": 1, "share": 1.0},
        "sections": {"covered": 1, "total": 3, "share": 0.3333},
        "points": {"covered": 1, "total": 3, "share": 0.3333},
    }
    assert [(e.reason, e.detail) for e in cov.qa_exclusions] == [
        ("uncovered_section", "## Restores: the pairs kept from chunk 0 are about other sections"),
        (
            "uncovered_section",
            "## Archives: no Q/A pair kept from chunk 1: qa.ungrounded (attempt 3)",
        ),
    ]
    assert [e.detail for e in cov.pref_exclusions] == [
        "chunk 0: Restores need an empty database.: false_premise triple not kept: "
        "triples.chosen_equals_rejected (attempt 3)",
        "chunk 1: point 1 of 1 not given: points.no_blocks (attempt 3)",
    ]
    assert {e.reason for e in cov.pref_exclusions} == {"uncovered_point"}


def test_a_failed_page_is_uncovered_with_its_error() -> None:
    page = PagePlan(DOC, (DUMPS,), (DUMPS,), (1,), (), error="EndpointError: HTTP 500")
    cov = measure_coverage([page], [], [], [])
    assert cov.summary()["pages"] == {"covered": 0, "total": 1, "share": 0.0}
    assert [(e.reason, e.detail) for e in [*cov.qa_exclusions, *cov.pref_exclusions]] == [
        ("uncovered_page", "page failed: EndpointError: HTTP 500"),
        ("uncovered_section", "## Dumps: page failed: EndpointError: HTTP 500"),
        (
            "uncovered_point",
            "chunk 0: point 1 of 1 not given: page failed: EndpointError: HTTP 500",
        ),
    ]
    assert measure_coverage([], [], [], []).summary()["points"]["share"] is None
