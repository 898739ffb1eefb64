"""Answers per second of the eval stage against a bare transformers generate loop, on the same
model and questions in the same run; with `--judge`, the judge's requests per second against
the same requests sent straight to the endpoint: `python -m tasks.bench.eval [--model
models/base] [--questions 16] [--judge [--metrics M ...]] [--out reports/bench_eval.json]`.

The stage's path (tasks.eval.measure: chat template, batched greedy generation, the result
cache, here empty) and the bare loop (one `model.generate` per question, greedy, same length
limit) answer the questions of data/eval (probes and held-out, repeated to `--questions`). The
judge part scores those answers with eval.judge_metrics through the stage's Judge (DeepEval,
constrained decoding, an empty cache), records every request it sends, then sends the same
requests again with the bare openai SDK at the same concurrency (the server's prompt cache then
favours the replay, if anything). It needs the judge endpoint up (`make demo` starts it; or
`python -m tasks.llm.server --port 8766`). The CPU is shared with whatever else runs: the load
average is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.core.io import write_json_atomic
from tasks.core.params import load_stage_params
from tasks.eval.cache import ResultCache
from tasks.eval.inputs import read_eval_inputs
from tasks.eval.lm import load_model, render_chat_ids
from tasks.eval.measure import LazyModel, measure_answers
from tasks.eval.run import build_judge_cases


def bare_loop(folder: Path, system: str, questions: list[str], max_new_tokens: int) -> float:
    """Seconds for one plain `generate` per question."""
    import torch

    lm = load_model(folder)
    started = time.perf_counter()
    for q in questions:
        ids = torch.tensor([render_chat_ids(lm, system, q)])
        with torch.inference_mode():
            lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=lm.pad_id,
            )
    return time.perf_counter() - started


def stage_path(
    folder: Path, system: str, questions: list[str], params: Any
) -> tuple[float, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        lazy = LazyModel(folder)
        lazy.get()  # loading is not generation: both sides start with the model in memory
        started = time.perf_counter()
        answers, _ = measure_answers(
            lazy, "bench", questions, system, params, ResultCache(Path(tmp)), None
        )
        return time.perf_counter() - started, answers


def judge_both_ways(
    params: Any, inputs: Any, answers: dict[str, str], metrics: list[str]
) -> dict[str, Any]:
    """Seconds of the stage's judge over the answers, and of its recorded requests replayed;
    how many of its replies parsed."""
    import asyncio

    import openai

    from tasks.eval.judge import Judge
    from tasks.eval.judging import judge_cases
    from tasks.llm.client import build_client, schema_body

    sent: list[tuple[str, Any]] = []

    class RecordingJudge(Judge):
        async def ask(self, prompt: str, schema: Any, attempt: int) -> Any:
            sent.append((prompt, schema))
            return await super().ask(prompt, schema, attempt)

    endpoint = params.eval.judge
    cases = build_judge_cases(inputs.questions, answers, inputs, params.eval.judge_context_chars)

    async def through_stage(cache: Path) -> tuple[float, Any]:
        async with build_client(endpoint, structured=params.eval.structured) as client:
            judge = RecordingJudge(
                client,
                cache,
                max_parse_attempts=params.eval.max_judge_attempts,
                max_items=params.eval.judge_max_items,
                max_chars=params.eval.judge_max_chars,
            )
            started = time.perf_counter()
            await judge_cases(cases, judge, metrics)
            return time.perf_counter() - started, judge.stats

    async def straight() -> float:
        sdk = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key())
        slots = asyncio.Semaphore(endpoint.concurrency)
        s = endpoint.sampling
        sampling = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        sampling |= {"seed": s.seed} if s.seed is not None else {}

        async def one(prompt: str, schema: Any) -> None:
            body = {**sampling, **(schema_body(params.eval.structured, schema) if schema else {})}
            async with slots:
                await sdk.chat.completions.create(
                    model=endpoint.model,
                    messages=[{"role": "user", "content": prompt}],
                    extra_body=body,
                )

        started = time.perf_counter()
        await asyncio.gather(*(one(p, s) for p, s in sent))
        await sdk.close()
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        stage_s, stats = asyncio.run(through_stage(Path(tmp)))
    straight_s = asyncio.run(straight())
    return {
        "judge_model": endpoint.model,
        "judge_metrics": metrics,
        "judge_cases": len(cases),
        "judge_requests": len(sent),
        "judge_replies_invalid": stats.invalid,
        "judge_replies_parsed_share": round(1 - stats.invalid / max(stats.calls, 1), 4),
        "judge_judgements_failed": stats.failed,
        "judge_stage_requests_per_s": round(len(sent) / stage_s, 3),
        "judge_straight_requests_per_s": round(len(sent) / straight_s, 3),
        "judge_stage_vs_straight": round(straight_s / stage_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--judge", action="store_true", help="also measure the judge")
    parser.add_argument(
        "--metrics", nargs="+", default=None, help="judge metrics (default eval.judge_metrics)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench_eval.json"))
    args = parser.parse_args()
    params = load_stage_params()
    folder = args.model or params.paths.base_model
    inputs = read_eval_inputs(params.paths.eval, list(params.eval.sets))
    pool = [q.question for q in inputs.questions] or ["What does VACUUM do?"]
    questions = (pool * (args.questions // len(pool) + 1))[: args.questions]
    system = params.datasets.system_prompt
    load = os.getloadavg()[0]
    bare_s = bare_loop(folder, system, questions, params.eval.max_new_tokens)
    stage_s, answers = stage_path(folder, system, questions, params.eval)
    report = {
        "model": str(folder),
        "questions": len(questions),
        "max_new_tokens": params.eval.max_new_tokens,
        "batch_size": params.eval.batch_size,
        "bare_answers_per_s": round(len(questions) / bare_s, 3),
        "stage_answers_per_s": round(len(questions) / stage_s, 3),
        "stage_vs_bare": round(bare_s / stage_s, 3),
        "load_average_1m_before": round(load, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    if args.judge:
        by_id = dict(zip((q.id for q in inputs.questions), answers, strict=False))
        metrics = args.metrics or list(params.eval.judge_metrics)
        report |= judge_both_ways(params, inputs, by_id, metrics)
        report["load_average_1m_after_judge"] = round(os.getloadavg()[0], 2)
    write_json_atomic(args.out, report)
    print(report)


if __name__ == "__main__":
    main()
