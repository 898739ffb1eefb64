"""What the eval stage reads: data/eval (held-out pages, knowledge probes, source pages) as
questions with reference answers, and the general-domain text of the forgetting canary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tasks.core.io import read_jsonl
from tasks.core.records import EvalPage, PreferenceTriple, QAPair

SAMPLES = Path(__file__).parent / "samples"
GENERAL_TEXT = SAMPLES / "general.txt"
# Which files of data/eval hold each set's questions: (Q/A pairs, preference triples).
SET_FILES = {
    "probes": ("probe_qa.jsonl", "probe_triples.jsonl"),
    "held_out": ("qa.jsonl", "triples.jsonl"),
}
# The Q/A answers end with a citation of their page, which says nothing about knowledge.
CITATION = re.compile(r"\s*\((?:Source|See|From)\b[^)]*\)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Question:
    """One eval question with its reference answer; `wrong` is the rejected answer of a
    triple (the wrong one, or the sycophantic one for a false premise)."""

    id: str
    set: str  # probes | held_out
    kind: str  # qa | good | false_premise
    page_id: str
    url: str
    version: str | None
    question: str
    reference: str
    wrong: str | None = None


@dataclass(frozen=True)
class EvalInputs:
    held_out_pages: list[EvalPage]
    sources: dict[str, EvalPage]  # by page id: every page a question is about
    questions: list[Question]


def strip_citation(answer: str) -> str:
    return CITATION.sub("", answer).strip()


def question_from_pair(pair: QAPair, set_name: str) -> Question:
    return Question(
        id=pair.id,
        set=set_name,
        kind="qa",
        page_id=pair.page_id,
        url=pair.url,
        version=pair.version,
        question=pair.question,
        reference=strip_citation(pair.answer),
    )


def question_from_triple(triple: PreferenceTriple, set_name: str) -> Question:
    return Question(
        id=triple.id,
        set=set_name,
        kind=triple.kind.value,
        page_id=triple.page_id,
        url=triple.url,
        version=triple.version,
        question=triple.prompt,
        reference=triple.chosen,
        wrong=triple.rejected,
    )


def read_questions(eval_dir: Path, sets: list[str]) -> list[Question]:
    questions = []
    for name in sets:
        qa_file, triples_file = SET_FILES[name]
        questions += [
            question_from_pair(QAPair.model_validate(r), name)
            for r in read_jsonl(eval_dir / qa_file)
        ]
        questions += [
            question_from_triple(PreferenceTriple.model_validate(r), name)
            for r in read_jsonl(eval_dir / triples_file)
        ]
    return questions


def read_eval_inputs(eval_dir: Path, sets: list[str]) -> EvalInputs:
    needed = ["pages.jsonl", "sources.jsonl"] + [f for s in sets for f in SET_FILES[s]]
    for name in needed:
        if not (eval_dir / name).is_file():
            raise FileNotFoundError(
                f"{eval_dir / name} not found: run `dvc repro datasets` (it writes the held-out "
                "pages and knowledge probes)"
            )
    pages = [EvalPage.model_validate(r) for r in read_jsonl(eval_dir / "pages.jsonl")]
    sources = [EvalPage.model_validate(r) for r in read_jsonl(eval_dir / "sources.jsonl")]
    return EvalInputs(pages, {p.id: p for p in sources}, read_questions(eval_dir, sets))


def read_general_text(path: Path | None) -> str:
    path = path or GENERAL_TEXT
    if not path.is_file():
        raise FileNotFoundError(f"eval.general_text: {path} not found")
    return path.read_text("utf-8")


WORD = re.compile(r"\w+")


def select_passage(text: str, query: str, max_chars: int) -> str:
    """The window of `text` (paragraph-aligned, at most `max_chars`) sharing the most distinct
    words with `query`: the part of a long page an answer is about. The whole text when short."""
    if len(text) <= max_chars:
        return text
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    wanted = {w.lower() for w in WORD.findall(query)}
    best, best_score = text[:max_chars], -1
    for start in range(len(paragraphs)):
        window: list[str] = []
        size = 0
        for para in paragraphs[start:]:
            if size + len(para) + 2 > max_chars and window:
                break
            window.append(para[:max_chars])
            size += len(para) + 2
        passage = "\n\n".join(window)
        score = len(wanted & {w.lower() for w in WORD.findall(passage)})
        if score > best_score:
            best, best_score = passage, score
    return best
