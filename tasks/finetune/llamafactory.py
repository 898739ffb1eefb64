"""LlamaFactory as a subprocess, for the sft and orpo stages: the YAML each runs, generated from
params; the run itself, its output streamed line by line into the Prefect run logger; resume
from the newest complete checkpoint; a NaN loss stopping the run; the loss (and ORPO margin)
curves; and the LoRA merge through `llamafactory-cli export`.

LlamaFactory is only ever started as `llamafactory-cli`, never imported, so its version and
ours meet in one place: the YAML keys.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.core.env import QUIET_ENV, hub_env
from tasks.core.hashing import hash_paths
from tasks.core.io import (
    promote_folder,
    read_jsonl,
    staging_folder,
    write_json_atomic,
    write_text_atomic,
)
from tasks.core.params import NodesParams
from tasks.core.procs import stream_process

# The stages' quiet settings (no telemetry), and lines reach the Prefect log as they are printed.
# Hub access follows the flow's own environment (tasks.core.env), which the run inherits.
RUN_ENV = {**QUIET_ENV, "PYTHONUNBUFFERED": "1"}
# Changing how long a run is, or how often it logs, evaluates and saves, continues it from its
# newest checkpoint; changing anything else (a setting, the model, the data) starts afresh.
RUN_LENGTH_KEYS = frozenset(
    {
        "max_steps",
        "num_train_epochs",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "eval_steps",
    }
)
FINGERPRINT_FILE = "docs2model_run.json"
TRAINER_STATE = "trainer_state.json"
TRAINER_LOG = "trainer_log.jsonl"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# HF Trainer prints each log as a dict, e.g. {'loss': 'nan', 'grad_norm': ...}; LlamaFactory's
# ORPO adds sft_loss and odds_ratio_loss.
NONFINITE_LOSS = re.compile(r"""['"](\w*loss)['"]:\s*['"]?(nan|[+-]?inf)\b""", re.IGNORECASE)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


class LlamaFactoryError(RuntimeError):
    """A LlamaFactory run failed; the message says which stage and what to do."""


class NonFiniteLoss(LlamaFactoryError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class StageLayout:
    """Where one stage writes: the product under `output`, the resumable run under `checkpoints`."""

    output: Path
    checkpoints: Path

    @property
    def train_yaml(self) -> Path:
        return self.output / "train.yaml"

    @property
    def export_yaml(self) -> Path:
        return self.output / "export.yaml"

    @property
    def deepspeed_json(self) -> Path:
        return self.output / "deepspeed.json"

    @property
    def adapter(self) -> Path:
        return self.output / "adapter"

    @property
    def model(self) -> Path:
        return self.output / "model"

    @property
    def staging(self) -> Path:
        return self.output / "model.partial"


def check_model_folder(path: Path, key: str, producer: str) -> Path:
    """A transformers folder to start from, or an error naming the key and the stage that
    writes it."""
    if not (path / "config.json").is_file():
        raise LlamaFactoryError(
            f"{key}: {path} is not a transformers model folder (no config.json); "
            f"run `dvc repro {producer}` first, or point {key} at one"
        )
    return path


def read_dataset_names(
    dataset_dir: Path, required: Sequence[str], optional: Sequence[str] = ()
) -> list[str]:
    """The sets to train on, from the dataset_dir's dataset_info.json: every required one and
    the optional ones present."""
    info_file = dataset_dir / "dataset_info.json"
    if not info_file.is_file():
        raise LlamaFactoryError(f"{info_file} not found; run `dvc repro datasets` first")
    info = json.loads(info_file.read_text("utf-8"))
    missing = [name for name in required if name not in info]
    if missing:
        raise LlamaFactoryError(
            f"{info_file} lists no {missing} (it has {sorted(info)}); run `dvc repro datasets`"
        )
    return [*required, *(name for name in optional if name in info)]


def count_set_rows(dataset_dir: Path, name: str) -> int:
    """Rows of one set of a dataset_dir, through its dataset_info.json entry (0 for a set
    read from the hub: its size is only known once LlamaFactory downloads it)."""
    info = json.loads((dataset_dir / "dataset_info.json").read_text("utf-8"))
    file_name = info[name].get("file_name")
    if file_name is None:
        return 0
    return len(json.loads((dataset_dir / file_name).read_text("utf-8")))


def count_exclusions(dataset_dir: Path) -> dict[str, int]:
    """What the datasets stage left out of this set, by reason."""
    path = dataset_dir / "exclusions.jsonl"
    if not path.is_file():
        return {}
    return dict(sorted(Counter(row["reason"] for row in read_jsonl(path)).items()))


def describe_thin_set(dataset_dir: Path, name: str, rows: int, minimum: int) -> str:
    """Why a stage does not train: the set, its size, what was dropped, and the fix."""
    dropped = ", ".join(f"{n} {reason}" for reason, n in count_exclusions(dataset_dir).items())
    return (
        f"{dataset_dir}: set {name} has {rows} row(s), fewer than datasets.min_examples "
        f"({minimum}); the datasets stage dropped {dropped or 'nothing'} "
        f"({dataset_dir}/exclusions.jsonl), so synth kept too little. To train: give synth more "
        "to work with (crawl.max_pages, crawl.max_depth), a stronger model behind "
        "synth.endpoint, or lower datasets.min_examples"
    )


def check_set_size(dataset_dir: Path, name: str, minimum: int) -> str | None:
    """Why a stage must not train on set `name` (fewer than `minimum` rows), or None."""
    rows = count_set_rows(dataset_dir, name)
    return describe_thin_set(dataset_dir, name, rows, minimum) if rows < minimum else None


def render_mix(datasets: Sequence[str], train: Mapping[str, Any], ratio: float) -> dict[str, Any]:
    """LlamaFactory's interleave_probs for [domain, general] from the general set's share,
    when several sets are interleaved and params give no probabilities of their own."""
    if len(datasets) < 2:
        # nothing to mix, and LlamaFactory wants as many probabilities as sets
        return {"interleave_probs": None}
    interleaved = str(train.get("mix_strategy", "concat")).startswith("interleave")
    if not interleaved or train.get("interleave_probs") is not None:
        return {}
    return {"interleave_probs": f"{1 - ratio:g},{ratio:g}"}


def render_train_config(
    stage: str,
    model: Path,
    datasets: Sequence[str],
    dataset_dir: Path,
    layout: StageLayout,
    train: Mapping[str, Any],
    deepspeed: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole train YAML: the keys the flow owns, then params' LlamaFactory keys as given
    (`extra` overrides both: the stage-specific keys like pref_loss, or derived mix settings;
    a None there drops the key)."""
    config: dict[str, Any] = {
        "stage": stage,
        "do_train": True,
        "model_name_or_path": str(model),
        "dataset": ",".join(datasets),
        "dataset_dir": str(dataset_dir),
        "output_dir": str(layout.checkpoints),
        "report_to": "none",
        "logging_nan_inf_filter": False,
    }
    if deepspeed:
        config["deepspeed"] = str(layout.deepspeed_json)
    config.update(train)
    config.update(extra or {})
    return {k: v for k, v in config.items() if v is not None}


