"""The flow's side of a cpt phase: checking its inputs, keeping or clearing its checkpoints,
running the launcher with its log streamed line by line, and turning what the trainer wrote
into the model folder, the step plot and the report."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tasks.core.hashing import hash_folder
from tasks.core.io import (
    promote_folder,
    read_jsonl,
    write_json_atomic,
    write_text_atomic,
)
from tasks.cpt.config import (
    DS_CONFIG_FILE,
    FINGERPRINT_FILE,
    RUN_FILE,
    TRAIN_PARAMS_FILE,
    RunSpec,
)

STEP_COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "memory_mb")
# A first build of DeepSpeed's CPU op takes about a minute, ten on a loaded machine.
STALE_BUILD_LOCK_S = 20 * 60


def find_torch_extensions_dir(env: dict[str, str] | os._Environ[str]) -> Path:
    """Where torch builds C++ extensions (DeepSpeed's ops, on first use): TORCH_EXTENSIONS_DIR,
    else torch_extensions in the user's cache folder."""
    if env.get("TORCH_EXTENSIONS_DIR"):
        return Path(env["TORCH_EXTENSIONS_DIR"])
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "torch_extensions"


def find_stale_build_locks(
    root: Path, older_than_s: float = STALE_BUILD_LOCK_S, now: float | None = None
) -> list[Path]:
    """Build locks older than `older_than_s`. A build killed part-way leaves its lock behind, and
    torch then waits on it forever, with no message, in every later run."""
    now = time.time() if now is None else now
    # <root>/<op>/lock with TORCH_EXTENSIONS_DIR set, <root>/py311_cpu/<op>/lock by default
    locks = [*root.glob("*/lock"), *root.glob("*/*/lock")] if root.is_dir() else []
    return sorted(p for p in locks if now - p.stat().st_mtime > older_than_s)


def check_phase_inputs(spec: RunSpec) -> None:
    """Fail before any work when the starting model or the packed rows are missing."""
    if not (spec.init_from / "config.json").is_file():
        raise FileNotFoundError(
            f"{spec.init_from}: no transformers model (config.json) to start phase {spec.phase} "
            "from; run the stage that writes it first (`dvc repro model`, or the previous phase)"
        )
    if not (spec.data_dir / "meta.json").is_file():
        raise FileNotFoundError(
            f"{spec.data_dir}/meta.json not found: run `dvc repro datasets` first (it packs "
            f"one folder per cpt phase)"
        )


def read_input_hashes(spec: RunSpec) -> dict[str, str]:
    return {"init_from": hash_folder(spec.init_from), "data": hash_folder(spec.data_dir)}


def prepare_checkpoint_dir(folder: Path, fingerprint: dict[str, Any]) -> str:
    """Keep the checkpoints of a run with the same fingerprint (so it resumes); clear them
    otherwise. Returns what happened, for the log and the report."""
    path = folder / FINGERPRINT_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old == fingerprint:
            return "resume" if (folder / "latest").is_file() else "fresh"
        changed = sorted(
            key
            for part in ("settings", "inputs")
            for key in set(old.get(part, {})) | set(fingerprint[part])
            if old.get(part, {}).get(key) != fingerprint[part].get(key)
        )
        outcome = f"restart: {', '.join(changed) or 'format'} changed since the checkpoints"
    elif folder.exists() and any(folder.iterdir()):
        outcome = "restart: checkpoints without a fingerprint"
    else:
        outcome = "fresh"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_json_atomic(path, fingerprint)
    return outcome


def write_run_spec(spec: RunSpec) -> Path:
    path = spec.checkpoint_dir / RUN_FILE
    write_text_atomic(path, spec.model_dump_json(indent=2) + "\n")
    return path


def read_trainer_result(spec: RunSpec) -> dict[str, Any]:
    return dict(json.loads(spec.result_file.read_text(encoding="utf-8")))


def read_step_log(spec: RunSpec) -> list[dict[str, Any]]:
    return list(read_jsonl(spec.steps_file)) if spec.steps_file.is_file() else []


def render_steps_csv(records: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=STEP_COLUMNS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def write_model_folder(
    spec: RunSpec, final: Path, train_params: dict[str, Any], tokenizer_from: Path
) -> None:
    """The trainer's export plus the tokenizer, ds_config.json and train_params.json, moved into
    `final` in one rename: `final` holds the old model or the new one, never a mix."""
    from transformers import AutoTokenizer

    staging = spec.export_dir
    if not (staging / "config.json").is_file():
        raise FileNotFoundError(f"{staging}: the trainer wrote no model")
    AutoTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(str(staging))
    write_json_atomic(staging / DS_CONFIG_FILE, spec.ds_config)
    write_json_atomic(staging / TRAIN_PARAMS_FILE, train_params)
    promote_folder(staging, final)  # a rename, or a copy when the checkpoints live elsewhere


def render_report(
    spec: RunSpec,
    checkpoints: str,
    result: dict[str, Any],
    steps: list[dict[str, Any]],
    perplexity: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """reports/cpt_<phase>.json: the run, its final step, loss and held-out perplexity."""
    final = steps[-1] if steps else {}
    return {
        "phase": spec.phase,
        "seq_len": spec.seq_len,
        "init_from": str(spec.init_from),
        "checkpoints": checkpoints,
        "run": result,
        "final": {k: final.get(k) for k in STEP_COLUMNS},
        "loss": {
            "first": steps[0]["loss"] if steps else None,
            "last": final.get("loss"),
            "min": min((s["loss"] for s in steps), default=None),
        },
        "peak_memory_mb": max((s["memory_mb"] for s in steps), default=None),
        "perplexity": perplexity,
    }
