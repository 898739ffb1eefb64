"""The flow's side of a cpt phase: checking its inputs, keeping or clearing its checkpoints,
running the launcher with its log streamed line by line, and turning what the trainer wrote
into the model folder, the step plot and the report."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tasks.cpt_config import (
    DS_CONFIG_FILE,
    FINGERPRINT_FILE,
    RUN_FILE,
    TRAIN_PARAMS_FILE,
    RunSpec,
)
from tasks.io import read_jsonl, write_json_atomic, write_text_atomic

STEP_COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "memory_mb")


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


def hash_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_folder(folder: Path) -> str:
    """Content hash of every file under `folder` (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{hash_file(path)}\n".encode())
    return digest.hexdigest()


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


def find_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def split_lines(buffer: bytes) -> tuple[list[str], bytes]:
    """Complete lines (ended by \\n or a progress bar's \\r) and the unfinished rest."""
    *lines, rest = re.split(rb"\r\n|\r|\n", buffer)
    return [line.decode("utf-8", "replace") for line in lines if line.strip()], rest


def run_streaming(
    command: list[str], env: Mapping[str, str], log: Callable[[str], None], tail: int = 40
) -> tuple[int, list[str]]:
    """Run `command`, passing each line of its output to `log` as it comes; returns the exit
    code and the last `tail` lines. Interrupting the caller stops the whole process group."""
    proc = subprocess.Popen(
        command,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    last: deque[str] = deque(maxlen=tail)
    buffer = b""
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            lines, buffer = split_lines(buffer + chunk)
            for line in lines:
                last.append(line)
                log(line)
        if buffer.strip():
            last.append(buffer.decode("utf-8", "replace"))
            log(last[-1])
        return proc.wait(), list(last)
    except BaseException:
        stop_process_group(proc)
        raise


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the launcher's process group (every rank), then SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


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
    final.parent.mkdir(parents=True, exist_ok=True)
    ready, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    for leftover in (ready, old):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.move(staging, ready)  # a rename, or a copy when the checkpoints live elsewhere
    if final.exists():
        os.replace(final, old)
    os.replace(ready, final)
    shutil.rmtree(old, ignore_errors=True)


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