def render_export_config(
    train_config: Mapping[str, Any], layout: StageLayout, export: Mapping[str, Any]
) -> dict[str, Any]:
    """The export YAML: LoRA merges the trained adapter into the starting model; full and
    freeze re-save the trained weights (the run's output_dir) in the export format."""
    lora = train_config.get("finetuning_type", "lora") == "lora"
    config: dict[str, Any] = {
        "model_name_or_path": train_config["model_name_or_path" if lora else "output_dir"],
    }
    if lora:
        config["adapter_name_or_path"] = str(layout.adapter)
    for key in ("finetuning_type", "template", "trust_remote_code"):
        if key in train_config:
            config[key] = train_config[key]
    config["export_dir"] = str(layout.staging)
    config.update(export)
    return config


def render_yaml(config: Mapping[str, Any], comment: str) -> str:
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return header + yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)


def render_fingerprint(config: Mapping[str, Any], extra: Mapping[str, Any]) -> str:
    """What a checkpoint must have been trained with to be resumed: the config less its run
    length, the DeepSpeed config, the process count and the inputs' digest."""
    kept = {k: v for k, v in config.items() if k not in RUN_LENGTH_KEYS}
    payload = json.dumps({"config": kept, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def find_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """checkpoint-N folders, oldest first."""
    if not folder.is_dir():
        return []
    found = [(m, p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT_DIR.match(p.name))]
    return sorted((int(m.group(1)), p) for m, p in found)


def clear_folder(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def prepare_checkpoints(folder: Path, fingerprint: str) -> tuple[Path | None, str]:
    """The checkpoint to resume from (None = start afresh) and why. A checkpoint written with
    other settings or inputs is discarded; so is one a kill interrupted (HF Trainer writes
    trainer_state.json last)."""
    stamp = folder / FINGERPRINT_FILE
    previous = json.loads(stamp.read_text())["fingerprint"] if stamp.is_file() else None
    if previous != fingerprint:
        reason = "no earlier run" if previous is None else "settings or inputs changed"
        clear_folder(folder)
        write_json_atomic(stamp, {"fingerprint": fingerprint})
        return None, f"starting afresh ({reason})"
    complete = []
    for _, path in find_checkpoints(folder):
        if (path / TRAINER_STATE).is_file():
            complete.append(path)
        else:
            shutil.rmtree(path)
    if not complete:
        clear_folder(folder)
        write_json_atomic(stamp, {"fingerprint": fingerprint})
        return None, "starting afresh (no complete checkpoint)"
    return complete[-1], f"resuming from {complete[-1].name}"


def llamafactory_cli() -> str:
    """The llamafactory-cli of this interpreter's environment (DVC may run with another PATH)."""
    beside = Path(sys.executable).with_name("llamafactory-cli")
    found = str(beside) if beside.is_file() else shutil.which("llamafactory-cli")
    if found is None:
        raise LlamaFactoryError("llamafactory-cli not found; run `make setup`")
    return found


def build_env(
    base: Mapping[str, str],
    processes: int,
    distributed: bool,
    hub: bool = False,
    nodes: NodesParams | None = None,
) -> dict[str, str]:
    """The run's environment: quiet, unbuffered, the hub on only when `hub` (a hub dataset to
    download; the user's own HF_*_OFFLINE wins), and torchrun (which the LlamaFactory
    launcher finds on PATH) for DeepSpeed, several processes or several nodes."""
    env = {**hub_env(hub, base), **RUN_ENV}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
    if distributed or processes > 1 or (nodes is not None and nodes.nodes > 1):
        env.update(render_torchrun_env(nodes or NodesParams(), processes))
    return env


def render_torchrun_env(nodes: NodesParams, processes: int) -> dict[str, str]:
    """What LlamaFactory's launcher turns into `torchrun --nnodes --node_rank --nproc_per_node
    --master_addr --master_port`; on one node without a fixed port it picks a free one."""
    env = {
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": str(processes),
        "NNODES": str(nodes.nodes),
        "NODE_RANK": str(nodes.rank_of_node),
        "MASTER_ADDR": nodes.rendezvous_addr,
    }
    if nodes.master_port is not None:
        env["MASTER_PORT"] = str(nodes.master_port)
    return env


def parse_nonfinite_loss(line: str) -> str | None:
    """`loss is nan` for a log line reporting a NaN or infinite loss, else None."""
    match = NONFINITE_LOSS.search(line)
    return f"{match.group(1)} is {match.group(2).lower()}" if match else None


def read_log_history(folder: Path) -> list[dict[str, Any]]:
    """Every logged step of the run (resumed runs included): trainer_state.json's log_history,
    else LlamaFactory's trainer_log.jsonl while no state has been written."""
    state = folder / TRAINER_STATE
    if state.is_file():
        return list(json.loads(state.read_text("utf-8")).get("log_history", []))
    log = folder / TRAINER_LOG
    if log.is_file():
        return [{"step": r.get("current_steps"), **r} for r in read_jsonl(log)]
    return []


def check_finite_losses(history: Iterable[Mapping[str, Any]], what: str) -> None:
    for entry in history:
        for key, value in entry.items():
            if key.endswith("loss") and isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteLoss(
                    f"{what}: {key} is {value} at step {entry.get('step')}; the run diverged. "
                    "Lower the learning rate or check the data, then rerun: changed settings "
                    "start afresh"
                )


def extract_curve(history: Iterable[Mapping[str, Any]], columns: Mapping[str, str]) -> list:
    """Rows {step, column: value} of the training logs that carry the first key of `columns`
    ({column name: log key}); the run's final summary entry has no per-step loss."""
    first = next(iter(columns.values()))
    rows = []
    for entry in history:
        if first in entry and "step" in entry:
            rows.append({"step": entry["step"], **{c: entry.get(k) for c, k in columns.items()}})
    return rows


def render_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_curve(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    write_text_atomic(path, render_csv(rows, ["step", *columns]))


def summarize_curve(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"first": None, "last": None, "min": None, "max": None}
    return {"first": values[0], "last": values[-1], "min": min(values), "max": max(values)}


def read_train_results(folder: Path) -> dict[str, Any]:
    path = folder / "train_results.json"
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def describe_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a report reader compares between runs."""
    keys = ("model_name_or_path", "dataset", "finetuning_type", "mix_strategy", "interleave_probs")
    described = {k: config.get(k) for k in keys}
    described["finetuning_type"] = described["finetuning_type"] or "lora"
    described |= {k: config.get(k) for k in ("cutoff_len", "learning_rate", "max_steps")}
    described["resumed_from"] = config.get("resume_from_checkpoint")
    return described


def summarize_run(history: Sequence[Mapping[str, Any]], results: Mapping[str, Any]) -> dict:
    losses = [r["loss"] for r in extract_curve(history, {"loss": "loss"})]
    steps = [e["step"] for e in history if "step" in e]
    return {
        "steps": max(steps, default=0),
        "loss": summarize_curve(losses),
        "train_loss": results.get("train_loss"),
        "train_runtime_s": results.get("train_runtime"),
        "train_samples_per_second": results.get("train_samples_per_second"),
    }


def copy_adapter(run_dir: Path, adapter: Path) -> None:
    """The final LoRA adapter (and tokenizer) out of the run folder, without its checkpoints."""
    if adapter.exists():
        shutil.rmtree(adapter)
    adapter.mkdir(parents=True)
    for path in run_dir.iterdir():
        if path.is_file() and path.name != FINGERPRINT_FILE:
            shutil.copy2(path, adapter / path.name)
    if not any((adapter / name).is_file() for name in ADAPTER_FILES):
        raise LlamaFactoryError(f"{run_dir} holds no trained weights after the run")


def write_config(path: Path, config: Mapping[str, Any], comment: str) -> None:
    write_text_atomic(path, render_yaml(config, comment))


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)


@task(name="pass-model-on", cache_policy=NO_CACHE)
def pass_model_on(layout: StageLayout, start: Path, reason: str) -> dict[str, Any]:
    """A stage with nothing to train on: its model/ is the model it started from (hard links,
    so the weights are not copied), so the next stage starts from the last model that exists;
    returns the report that says so."""
    get_run_logger().warning("skipping training: %s", reason)
    if layout.output.exists():
        shutil.rmtree(layout.output)
    with staging_folder(layout.model) as staging:
        shutil.copytree(start, staging, dirs_exist_ok=True, copy_function=link_or_copy)
        promote_folder(staging, layout.model)
    # DVC fails a stage whose declared outputs are missing, and on a first run that skips
    # training no checkpoint folder was ever made.
    layout.checkpoints.mkdir(parents=True, exist_ok=True)
    return {"skipped": True, "reason": reason, "model_passed_on_from": str(start)}


@task(name="prepare-run", cache_policy=NO_CACHE)
def prepare_run(
    layout: StageLayout,
    config: dict[str, Any],
    deepspeed: dict[str, Any] | None,
    processes: int,
    inputs: list[Path],
    comment: str,
) -> dict[str, Any]:
    """Decide between resuming and starting afresh, then write train.yaml (and deepspeed.json)
    beside the stage's product; returns the config that will run."""
    logger = get_run_logger()
    fingerprint = render_fingerprint(
        config, {"deepspeed": deepspeed, "processes": processes, "inputs": hash_paths(inputs)}
    )
    resume, why = prepare_checkpoints(layout.checkpoints, fingerprint)
    logger.info("%s: %s", layout.checkpoints, why)
    if resume is not None:
        config = {**config, "resume_from_checkpoint": str(resume)}
    layout.output.mkdir(parents=True, exist_ok=True)
    if deepspeed is not None:
        write_json_atomic(layout.deepspeed_json, deepspeed)
    write_config(layout.train_yaml, config, comment)
    return config


@task(name="llamafactory-train", cache_policy=NO_CACHE)
def train_model(
    layout: StageLayout,
    processes: int,
    what: str,
    hub: bool = False,
    nodes: NodesParams | None = None,
) -> list[dict[str, Any]]:
    """`llamafactory-cli train train.yaml`, streamed into the run log; returns the log history
    after checking every logged loss is finite. With several `nodes`, each runs this with its
    own node_rank."""
    logger = get_run_logger()
    env = build_env(os.environ, processes, layout.deepspeed_json.is_file(), hub, nodes)
    argv = [llamafactory_cli(), "train", str(layout.train_yaml)]
    run_streamed(argv, env, logger.info, what=f"{what} (llamafactory-cli train)")
    history = read_log_history(layout.checkpoints)
    check_finite_losses(history, what)
    return history


@task(name="llamafactory-export", cache_policy=NO_CACHE)
def export_model(layout: StageLayout, train_config: dict[str, Any], export: dict[str, Any]) -> Path:
    """The stage's product: the model/ folder plain transformers loads (LoRA merged in)."""
    logger = get_run_logger()
    if train_config.get("finetuning_type", "lora") == "lora":
        copy_adapter(layout.checkpoints, layout.adapter)
    config = render_export_config(train_config, layout, export)
    comment = (
        f"llamafactory-cli export {layout.export_yaml}: written by the flow from params;\n"
        f"the flow renames export_dir to {layout.model} once the export completes"
    )
    write_config(layout.export_yaml, config, comment)
    if layout.staging.exists():
        shutil.rmtree(layout.staging)
    env = build_env(os.environ, 1, False)
    run_streamed([llamafactory_cli(), "export", str(layout.export_yaml)], env, logger.info)
    promote_folder(layout.staging, layout.model)
    return layout.model


def run_streamed(
    argv: Sequence[str],
    env: Mapping[str, str],
    sink: Callable[[str], None],
    check_line: Callable[[str], str | None] = parse_nonfinite_loss,
    what: str = "llamafactory-cli",
) -> None:
    """Run `argv` (its own process group, tied to this process's life), handing each output
    line to `sink`. A line `check_line` objects to stops the run at once."""

    def stop_on_problem(line: str) -> None:
        problem = check_line(line)
        if problem:
            raise NonFiniteLoss(
                f"{what}: {problem} ({line.strip()[:300]}); the run diverged and was "
                "stopped. Lower the learning rate or check the data, then rerun: "
                "changed settings start afresh"
            )

    code, tail = stream_process(argv, env, sink, stop_on_problem, tail=30)
    if code != 0:
        raise LlamaFactoryError(
            f"{what} exited with status {code}; its last lines:\n" + "\n".join(tail)
        )
