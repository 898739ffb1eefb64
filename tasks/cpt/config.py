"""One cpt phase's configuration, rendered from params: DeepSpeed's JSON, the trainer's run spec,
the launcher's command line and environment, and the fingerprint a checkpoint must match to be
resumed. Pure: nothing here touches the disk or imports DeepSpeed."""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.core.params import SCHEDULERS_WITH_TOTAL_STEPS, CptParams, ParamsError, PhaseParams

TRAINER_MODULE = "tasks.cpt.train"
# Files the trainer and the flow share in <cpt.checkpoints>/<phase>/.
RUN_FILE = "run.json"
STEPS_FILE = "steps.jsonl"
RESULT_FILE = "result.json"
FINGERPRINT_FILE = "fingerprint.json"
EXPORT_DIR = "export"
# Beside the trained model in <cpt.output>/<phase>/.
DS_CONFIG_FILE = "ds_config.json"
TRAIN_PARAMS_FILE = "train_params.json"


class RunSpec(BaseModel):
    """Everything the trainer is told, written to run.json and passed to every rank."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: str
    seq_len: int
    init_from: Path
    data_dir: Path
    checkpoint_dir: Path
    steps: int
    world_size: int
    seed: int
    checkpoint_steps: int
    keep_checkpoints: int
    max_nonfinite_in_row: int
    sequence_parallel: int
    cross_document_attention: bool
    attn_implementation: str
    gradient_checkpointing: bool
    ds_config: dict[str, Any]
    # Modules every rank imports before anything else, never set from params: a way to put
    # kernels or patches in place ahead of the model (e.g. a CPU stand-in for flash-attn's).
    preload: tuple[str, ...] = ()

    @property
    def steps_file(self) -> Path:
        return self.checkpoint_dir / STEPS_FILE

    @property
    def result_file(self) -> Path:
        return self.checkpoint_dir / RESULT_FILE

    @property
    def export_dir(self) -> Path:
        return self.checkpoint_dir / EXPORT_DIR


def world_size(params: CptParams) -> int:
    return params.nodes * params.processes_per_node


def plan_steps(params: CptParams, phase: PhaseParams, rows: int) -> int:
    """The phase's optimizer steps: max_steps, or `epochs` passes over its rows."""
    if phase.max_steps is not None:
        steps = phase.max_steps
    else:
        ds = params.deepspeed
        replicas = world_size(params) // params.sequence_parallel
        per_replica = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]
        steps = max(1, math.ceil(params.epochs * rows / (per_replica * replicas)))
    warmup = params.deepspeed["scheduler"].get("params", {}).get("warmup_num_steps")
    if warmup is not None and warmup >= steps:
        raise ParamsError(
            f"cpt.deepspeed.scheduler.params.warmup_num_steps ({warmup}) must be below the "
            f"{steps} steps of phase {phase.name} (cpt.phases.{phase.name}.max_steps)"
        )
    return steps


def render_ds_config(
    ds: Mapping[str, Any], steps: int, tensorboard_dir: Path, job: str
) -> dict[str, Any]:
    """DeepSpeed's config: the params' deepspeed block as is, plus what is the phase's own: the
    schedule's length and where TensorBoard's events go."""
    config = copy.deepcopy(dict(ds))
    scheduler = config["scheduler"]
    if scheduler["type"] in SCHEDULERS_WITH_TOTAL_STEPS:
        scheduler.setdefault("params", {})["total_num_steps"] = steps
    # A disabled monitor is left out, as it always was: the config of unchanged params stays
    # the same, and so does the fingerprint its checkpoints are resumed by.
    board = config.pop("tensorboard", {})
    if board.get("enabled"):
        config["tensorboard"] = {
            **board,
            "output_path": board.get("output_path") or str(tensorboard_dir),
            "job_name": job,
        }
    return config


