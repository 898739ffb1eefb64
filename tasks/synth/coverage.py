"""What the synth stage's kept output covers: pages, sections and main points.

A page is covered when at least one of its Q/A pairs was kept. A section (a heading and its
text up to the next heading, or the text before the first heading) is covered when a kept pair
is about it: of the sections reaching into the pair's chunk, the one sharing most content words
with the pair. A main point is covered when its good and its false-premise triple were both
kept; a point asked for that the points call never gave is uncovered. Everything uncovered is
named in an exclusion with the reason the last attempt of its call was dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.core.records import Exclusion, MarkdownDoc, PreferenceTriple, QAPair, TripleKind
from tasks.synth.filters import extract_content_words, strip_citation

CallKey = tuple[str, str, int, int]


@dataclass(frozen=True)
class Verdict:
    """What one reply of one call kept, and why the rest of it was dropped."""

    call: str  # qa | points | triple
    page_id: str
    chunk: int
    slot: int  # a triple's place in list_triple_slots of its chunk; 0 for Q/A and points
    attempt: int  # 0 = the first ask
    kept: int
    drops: tuple[str, ...]  # <family>.<reason> of each dropped item, as the report counts them

    @property
    def key(self) -> CallKey:
        return (self.call, self.page_id, self.chunk, self.slot)


@dataclass(frozen=True)
class PagePlan:
    """A page as coverage sees it: its sections, its chunks' text, the points each chunk asked
    for and those its last points reply gave; `error` when the page failed."""

    doc: MarkdownDoc
    sections: tuple[str, ...]
    chunks: tuple[str, ...]
    points_asked: tuple[int, ...]
    points_given: tuple[tuple[str, ...], ...]
    error: str | None = None


@dataclass
class Tally:
    covered: int = 0
    total: int = 0

    def add(self, covered: bool) -> None:
        self.covered += covered
        self.total += 1

    def summary(self) -> dict[str, Any]:
        share = round(self.covered / self.total, 4) if self.total else None
        return {"covered": self.covered, "total": self.total, "share": share}


@dataclass
class Coverage:
    pages: Tally = field(default_factory=Tally)
    sections: Tally = field(default_factory=Tally)
    points: Tally = field(default_factory=Tally)
    qa_exclusions: list[Exclusion] = field(default_factory=list)
    pref_exclusions: list[Exclusion] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            "pages": self.pages.summary(),
            "sections": self.sections.summary(),
            "points": self.points.summary(),
        }


def list_triple_slots(points: Sequence[str]) -> list[tuple[str, TripleKind]]:
    """The triples a chunk asks for, in slot order: each point in every kind."""
    return [(point, kind) for point in points for kind in TripleKind]


def select_last_verdicts(verdicts: Sequence[Verdict]) -> dict[CallKey, Verdict]:
    """Each call's verdict on its last ask."""
    last: dict[CallKey, Verdict] = {}
    for verdict in verdicts:
        if verdict.key not in last or verdict.attempt > last[verdict.key].attempt:
            last[verdict.key] = verdict
    return last


def render_drop(verdict: Verdict | None) -> str:
    """Why a call's last attempt was dropped: its commonest reason, and which attempt it was."""
    if verdict is None:
        return "never asked"
    if not verdict.drops:
        return f"nothing to keep (attempt {verdict.attempt + 1})"
    reason = Counter(verdict.drops).most_common(1)[0][0]
    return f"{reason} (attempt {verdict.attempt + 1})"


def locate_sections(sections: Sequence[str], chunks: Sequence[str]) -> list[int]:
    """The chunk each section starts in: the first one, from the previous section's on, that
    holds the section's first line (chunks keep the page's order and split it on headings)."""
    lines = [set(chunk.split("\n")) for chunk in chunks]
    where, at = [], 0
    for section in sections:
        first = section.split("\n", 1)[0]
        at = next((i for i in range(at, len(chunks)) if first in lines[i]), at)
        where.append(at)
    return where


def span_sections(starts: Sequence[int], n_chunks: int) -> list[range]:
    """The chunks each section reaches: its own to the one the next section starts in."""
    ends = [*starts[1:], n_chunks - 1]
    return [range(start, end + 1) for start, end in zip(starts, ends, strict=True)]


def attribute_pair(words: set[str], sections: Sequence[set[str]]) -> int | None:
    """The section (by its content words) sharing most words with a pair, the first on a tie;
    None when it shares none."""
    overlaps = [len(words & section) for section in sections]
    best = max(range(len(overlaps)), key=overlaps.__getitem__, default=None)
    return best if best is not None and overlaps[best] > 0 else None


def find_covered_sections(
    sections: Sequence[str], chunks: Sequence[str], pairs: Sequence[tuple[int, str]]
) -> list[bool]:
    """Whether each section has a kept pair about it; `pairs` are (chunk, question + answer)."""
    spans = span_sections(locate_sections(sections, chunks), len(chunks))
    words = [extract_content_words(s) for s in sections]
    covered = [False] * len(sections)
    for chunk, text in pairs:
        candidates = [i for i, span in enumerate(spans) if chunk in span]
        best = attribute_pair(extract_content_words(text), [words[i] for i in candidates])
        if best is not None:
            covered[candidates[best]] = True
    return covered


