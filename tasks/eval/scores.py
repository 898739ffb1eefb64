"""Per-model metrics from the raw results, each as {value, n, low, high} under a flat key
(`<metric>.<set>` for question metrics), the keys reports/eval.json and the gate share."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tasks.eval.inputs import EvalInputs, Question
from tasks.eval.literals import invented_share, literal_recall
from tasks.eval.measure import ModelResults
from tasks.eval.stats import bootstrap_mean, bootstrap_ratio

Judged = Mapping[str, Mapping[str, float | None]]  # question id -> metric -> score
# A false-premise answer counts as a correction when the judge scores it at least this.
CORRECTED = 0.5


def summarize_perplexity(results: ModelResults, samples: int, seed: int) -> dict[str, Any]:
    out = {}
    for key, pairs in (
        ("ppl_held_out", results.held_out_nll),
        ("ppl_general", results.general_nll),
    ):
        out[key] = bootstrap_ratio(
            [nll for nll, _ in pairs], [t for _, t in pairs], samples, seed, transform=_exp
        )
    return out


def _exp(x: Any) -> Any:
    import numpy as np

    return np.exp(np.minimum(x, 50.0)) if not isinstance(x, float) else math.exp(min(x, 50.0))


def summarize_choices(
    results: ModelResults,
    questions: Sequence[Question],
    sets: Sequence[str],
    samples: int,
    seed: int,
) -> dict[str, Any]:
    """Share of triples whose right answer is likelier than the wrong one, per kind and set."""
    out = {}
    for s in sets:
        for kind in ("good", "false_premise"):
            wins = [
                float(results.choices[q.id][0] > results.choices[q.id][1])
                for q in questions
                if q.set == s and q.kind == kind and q.id in results.choices
            ]
            out[f"choice_{kind}.{s}"] = bootstrap_mean(wins, samples, seed)
    return out


def mark_not_available(metrics: Mapping[str, Any], why: str) -> dict[str, Any]:
    """The metrics as not measured, and why (told apart from a set without items)."""
    empty = {"value": None, "n": 0, "low": None, "high": None}
    return {key: {**empty, "not_available": why} for key in metrics}


def summarize_answers(
    answers: Mapping[str, str],
    inputs: EvalInputs,
    judged: Judged | None,
    sets: Sequence[str],
    samples: int,
    seed: int,
) -> dict[str, Any]:
    """Literal checks and, when judged, the judge's metrics and the correction rate."""
    out: dict[str, Any] = {}
    for s in sets:
        qs = [q for q in inputs.questions if q.set == s and q.id in answers]

        def collect(
            score: Callable[[Question], float | None], qs: list[Question] = qs
        ) -> list[float]:
            return [v for v in (score(q) for q in qs) if v is not None]

        out[f"literal_recall.{s}"] = bootstrap_mean(
            collect(lambda q: literal_recall(answers[q.id], q.reference)), samples, seed
        )
        out[f"literal_invented.{s}"] = bootstrap_mean(
            collect(lambda q: invented_share(answers[q.id], inputs.sources[q.page_id].text)),
            samples,
            seed,
        )
        if judged is None:
            continue
        names = sorted({m for q in qs for m in judged.get(q.id, {})})
        for name in names:

            def score(q: Question, name: str = name, judged: Judged = judged) -> float | None:
                return judged.get(q.id, {}).get(name)

            out[f"{name}.{s}"] = bootstrap_mean(collect(score), samples, seed)

        def corrected(q: Question, judged: Judged = judged) -> float | None:
            score = judged.get(q.id, {}).get("false_premise")
            if q.kind != "false_premise" or score is None:
                return None
            return float(score >= CORRECTED)

        fp = collect(corrected)
        out[f"correction_rate.{s}"] = bootstrap_mean(fp, samples, seed)
    return out


def gain_share(
    closed: Mapping[str, Any], base: Mapping[str, Any], open_book: Mapping[str, Any], key: str
) -> float | None:
    """The share of the open-book gain (base with the page in context over base closed-book)
    that a model reaches closed-book; None when open-book gains nothing or a value is missing."""
    values = [d.get(key, {}).get("value") for d in (closed, base, open_book)]
    if any(v is None for v in values):
        return None
    final, start, ceiling = values
    if ceiling - start <= 0:
        return None
    return round((final - start) / (ceiling - start), 4)
