"""The eval stage's steps: which models, measuring each, judging the answers, and the report."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.core.io import write_text_atomic
from tasks.core.params import EvalParams, ServedModelParams
from tasks.eval.cache import ResultCache
from tasks.eval.inputs import EvalInputs, Question, select_passage
from tasks.eval.measure import ModelRef, ModelResults, measure_model
from tasks.eval.report import (
    OPEN_BOOK_COLUMN,
    measured_keys,
    render_html,
    render_metric_plot,
    render_samples,
    render_table,
    write_answers,
    write_review_sheet,
    write_stage_csvs,
)
from tasks.eval.scores import (
    gain_share,
    mark_not_available,
    summarize_answers,
    summarize_choices,
    summarize_perplexity,
)
from tasks.eval.served import measure_served

Judged = dict[str, dict[str, float | None]]  # question id -> metric -> score


def resolve_models(
    available: Mapping[str, Path], wanted: Sequence[str | ServedModelParams] | None
) -> list[ModelRef]:
    """The pipeline models to evaluate in stage order, then the served ones in the order
    given; an unknown name or a missing folder fails naming it and what exists."""
    names = [w for w in wanted if isinstance(w, str)] if wanted is not None else list(available)
    served = [w for w in wanted or [] if isinstance(w, ServedModelParams)]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"eval.models: unknown model(s) {unknown}; the pipeline's are {list(available)}"
        )
    taken = [s.name for s in served if s.name in available]
    if taken:
        raise ValueError(
            f"eval.models: served model name(s) {taken} are the pipeline's own; name the served "
            f"one otherwise (e.g. {taken[0]}-gguf)"
        )
    refs = [ModelRef(n, available[n]) for n in sorted(names, key=list(available).index)]
    for ref in refs:
        assert ref.folder is not None
        if not (ref.folder / "config.json").is_file():
            raise FileNotFoundError(
                f"model {ref.name}: {ref.folder} holds no transformers model; run "
                f"`dvc repro` up to the stage that writes it"
            )
    if (refs or served) and (not refs or refs[0].name != next(iter(available))):
        raise ValueError("eval.models must include the base model: every figure is read against it")
    return refs + [ModelRef(s.name, None, s) for s in served]


def describe_models(refs: Sequence[ModelRef], results: Sequence[ModelResults]) -> dict[str, Any]:
    """Each model's entry in reports/eval.json: its hash (a served model's: of what its server
    said it serves), where its likelihoods came from, and what the server could not score."""
    out: dict[str, Any] = {}
    for ref, r in zip(refs, results, strict=True):
        entry: dict[str, Any] = {
            "hash": r.hash,
            "answers_generated": r.generated,
            "generate_s": r.generate_s,
            "scoring": r.scoring,
        }
        if ref.served is not None:
            entry["served"] = {"base_url": ref.served.url, "model": ref.served.model}
            entry["unscored"] = r.unscored
        out[r.name] = entry
    return out


def split_general_text(text: str) -> list[str]:
    """Paragraphs, the units the canary's interval resamples."""
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def measure_models(
    refs: Sequence[ModelRef],
    inputs: EvalInputs,
    general: str,
    system: str,
    params: EvalParams,
    cache_dir: Path,
) -> list[ModelResults]:
    cache = ResultCache(cache_dir / "results")
    paragraphs = split_general_text(general)
    return [
        measure_served(ref.served, inputs, paragraphs, system, params, cache)
        if ref.served is not None
        else measure_model(ref, inputs, paragraphs, system, params, cache, open_book=i == 0)
        for i, ref in enumerate(refs)
    ]


def build_judge_cases(
    questions: Sequence[Question],
    answers: Mapping[str, str],
    inputs: EvalInputs,
    context_chars: int,
) -> list[Any]:
    from tasks.eval.judging import JudgeCase

    return [
        JudgeCase(
            id=q.id,
            kind=q.kind,
            question=q.question,
            answer=answers[q.id],
            reference=q.reference,
            context=select_passage(
                inputs.sources[q.page_id].text, f"{q.question} {q.reference}", context_chars
            ),
            version=q.version,
        )
        for q in questions
        if q.id in answers
    ]


def judge_models(
    results: Sequence[ModelResults], inputs: EvalInputs, params: EvalParams, cache_dir: Path
) -> tuple[dict[str, Judged], dict[str, Any]]:
    """The judge's scores per model (and for the open-book reference), and its statistics."""
    if params.judge is None or not params.judge_metrics:
        return {}, {"enabled": False}
    wanted = set(params.judge_models) if params.judge_models is not None else None
    sets: dict[str, Mapping[str, str]] = {
        r.name: r.answers for r in results if wanted is None or r.name in wanted
    }
    if results and results[0].open_answers:
        sets[OPEN_BOOK_COLUMN] = results[0].open_answers
    return asyncio.run(judge_answer_sets(sets, inputs, params, cache_dir))