def render_run_spec(
    params: CptParams,
    phase: PhaseParams,
    steps: int,
    data_root: Path,
    preload: tuple[str, ...] = (),
) -> RunSpec:
    checkpoint_dir = params.checkpoints / phase.name
    return RunSpec(
        phase=phase.name,
        seq_len=phase.seq_len,
        init_from=phase.init_from,
        data_dir=data_root / phase.name,
        checkpoint_dir=checkpoint_dir,
        steps=steps,
        world_size=world_size(params),
        seed=params.seed,
        checkpoint_steps=params.checkpoint_steps,
        keep_checkpoints=params.keep_checkpoints,
        max_nonfinite_in_row=params.max_nonfinite_in_row,
        sequence_parallel=params.sequence_parallel,
        cross_document_attention=params.cross_document_attention,
        attn_implementation=params.attn_implementation,
        gradient_checkpointing=params.gradient_checkpointing,
        ds_config=render_ds_config(
            params.deepspeed, steps, checkpoint_dir / "tensorboard", phase.name
        ),
        preload=preload,
    )


# Settings that change what a resumed run computes; the rest (checkpoint cadence, the NaN
# limit, preloaded modules) may change between a killed run and its restart.
RESUME_KEYS = (
    "phase",
    "seq_len",
    "init_from",
    "data_dir",
    "steps",
    "world_size",
    "seed",
    "sequence_parallel",
    "cross_document_attention",
    "attn_implementation",
    "gradient_checkpointing",
    "ds_config",
)


def render_fingerprint(spec: RunSpec, inputs: Mapping[str, str]) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed: the run's settings and the
    content hashes of its inputs (starting model, packed rows)."""
    settings = spec.model_dump(mode="json", include=set(RESUME_KEYS))
    return {"settings": settings, "inputs": dict(sorted(inputs.items()))}


def render_launch_command(
    params: CptParams, spec_path: Path, port: int, python: str = sys.executable
) -> list[str]:
    """The launcher's command line on this node. torchrun: every node runs it with its own
    --node_rank. deepspeed: on one node, or with node_rank null node 0 alone, which starts the
    hostfile's other nodes over ssh; with a node_rank, every node runs it (--no_ssh)."""
    if params.launcher == "torchrun":
        return [
            python,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={params.processes_per_node}",
            f"--nnodes={params.nodes}",
            f"--node_rank={params.rank_of_node}",
            f"--master_addr={params.rendezvous_addr}",
            f"--master_port={port}",
            "-m",
            TRAINER_MODULE,
            str(spec_path),
        ]
    command = [
        python,
        "-m",
        "deepspeed.launcher.runner",
        f"--num_gpus={params.processes_per_node}",
        f"--num_nodes={params.nodes}",
        f"--master_port={port}",
    ]
    if params.hostfile is not None:
        command += [f"--hostfile={params.hostfile}"]
    if params.nodes > 1:
        # Given, so DeepSpeed does not ssh to the first host to ask for its address.
        command += [f"--master_addr={params.rendezvous_addr}"]
        if params.node_rank is not None:
            command += ["--no_ssh", f"--node_rank={params.node_rank}"]
    return [*command, "--module", TRAINER_MODULE, str(spec_path)]


def render_launch_env(
    base: Mapping[str, str], params: CptParams, *, cuda: bool, cores: int
) -> dict[str, str]:
    env = dict(base)
    env["PYTHONUNBUFFERED"] = "1"  # the flow streams the log line by line
    env["TOKENIZERS_PARALLELISM"] = "false"
    if not cuda:
        env["DS_ACCELERATOR"] = "cpu"
        threads = params.threads_per_process or max(1, cores // params.processes_per_node)
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def render_train_params(params: CptParams, spec: RunSpec) -> dict[str, Any]:
    """train_params.json beside the model: the params that trained it, this phase only."""
    shared = params.model_dump(mode="json", exclude={"phases", "deepspeed"})
    phase = next(p for p in params.phases if p.name == spec.phase)
    return {
        **shared,
        "phase": phase.model_dump(mode="json"),
        "steps": spec.steps,
        "world_size": spec.world_size,
    }
