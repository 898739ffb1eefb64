"""eval: every model of the pipeline measured side by side on what it was meant to learn.

Run with `dvc repro eval` (or `python -m flows.eval`). Reads params `eval:` (and
`datasets.system_prompt`, the SFT system prompt every answer is asked under), data/eval
(held-out pages, knowledge probes, their source pages) and every model folder: models/base,
models/cpt/<phase>, models/sft/model, models/orpo/model. Per model: perplexity on held-out pages
and on a general-domain canary, closed-book choice accuracy on the probe and held-out triples
(likelihood, judge-free), closed-book answers scored on technical literals and, through the
judge endpoint, with DeepEval; the base model answering open-book is the reference. A served
model listed in `eval.models` (the exported GGUF under llama.cpp, a folder under vLLM) is
measured the same way through its server. Results and judge replies are cached by content in
data/eval_cache. Writes reports/eval.json (metrics), reports/eval_perplexity.csv and
eval_scores.csv (plots), reports/eval.html and reports/eval/ (answers per model, the blind
review sheet and its key).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import run_name
from tasks.core.params import EvalParams, Params, load_stage_params
from tasks.core.report import finish_report
from tasks.eval.inputs import EvalInputs, read_eval_inputs, read_general_text
from tasks.eval.measure import ModelRef, ModelResults
from tasks.eval.run import (
    Judged,
    describe_models,
    judge_models,
    measure_models,
    render_headline,
    resolve_models,
    summarize,
    write_eval_outputs,
)


@task(name="measure-models", cache_policy=NO_CACHE)
def measure(refs: list[ModelRef], inputs: EvalInputs, params: Params) -> list[ModelResults]:
    general = read_general_text(params.eval.general_text)
    return measure_models(
        refs, inputs, general, params.datasets.system_prompt, params.eval, params.paths.eval_cache
    )


@task(name="judge-answers", cache_policy=NO_CACHE)
def judge(
    results: list[ModelResults], inputs: EvalInputs, params: EvalParams, cache: Path
) -> tuple[dict[str, Judged], dict[str, Any]]:
    return judge_models(results, inputs, params, cache)


@flow(name="eval", flow_run_name=run_name("eval"))
def eval_flow(params: Params) -> dict[str, Any]:
    """Measure every stage's model against the base on held-out pages and knowledge probes."""
    started, log = time.monotonic(), get_run_logger()
    refs = resolve_models(params.model_folders(), params.eval.models)
    inputs = read_eval_inputs(params.paths.eval, list(params.eval.sets))
    log.info("%d models, %d questions", len(refs), len(inputs.questions))
    results = measure(refs, inputs, params)
    judged, judge_stats = judge(results, inputs, params.eval, params.paths.eval_cache)
    metrics, reference = summarize(results, inputs, judged, params.eval)
    report: dict[str, Any] = {
        "model_order": [r.name for r in results],  # the report's maps are sorted by key
        "models": describe_models(refs, results),
        "questions": {s: sum(q.set == s for q in inputs.questions) for s in params.eval.sets},
        "metrics": metrics,
        "open_book": reference,
        "headline": render_headline(metrics, reference, params.eval.sets),
        "judge": judge_stats,
    }
    write_eval_outputs(
        params.paths.reports, results, inputs, judged, metrics, reference, report, params.eval
    )
    return finish_report(params.paths.reports, "eval", report, started)


if __name__ == "__main__":
    eval_flow(load_stage_params())