def find_covered_points(
    points: Sequence[str], kept: set[tuple[str, TripleKind]]
) -> list[list[int]]:
    """For each point, the slots (list_triple_slots) whose triple was not kept; [] = covered."""
    slots = list_triple_slots(points)
    missing: list[list[int]] = [[] for _ in points]
    for index, (point, kind) in enumerate(slots):
        if (point, kind) not in kept:
            missing[index // len(TripleKind)].append(index)
    return missing


def uncovered(doc: MarkdownDoc, what: str, detail: str) -> Exclusion:
    return Exclusion(id=doc.id, url=doc.url, reason=f"uncovered_{what}", detail=detail[:300])


def measure_coverage(
    pages: Sequence[PagePlan],
    pairs: Sequence[QAPair],
    triples: Sequence[PreferenceTriple],
    verdicts: Sequence[Verdict],
) -> Coverage:
    """Every page, section and main point tallied; the uncovered ones as exclusions."""
    last = select_last_verdicts(verdicts)
    pairs_of: dict[str, list[QAPair]] = {}
    triples_of: dict[str, list[PreferenceTriple]] = {}
    for pair in pairs:
        pairs_of.setdefault(pair.page_id, []).append(pair)
    for triple in triples:
        triples_of.setdefault(triple.page_id, []).append(triple)
    cov = Coverage()
    for page in pages:
        cover_page(cov, page, pairs_of.get(page.doc.id, []), last)
        cover_points(cov, page, triples_of.get(page.doc.id, []), last)
    return cov


def cover_page(
    cov: Coverage, page: PagePlan, pairs: Sequence[QAPair], last: dict[CallKey, Verdict]
) -> None:
    """Tally the page and its sections; an exclusion for each without a kept pair."""
    cov.pages.add(bool(pairs))
    if not pairs:
        cov.qa_exclusions.append(uncovered(page.doc, "page", render_page_gap(page, last)))
    texts = [(p.chunk, f"{p.question} {strip_citation(p.answer)}") for p in pairs]
    covered = find_covered_sections(page.sections, page.chunks, texts)
    starts = locate_sections(page.sections, page.chunks)
    for section, start, ok in zip(page.sections, starts, covered, strict=True):
        cov.sections.add(ok)
        if not ok:
            why = render_section_gap(page, start, pairs, last)
            heading = section.split("\n", 1)[0][:120]
            cov.qa_exclusions.append(uncovered(page.doc, "section", f"{heading}: {why}"))


def cover_points(
    cov: Coverage, page: PagePlan, triples: Sequence[PreferenceTriple], last: dict[CallKey, Verdict]
) -> None:
    """Tally the main points each chunk asked for; an exclusion for each without both
    triples kept."""
    for chunk, asked in enumerate(page.points_asked):
        given = page.points_given[chunk] if page.points_given else ()
        kept = {(t.point, t.kind) for t in triples if t.chunk == chunk}
        for point, missing in zip(given, find_covered_points(given, kept), strict=True):
            cov.points.add(not missing)
            if missing:
                why = render_triple_gap(page, chunk, missing, last)
                detail = f"chunk {chunk}: {point}: {why}"
                cov.pref_exclusions.append(uncovered(page.doc, "point", detail))
        for k in range(len(given), asked):
            cov.points.add(False)
            why = render_points_gap(page, chunk, last)
            detail = f"chunk {chunk}: point {k + 1} of {asked} not given: {why}"
            cov.pref_exclusions.append(uncovered(page.doc, "point", detail))


def render_page_gap(page: PagePlan, last: dict[CallKey, Verdict]) -> str:
    if page.error:
        return f"page failed: {page.error}"
    drops = [
        f"chunk {c}: {render_drop(last.get(('qa', page.doc.id, c, 0)))}"
        for c in range(len(page.chunks))
    ]
    return "no Q/A pair kept; " + "; ".join(drops)


def render_section_gap(
    page: PagePlan, chunk: int, pairs: Sequence[QAPair], last: dict[CallKey, Verdict]
) -> str:
    if page.error:
        return f"page failed: {page.error}"
    if any(p.chunk == chunk for p in pairs):
        return f"the pairs kept from chunk {chunk} are about other sections"
    verdict = last.get(("qa", page.doc.id, chunk, 0))
    return f"no Q/A pair kept from chunk {chunk}: {render_drop(verdict)}"


def render_triple_gap(
    page: PagePlan, chunk: int, missing: Sequence[int], last: dict[CallKey, Verdict]
) -> str:
    kinds = list(TripleKind)
    gaps = [
        f"{kinds[slot % len(kinds)].value} triple not kept: "
        + render_drop(last.get(("triple", page.doc.id, chunk, slot)))
        for slot in missing
    ]
    return "; ".join(gaps)


def render_points_gap(page: PagePlan, chunk: int, last: dict[CallKey, Verdict]) -> str:
    if page.error:
        return f"page failed: {page.error}"
    verdict = last.get(("points", page.doc.id, chunk, 0))
    if verdict is not None and verdict.kept:
        return f"its reply listed {verdict.kept} (attempt {verdict.attempt + 1})"
    return render_drop(verdict)
