"""Seconds per optimizer step of the sft and orpo stages on the default model:
`python -m tasks.bench.sft [--steps 6] [--out reports/bench_sft.json]`.

The model is the last CPT phase's folder, else models/base; the sets are data/sft and
data/orpo, else built the same way from data/qa and data/pref (so the bench runs before the
datasets stage has). Each stage runs `llamafactory-cli train` with the shipped params, only
shorter and without checkpoints; a step's time is the gap between consecutive loss lines of
its output (the first step, which includes warm-up, is reported apart), and the tokens of a
step come from HF Trainer's num_input_tokens_seen. The CPU is shared with whatever else runs:
the load average is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tasks.core.io import read_jsonl, write_json_atomic
from tasks.core.params import (
    CptParams,
    DatasetsParams,
    FineTuneParams,
    OrpoParams,
    PathsParams,
    SftParams,
    load_params,
)
from tasks.core.records import DOMAIN_PREF, DOMAIN_SFT, PreferenceTriple, QAPair
from tasks.datasets.chat_sets import (
    pref_info,
    render_dataset_info,
    render_pref_row,
    render_sft_row,
    sft_info,
)
from tasks.finetune.llamafactory import (
    StageLayout,
    build_env,
    llamafactory_cli,
    read_log_history,
    render_train_config,
    render_yaml,
    run_streamed,
)


def find_default_model(cpt: CptParams, paths: PathsParams) -> Path:
    last = cpt.output / cpt.phases[-1].name
    return last if (last / "config.json").is_file() else paths.base_model


def write_sets_from_synth(root: Path, paths: PathsParams, system: str) -> tuple[Path, Path]:
    """data/sft and data/orpo rendered from synth's output, when the datasets stage has not run."""
    sft, orpo = root / "sft", root / "orpo"
    pairs = [QAPair(**r) for r in read_jsonl(paths.qa / "pairs.jsonl")]
    triples = [PreferenceTriple(**r) for r in read_jsonl(paths.pref / "triples.jsonl")]
    write_json_atomic(sft / f"{DOMAIN_SFT}.json", [render_sft_row(p, system) for p in pairs])
    write_json_atomic(sft / "dataset_info.json", {DOMAIN_SFT: sft_info(f"{DOMAIN_SFT}.json")})
    write_json_atomic(orpo / f"{DOMAIN_PREF}.json", [render_pref_row(t, system) for t in triples])
    write_json_atomic(
        orpo / "dataset_info.json",
        render_dataset_info({DOMAIN_PREF: pref_info(f"{DOMAIN_PREF}.json")}),
    )
    return sft, orpo


def time_steps(argv: list[str], env: dict[str, str]) -> tuple[list[float], float]:
    """Arrival times of the loss lines, relative to the start; and the whole run's seconds."""
    started = time.monotonic()
    stamps: list[float] = []

    def sink(line: str) -> None:
        if line.startswith("{'loss': "):
            stamps.append(time.monotonic() - started)

    run_streamed(argv, env, sink, what="bench")
    return stamps, time.monotonic() - started


def bench_stage(
    stage: str, params: FineTuneParams, model: Path, data: Path, name: str, steps: int, tmp: Path
) -> dict[str, Any]:
    layout = StageLayout(tmp / stage, tmp / stage / "run")
    train = {
        **params.train,
        "max_steps": steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "include_num_input_tokens_seen": True,
    }
    extra = {"pref_loss": "orpo"} if stage == "dpo" else None
    config = render_train_config(stage, model, [name], data, layout, train, False, extra)
    layout.output.mkdir(parents=True)
    layout.train_yaml.write_text(render_yaml(config, f"bench_sft: {stage}"))
    argv = [llamafactory_cli(), "train", str(layout.train_yaml)]
    stamps, total = time_steps(argv, build_env(os.environ, 1, False))
    history = [e for e in read_log_history(layout.checkpoints) if "loss" in e]
    tokens = [e.get("num_input_tokens_seen", 0) for e in history]
    per_step = [b - a for a, b in zip([0, *tokens], tokens, strict=False)]
    sequences = train["per_device_train_batch_size"] * train["gradient_accumulation_steps"]
    sequences *= 2 if stage == "dpo" else 1  # chosen and rejected each run through the model
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "steps": len(stamps),
        "s_per_step": round(statistics.median(gaps), 3) if gaps else None,
        "s_per_step_min": round(min(gaps), 3) if gaps else None,  # the least disturbed step
        "s_per_step_each": [round(g, 3) for g in gaps],
        "first_step_s": round(stamps[0], 2) if stamps else None,
        "run_s": round(total, 2),
        "cutoff_len": train.get("cutoff_len"),
        "sequences_per_step": sequences,
        "tokens_per_step": round(statistics.mean(per_step), 1) if per_step else None,
        "tokens_per_sequence": round(statistics.mean(per_step) / sequences, 1)
        if per_step
        else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--model", type=Path, default=None, help="default: last cpt, else base")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_sft.json"))
    args = parser.parse_args(argv)
    paths = load_params("paths", PathsParams)
    sft, orpo = load_params("sft", SftParams), load_params("orpo", OrpoParams)
    model = args.model or find_default_model(load_params("cpt", CptParams), paths)
    system = load_params("datasets", DatasetsParams).system_prompt
    report: dict[str, Any] = {
        "model": str(model),
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sft_data, orpo_data = paths.sft, paths.orpo
        if not (sft_data / "dataset_info.json").is_file():
            sft_data, orpo_data = write_sets_from_synth(root / "data", paths, system)
        report["sets"] = {"sft": str(sft_data), "orpo": str(orpo_data)}
        report["sft"] = bench_stage("sft", sft, model, sft_data, DOMAIN_SFT, args.steps, root)
        report["orpo"] = bench_stage("dpo", orpo, model, orpo_data, DOMAIN_PREF, args.steps, root)
    report["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    write_json_atomic(args.out, report)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
