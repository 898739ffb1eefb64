"""Answers per second of the eval stage against a bare transformers generate loop, on the same
model and questions in the same run: `python -m tasks.bench.eval [--model models/base]
[--questions 16] [--out reports/bench_eval.json]`.

The stage's path (tasks.eval.measure: chat template, batched greedy generation, the result
cache, here empty) and the bare loop (one `model.generate` per question, greedy, same length
limit) answer the questions of data/eval (probes and held-out, repeated to `--questions`). The
CPU is shared with whatever else runs: the load average is recorded beside the numbers.
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


def stage_path(folder: Path, system: str, questions: list[str], params: Any) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        lazy = LazyModel(folder)
        lazy.get()  # loading is not generation: both sides start with the model in memory
        started = time.perf_counter()
        measure_answers(lazy, "bench", questions, system, params, ResultCache(Path(tmp)), None)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--questions", type=int, default=16)
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
    stage_s = stage_path(folder, system, questions, params.eval)
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
    write_json_atomic(args.out, report)
    print(report)


if __name__ == "__main__":
    main()