async def judge_answer_sets(
    sets: Mapping[str, Mapping[str, str]], inputs: EvalInputs, params: EvalParams, cache_dir: Path
) -> tuple[dict[str, Judged], dict[str, Any]]:
    from tasks.eval.judge import Judge
    from tasks.eval.judging import judge_cases
    from tasks.llm.client import EndpointError, build_pool, check_pool

    assert params.judge is not None
    started = time.monotonic()
    # With several URLs the calls are spread across them and one that is down (here or later)
    # is taken out of rotation; with one, the pool is that endpoint's client.
    async with build_pool(params.judge, structured=params.structured) as client:
        try:
            await check_pool(client)
        except EndpointError as exc:
            # A rerun whose verdicts are all cached needs no server; any call that does
            # fails with the same URL and cause.
            client.log.warning("judge endpoint unavailable (%s): judging from the cache", exc)
        judge = Judge(
            client,
            cache_dir / "judge",
            max_parse_attempts=params.max_judge_attempts,
            max_items=params.judge_max_items,
            max_chars=params.judge_max_chars,
        )
        # Every model's cases in one batch, so the endpoint's slots stay busy across models.
        named = [
            (name, case)
            for name, answers in sets.items()
            for case in build_judge_cases(
                inputs.questions, answers, inputs, params.judge_context_chars
            )
        ]
        scores = await judge_cases([c for _, c in named], judge, params.judge_metrics)
        judged: dict[str, Judged] = {name: {} for name in sets}
        for (name, case), score in zip(named, scores, strict=True):
            judged[name][case.id] = score
    stats = {
        "enabled": True,
        "model": params.judge.model,
        "base_url": params.judge.base_url,
        "endpoints_removed": dict(client.removed),
        "structured": params.structured,
        **vars(judge.stats),
        "wall_s": round(time.monotonic() - started, 2),
    }
    # Replies seen, fetched or cached: the invalid ones are counted among both.
    replies = judge.stats.calls + judge.stats.cached
    stats["parsed_share"] = round(1 - judge.stats.invalid / replies, 4) if replies else None
    return judged, stats


def summarize(
    results: Sequence[ModelResults],
    inputs: EvalInputs,
    judged: Mapping[str, Judged],
    params: EvalParams,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per-model metrics, and the open-book reference's."""
    n, seed = params.bootstrap_samples, params.seed
    metrics = {}
    for r in results:
        m = summarize_perplexity(r, n, seed)
        m |= summarize_choices(r, inputs.questions, params.sets, n, seed)
        if r.scoring == "none":
            m = mark_not_available(m, "the server gives no log-likelihoods (scoring: none)")
        m |= summarize_answers(r.answers, inputs, judged.get(r.name), params.sets, n, seed)
        metrics[r.name] = m
    reference = {}
    if results and results[0].open_answers:
        reference = summarize_answers(
            results[0].open_answers, inputs, judged.get(OPEN_BOOK_COLUMN), params.sets, n, seed
        )
    return metrics, reference


# Fewer items than this and a difference says nothing, whatever its interval (a bootstrap of
# one item has a zero-width interval).
MIN_ITEMS_TO_TELL = 5


def render_verdict(base: Mapping[str, Any], final: Mapping[str, Any]) -> str:
    if min(base["n"], final["n"]) < MIN_ITEMS_TO_TELL:
        return f"too few items to tell (fewer than {MIN_ITEMS_TO_TELL})"
    if not (final["low"] > base["high"] or final["high"] < base["low"]):
        return "within the intervals: no measurable change"
    return "better" if final["value"] > base["value"] else "worse"


HEADLINE_KEYS = (
    "correctness",
    "literal_recall",
    "choice_good",
    "choice_false_premise",
    "correction_rate",
)


def render_headline(
    metrics: Mapping[str, Mapping[str, Any]], reference: Mapping[str, Any], sets: Sequence[str]
) -> dict[str, Any]:
    """Final model against base, in sentences, and the share of the open-book gain reached."""
    names = list(metrics)
    base, final = names[0], names[-1]
    lines, shares = [], {}
    for s in sets:
        for key in (f"{k}.{s}" for k in HEADLINE_KEYS):
            a, b = metrics[base].get(key), metrics[final].get(key)
            if not a or not b or a.get("value") is None or b.get("value") is None:
                continue
            verdict = render_verdict(a, b)
            lines.append(
                f"{key}: {base} {a['value']:.3g} → {final} {b['value']:.3g} (n={b['n']}; {verdict})"
            )
            share = gain_share(metrics[final], metrics[base], reference, key)
            if share is not None:
                shares[key] = share
                lines.append(
                    f"{key}: {final} closed-book reaches {share:.0%} of the open-book gain"
                )
    for key in ("ppl_held_out", "ppl_general"):
        a, b = metrics[base].get(key), metrics[final].get(key)
        if a and b and a.get("value") and b.get("value"):
            lines.append(
                f"{key}: {base} {a['value']:.4g} → {final} {b['value']:.4g} (lower is better)"
            )
    if not lines:
        lines.append("no question had both a base and a final answer: the eval sets are empty")
    return {"base": base, "final": final, "open_book_gain_share": shares, "lines": lines}


def write_eval_outputs(
    reports: Path,
    results: Sequence[ModelResults],
    inputs: EvalInputs,
    judged: Mapping[str, Judged],
    metrics: Mapping[str, dict[str, Any]],
    reference: Mapping[str, Any],
    report: dict[str, Any],
    params: EvalParams,
) -> None:
    """Answers per model, the review sheet, the plot CSVs and reports/eval.html."""
    folder = reports / "eval"
    for r in results:
        write_answers(folder / "answers", r.name, inputs.questions, r.answers, judged.get(r.name))
    if results and results[0].open_answers:
        write_answers(
            folder / "answers",
            "base-open-book",
            inputs.questions,
            results[0].open_answers,
            judged.get(OPEN_BOOK_COLUMN),
        )
    first, last = results[0], results[-1]
    report["review_questions"] = write_review_sheet(
        folder,
        inputs.questions,
        first.answers,
        last.answers,
        (first.name, last.name),
        params.review_sample,
        params.seed,
    )
    write_stage_csvs(reports, metrics)
    models = list(metrics)
    keys, _ = measured_keys(metrics, reference)
    plots = [render_metric_plot(k, models, metrics, reference) for k in keys]
    answers = {r.name: r.answers for r in results}
    samples = render_samples(inputs, answers, (first.name, last.name), judged, params.review_sample)
    page = render_html(report, plots, render_table(models, metrics, reference), samples)
    write_text_atomic(reports / "eval.html", page)
