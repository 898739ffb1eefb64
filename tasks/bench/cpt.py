"""Training throughput of the cpt trainer against a bare loop:
`python -m tasks.bench.cpt [--seq-len 512] [--steps 4] [--out reports/bench_cpt.json]`.

Same model (models/base if it exists, else a small random Llama; --small forces it), same rows
(one random document per row, seq_len tokens, micro-batch 1), same threads, in one run:
- bare: transformers forward + backward + torch AdamW, in this process;
- trainer: tasks.cpt.train under the deepspeed launcher, 1 process, the params' DeepSpeed
  block (ZeRO stage, clipping, AdamW, schedule); its per-step tokens/s (start-up and
  checkpoint time excluded, as for the bare loop).
The first step of each is warm-up, left out. Other work on a shared machine changes the speed
from one minute to the next (here a single step's time varied sixfold), so the bare loop runs
before and after the trainer, and the ratio is of the median steps' tokens/s; beside it, of
the median tokens per CPU second (process time, every thread) and of the fastest steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tasks.core.io import write_json_atomic
from tasks.core.packed import PackedRow, PhaseMeta, Segment, write_phase
from tasks.core.params import CptParams, load_params
from tasks.core.procs import free_port, stream_process
from tasks.cpt.config import RUN_FILE, render_launch_command, render_launch_env, render_run_spec
from tasks.cpt.launch import read_step_log, write_run_spec

SMALL_LLAMA: dict[str, Any] = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
}


def write_small_model(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMALL_LLAMA)).save_pretrained(str(folder))
    return folder


def read_vocab_size(model_dir: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(model_dir)).vocab_size)


def write_random_phase(folder: Path, rows: int, seq_len: int, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows, seq_len), generator=gen).tolist()
    packed = [PackedRow(r, [Segment(i, 0, seq_len)]) for i, r in enumerate(ids)]
    meta = PhaseMeta("bench", seq_len, 0, 0, "random", 0, [], {})
    write_phase(folder, packed, meta, shard_rows=rows)
    return ids


def measure_bare(model_dir: Path, rows: list[list[int]], lr: float) -> list[tuple[float, float]]:
    """Tokens per wall second and per CPU second of each forward + backward + AdamW step over
    rows[1:] (rows[0] warms up)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="sdpa"
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rates = []
    for row in rows:
        wall, cpu = time.perf_counter(), time.process_time()
        ids = torch.tensor([row])
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append((len(row) / wall, len(row) / cpu))
    return rates[1:]


def measure_trainer(
    params: CptParams, model_dir: Path, work: Path, steps: int, seq_len: int
) -> list[tuple[float, float]]:
    phase = {"bench": {"seq_len": seq_len, "init_from": model_dir, "max_steps": steps}}
    bench = params.model_copy(
        update={
            "phases": CptParams.model_validate({"phases": phase}).phases,
            "checkpoints": work / "checkpoints",
            "checkpoint_steps": steps,
            "processes_per_node": 1,
            "nodes": 1,
            "sequence_parallel": 1,
        }
    )
    spec = render_run_spec(bench, bench.phases[0], steps, work / "data")
    spec.checkpoint_dir.mkdir(parents=True)
    write_run_spec(spec)
    command = render_launch_command(bench, spec.checkpoint_dir / RUN_FILE, free_port())
    env = render_launch_env(os.environ, bench, cuda=torch.cuda.is_available(), cores=threads())
    code, tail = stream_process(command, env, lambda line: None)
    if code != 0:
        raise RuntimeError("the trainer failed:\n" + "\n".join(tail))
    return [(r["tokens"] / r["step_s"], r["tokens"] / r["cpu_s"]) for r in read_step_log(spec)[1:]]


def ratio(
    trainer: list[tuple[float, float]],
    bare: list[tuple[float, float]],
    column: int,
    pick: Callable[[list[float]], float],
) -> float:
    return round(pick([r[column] for r in trainer]) / pick([r[column] for r in bare]), 3)


def threads() -> int:
    return torch.get_num_threads()


def run_bench(seq_len: int, steps: int, base: Path | None) -> dict[str, Any]:
    params = load_params("cpt", CptParams)
    with tempfile.TemporaryDirectory(prefix="bench_cpt.") as tmp:
        work = Path(tmp)
        model_dir = base if base is not None else write_small_model(work / "m")
        rows = write_random_phase(
            work / "data" / "bench", steps, seq_len, read_vocab_size(model_dir)
        )
        lr = float(params.deepspeed["optimizer"]["params"]["lr"])
        load_before = os.getloadavg()[0]
        bare = measure_bare(model_dir, rows, lr)
        trainer = measure_trainer(params, model_dir, work, steps, seq_len)
        bare += measure_bare(model_dir, rows, lr)
        load_after = os.getloadavg()[0]
    return {
        "model": str(base) if base is not None else f"random Llama {SMALL_LLAMA}",
        "seq_len": seq_len,
        "micro_batch": 1,
        "steps_measured": {"bare": len(bare), "trainer": len(trainer)},
        "threads": threads(),
        "cores": os.cpu_count(),
        "zero_stage": params.deepspeed["zero_optimization"]["stage"],
        "gradient_clipping": params.deepspeed["gradient_clipping"],
        "bare_tokens_per_s": [round(r[0], 2) for r in bare],
        "trainer_tokens_per_s": [round(r[0], 2) for r in trainer],
        "bare_tokens_per_cpu_s": [round(r[1], 2) for r in bare],
        "trainer_tokens_per_cpu_s": [round(r[1], 2) for r in trainer],
        "ratio": ratio(trainer, bare, 0, statistics.median),  # median tokens/s, the headline
        "ratio_cpu": ratio(trainer, bare, 1, statistics.median),
        "ratio_fastest": ratio(trainer, bare, 0, max),
        "goal": 0.8,
        "load_average": {"before": load_before, "after": load_after},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="including one warm-up step")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_cpt.json"))
    parser.add_argument(
        "--model", type=Path, default=None, help="default: models/base, else a small random Llama"
    )
    parser.add_argument("--small", action="store_true", help="the small random Llama")
    args = parser.parse_args()
    base = args.model or Path("models/base")
    if args.small or not (base / "config.json").is_file():
        base = None
    report = run_bench(args.seq_len, args.steps, base)
    write_json_atomic(args.out, report)
    print(report)


if __name__ == "__main__":
    main()
