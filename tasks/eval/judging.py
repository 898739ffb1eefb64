"""The judged metrics of the eval stage: DeepEval metrics over a Judge, one score per case and
metric.

correctness and the three rubrics of the methodology (version_correctness, command_validity,
workflow_order) are GEval with explicit evaluation steps, so DeepEval asks nothing to write
them; false_premise is GEval on whether the answer rejects the question's false premise and
corrects it as the reference does; faithfulness (to the source page) and relevancy are
DeepEval's FaithfulnessMetric and AnswerRelevancyMetric. Every metric runs with
include_reason off where it has one and strict_mode off: the scores are used, not the
thresholds. Each is awaited (a_measure) on the caller's event loop, a fresh instance per case:
DeepEval's synchronous measure() would run a loop of its own, or patch a running one with
nest_asyncio, and a metric keeps its last measurement on itself.

A score is in [0, 1], or None where the metric does not apply (false_premise to a question
that has none, faithfulness to a case without a source page) or the judge gave up on it (the
judge's stats count it). An empty answer scores 0 on every metric that applies, without a
call: it answers nothing, and DeepEval refuses to judge it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from deepeval.metrics import AnswerRelevancyMetric, BaseMetric, FaithfulnessMetric, GEval
from deepeval.test_case import LLMTestCase, SingleTurnParams

from tasks.core.params import JUDGE_METRICS
from tasks.eval.judge import InvalidJudgeReply, Judge

T = TypeVar("T")


@dataclass(frozen=True)
class JudgeCase:
    id: str
    kind: str  # "qa" | "good" | "false_premise"
    question: str
    answer: str  # the model's generated answer
    reference: str  # the reference answer (for false_premise: the correcting answer)
    context: str  # the source page text, already clipped by the caller
    version: str | None  # product version of the page, e.g. "15"


@dataclass(frozen=True)
class Rubric:
    """A GEval metric over the question, the answer and the reference: its steps, and whether
    the judge also sees the product version and the source page. Those go in as GEval's
    additional context, verbatim: a list field of the test case would reach the prompt as a
    Python repr, escaping the very quotes and backslashes that command_validity checks."""

    steps: tuple[str, ...]
    version: bool = False
    page: bool = False


QA = (SingleTurnParams.INPUT, SingleTurnParams.ACTUAL_OUTPUT, SingleTurnParams.EXPECTED_OUTPUT)

RUBRICS: dict[str, Rubric] = {
    "correctness": Rubric(
        (
            "The Expected Output is the only source of truth about the product: judge by it "
            "alone, not by what you know or believe about the product.",
            "Find the facts in the Expected Output that answer the Input, and check whether "
            "the Actual Output states each of them, and states it correctly.",
            "Penalize heavily every statement of the Actual Output that contradicts the "
            "Expected Output; penalize the omission of a fact that the answer needs; penalize "
            "the omission of minor details lightly.",
            "Do not penalize wording, length, style, or details that are consistent with the "
            "Expected Output.",
        )
    ),
    "version_correctness": Rubric(
        (
            "The Additional Context names the product version the Input is about; the "
            "Expected Output is true for that version.",
            "Check every statement of the Actual Output about versions, default values, "
            "limits, availability and behaviour against the Expected Output for that version.",
            "Penalize behaviour or defaults of another version, and features, options or "
            "commands that the named version does not have according to the Expected Output.",
            "An Actual Output with no version-dependent statement that conflicts with the "
            "Expected Output gets the full score.",
        ),
        version=True,
    ),
    "command_validity": Rubric(
        (
            "Find every command, command-line option, configuration key or parameter, "
            "function name and SQL statement in the Actual Output.",
            "Check that each exists as written, with the same name, spelling and option "
            "syntax, in the Expected Output or in the source page of the Additional Context.",
            "Check that each is syntactically valid: balanced quotes and parentheses, the "
            "right option prefixes, complete SQL clauses and statement terminators.",
            "Penalize every invented, misspelled or malformed one. An Actual Output that "
            "contains none of them gets the full score.",
        ),
        page=True,
    ),
    "workflow_order": Rubric(
        (
            "Decide whether the Actual Output describes a procedure of several steps; if it "
            "does not, give the full score.",
            "Compare the order of its steps with the order in the Expected Output and in the "
            "source page of the Additional Context.",
            "Penalize steps in the wrong order, a step that needs the result of a later one, "
            "and a missing step without which the procedure fails.",
            "Do not penalize the order of steps whose order does not matter.",
        ),
        page=True,
    ),
    "false_premise": Rubric(
        (
            "The Input rests on a false premise; the Expected Output rejects it and states "
            "the correct facts.",
            "Check whether the Actual Output says that the premise is wrong, instead of "
            "accepting it and answering as if it were true.",
            "Check whether the correction in the Actual Output agrees with the Expected Output.",
            "Give a low score to an answer that goes along with the premise, a middle score "
            "to one that hedges, or rejects the premise without the right correction, and a "
            "high score to one that rejects it and corrects it as the Expected Output does.",
        )
    ),
}


def check_metrics(metrics: Sequence[str]) -> None:
    unknown = sorted(set(metrics) - set(JUDGE_METRICS))
    if unknown:
        raise ValueError(f"unknown judge metrics {unknown}; known: {list(JUDGE_METRICS)}")


def metric_applies(name: str, case: JudgeCase) -> bool:
    if name == "false_premise":
        return case.kind == "false_premise"
    if name == "faithfulness":
        return bool(case.context.strip())
    return True


def build_test_case(case: JudgeCase) -> LLMTestCase:
    return LLMTestCase(
        input=case.question,
        actual_output=case.answer,
        expected_output=case.reference,
        retrieval_context=[case.context] if case.context.strip() else None,
    )


def build_metric(name: str, judge: Judge) -> BaseMetric:
    """A fresh metric: DeepEval metrics keep the last measurement on themselves, so one
    instance must not measure two cases at once."""
    if name == "faithfulness":
        # eval_mode="llm" explicitly: another mode would send decisions to a third-party API.
        return FaithfulnessMetric(
            model=judge, include_reason=False, strict_mode=False, eval_mode="llm"
        )
    if name == "relevancy":
        return AnswerRelevancyMetric(
            model=judge, include_reason=False, strict_mode=False, eval_mode="llm"
        )
    return GEval(
        name=name,
        evaluation_params=list(QA),
        evaluation_steps=list(RUBRICS[name].steps),
        model=judge,
        strict_mode=False,
    )


def render_additional_context(name: str, case: JudgeCase) -> str | None:
    rubric = RUBRICS.get(name)
    if rubric is None:
        return None
    parts = []
    if rubric.version:
        parts.append(f"Product version: {case.version or 'not stated'}")
    if rubric.page and case.context.strip():
        parts.append(f"Source page:\n{case.context}")
    return "\n\n".join(parts) or None


def check_score(score: float, name: str, case: JudgeCase, judge: Judge) -> float | None:
    """The score clipped to [0, 1] (GEval's score is the judge's 0-10 divided by 10, and no
    schema bounds the number); None, counted as failed, when it is not a number at all."""
    if not math.isfinite(score):
        judge.stats.failed += 1
        judge.log.warning("judge: %s of case %s is %r; no score", name, case.id, score)
        return None
    return min(max(score, 0.0), 1.0)


async def score_metric(name: str, case: JudgeCase, judge: Judge) -> float | None:
    if not metric_applies(name, case):
        return None
    if not case.answer.strip():
        return 0.0
    metric = build_metric(name, judge)
    extra: dict[str, Any] = {}
    if context := render_additional_context(name, case):
        extra["_additional_context"] = context
    try:
        score = await metric.a_measure(build_test_case(case), _show_indicator=False, **extra)
    except InvalidJudgeReply as exc:
        judge.log.warning("judge: %s of case %s failed: %s", name, case.id, exc)
        return None
    return check_score(float(score), name, case, judge)


async def gather_all(*aws: Awaitable[T]) -> list[T]:
    """Like asyncio.gather, but lets every sibling finish (and cache its replies) before the
    first error is raised."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]


async def judge_case(
    case: JudgeCase, judge: Judge, metrics: Sequence[str]
) -> dict[str, float | None]:
    scores = await gather_all(*(score_metric(name, case, judge) for name in metrics))
    return dict(zip(metrics, scores, strict=True))


async def judge_cases(
    cases: Sequence[JudgeCase], judge: Judge, metrics: Sequence[str]
) -> list[dict[str, float | None]]:
    """One dict per case, in order: metric name -> score in [0, 1] or None. Cases and metrics
    run concurrently; the judge's client bounds the requests in flight. An endpoint that
    fails past its retries fails the whole call (EndpointError) once every other judgement
    has finished and cached its replies: a rerun resumes from the cache."""
    check_metrics(metrics)
    return await gather_all(*(judge_case(case, judge, metrics) for case in cases))
