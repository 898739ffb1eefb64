"""The CPT trainer: one process per rank, started by the deepspeed launcher (or torchrun) that
flows.cpt runs; the one module that imports DeepSpeed.

    python -m deepspeed.launcher.runner --num_gpus=N --module tasks.cpt.train RUN_JSON

RUN_JSON is the phase's run spec (tasks.cpt.config.RunSpec) that the flow writes. The trainer
resumes from the newest checkpoint in the spec's checkpoint folder when there is one, trains
to spec.steps, checkpoints every checkpoint_steps (model, optimizer, scheduler, data cursor,
every rank's RNG), and writes the final weights (export/), one JSON line per step
(steps.jsonl) and a summary (result.json) beside the checkpoints.

A micro-batch whose loss is not finite on any rank is dropped before its backward, so no NaN
reaches the gradients or the optimizer; with one micro-batch per step that skips the step.
max_nonfinite_in_row of them in a row stop the run (exit code 2). fp16 overflow is DeepSpeed's
loss scaler's to handle (it skips the step and lowers the scale).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tasks.core.packed import read_phase_meta
from tasks.cpt.config import RunSpec
from tasks.cpt.data import MicroBatch, PackedRows, collate_rows, micro_batch_rows, read_packed_rows
from tasks.cpt.zigzag import ParallelLayout, build_groups, reduce_loss, shard_batch, shift_labels
from tasks.cpt.zigzag import sum_causal_lm_loss as sum_loss

EXIT_NONFINITE = 2
TAG_PREFIX = "step-"


@dataclass
class TrainState:
    """What a checkpoint carries besides DeepSpeed's own state."""

    step: int = 0
    cursor: int = 0  # micro-batches taken (tasks.cpt.data), skipped ones included
    nonfinite_total: int = 0
    nonfinite_in_row: int = 0


@dataclass(frozen=True)
class Parallel:
    rank: int
    world: int
    replica: int  # data-parallel replica: the ranks of one ring read the same rows
    replicas: int
    ring: ParallelLayout | None  # None without sequence parallelism


def read_run_spec(path: Path) -> RunSpec:
    return RunSpec.model_validate_json(path.read_text(encoding="utf-8"))


def init_parallel(spec: RunSpec) -> Parallel:
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cuda":
        accelerator.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name())
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != spec.world_size:
        raise RuntimeError(f"launched {world} processes, the run spec expects {spec.world_size}")
    if spec.sequence_parallel == 1:
        return Parallel(rank, world, rank, world, None)
    ring = build_groups(world, spec.sequence_parallel)
    return Parallel(rank, world, ring.dp_rank, ring.dp_world, ring)


def training_dtype(ds_config: dict[str, Any]) -> torch.dtype:
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def pick_attention(spec: RunSpec, parallel: Parallel) -> str:
    if parallel.ring is not None:
        from tasks.cpt.ring_attention import register_zigzag_attention

        return register_zigzag_attention(parallel.ring.group)
    if spec.attn_implementation != "auto":
        return spec.attn_implementation
    cuda = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if cuda else "sdpa"


def load_model(spec: RunSpec, attention: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(spec.init_from), dtype=training_dtype(spec.ds_config), attn_implementation="sdpa"
    )
    model.set_attn_implementation(attention)
    model.config.use_cache = False
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def build_engine(model: torch.nn.Module, spec: RunSpec) -> Any:
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=dict(spec.ds_config)
    )
    return engine


def read_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def resume(engine: Any, spec: RunSpec, parallel: Parallel) -> tuple[TrainState, int | None]:
    """The state of the newest checkpoint (DeepSpeed's `latest`), or a fresh one."""
    if not (spec.checkpoint_dir / "latest").is_file():
        return TrainState(), None
    path, client = engine.load_checkpoint(
        str(spec.checkpoint_dir), load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"{spec.checkpoint_dir}: `latest` names a checkpoint that won't load")
    state = TrainState(**client["train_state"])
    restore_rng_state(client["rng"][parallel.rank])
    return state, state.step


def save_checkpoint(engine: Any, spec: RunSpec, state: TrainState, parallel: Parallel) -> None:
    rng: list[Any] = [None] * parallel.world
    dist.all_gather_object(rng, read_rng_state())
    client = {"train_state": asdict(state), "rng": rng}
    engine.save_checkpoint(
        str(spec.checkpoint_dir), tag=f"{TAG_PREFIX}{state.step:08d}", client_state=client
    )
    dist.barrier()
    if parallel.rank == 0:
        prune_checkpoints(spec.checkpoint_dir, spec.keep_checkpoints)


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (never the one `latest` names)."""
    latest = (folder / "latest").read_text(encoding="utf-8").strip()
    tags = sorted(p for p in folder.glob(f"{TAG_PREFIX}*") if p.is_dir())
    for old in tags[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def forward_loss(engine: Any, batch: MicroBatch, parallel: Parallel) -> torch.Tensor:
    """Mean next-token loss of the micro-batch (over the whole ring's tokens with a ring)."""
    device = engine.device
    if parallel.ring is None:
        logits = engine(
            input_ids=batch.input_ids.to(device),
            position_ids=batch.position_ids.to(device),
            use_cache=False,
        ).logits
        loss_sum, count = sum_loss(logits, shift_labels(batch.labels).to(device))
        return loss_sum / count.clamp(min=1)
    ring = parallel.ring
    shard = shard_batch(
        batch.input_ids,
        ring.group.size(),
        ring.sp_rank,
        labels=batch.labels,
        position_ids=batch.position_ids,
    )
    logits = engine(
        input_ids=shard.input_ids.to(device),
        position_ids=shard.position_ids.to(device),
        use_cache=False,
    ).logits
    loss_sum, count = sum_loss(logits, shard.shift_labels.to(device))
    return reduce_loss(loss_sum, count.to(device), ring.group)


def any_rank(flag: bool, device: torch.device) -> bool:
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


class Trainer:
    def __init__(self, spec: RunSpec, parallel: Parallel, engine: Any, rows: PackedRows) -> None:
        self.spec, self.parallel, self.engine, self.rows = spec, parallel, engine, rows
        meta = read_phase_meta(spec.data_dir)
        self.pad_id = meta.pad_id
        self.micro = int(spec.ds_config["train_micro_batch_size_per_gpu"])
        self.accumulation = int(spec.ds_config["gradient_accumulation_steps"])
        self.multiple = 2 * spec.sequence_parallel if parallel.ring is not None else 1

    def next_batch(self, cursor: int) -> MicroBatch:
        p = self.parallel
        indices = micro_batch_rows(cursor, self.micro, p.replica, p.replicas, len(self.rows))
        return collate_rows(
            [self.rows[i] for i in indices],
            pad_id=self.pad_id,
            multiple=self.multiple,
            restart_at_documents=not self.spec.cross_document_attention,
        )

    def micro_step(self, state: TrainState) -> tuple[torch.Tensor, MicroBatch] | None:
        """Forward and backward of the next good micro-batch; None when its loss was not finite
        (dropped before backward)."""
        batch = self.next_batch(state.cursor)
        loss = forward_loss(self.engine, batch, self.parallel)
        state.cursor += 1
        if any_rank(not bool(torch.isfinite(loss)), loss.device):
            state.nonfinite_total += 1
            state.nonfinite_in_row += 1
            if state.nonfinite_in_row >= self.spec.max_nonfinite_in_row:
                raise NonFiniteLossError(
                    f"stopping: {state.nonfinite_in_row} non-finite losses in a row "
                    f"(cpt.max_nonfinite_in_row), the last at step {state.step + 1}, "
                    f"micro-batch {state.cursor - 1}; the newest checkpoint is kept in "
                    f"{self.spec.checkpoint_dir}"
                )
            return None
        state.nonfinite_in_row = 0
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach(), batch

    def train_step(self, state: TrainState) -> dict[str, Any]:
        started = (time.perf_counter(), time.process_time())
        lr = float(self.engine.get_lr()[0])
        losses: list[torch.Tensor] = []
        tokens = label_tokens = 0
        while len(losses) < self.accumulation:
            done = self.micro_step(state)
            if done is not None:
                losses.append(done[0].float())
                tokens += done[1].tokens
                label_tokens += done[1].label_tokens
        state.step += 1
        return self.step_record(
            state, started, lr, torch.stack(losses).mean(), tokens, label_tokens
        )

    def step_record(
        self,
        state: TrainState,
        started: tuple[float, float],
        lr: float,
        loss: torch.Tensor,
        tokens: int,
        label_tokens: int,
    ) -> dict[str, Any]:
        p, device = self.parallel, loss.device
        # Sums over the world; ring members share rows, so tokens count once per replica.
        totals = torch.tensor([float(loss), tokens, label_tokens], device=device)
        dist.all_reduce(totals)
        peak = torch.tensor([memory_mb(device)], device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        ring = self.spec.sequence_parallel
        seconds = time.perf_counter() - started[0]
        cpu_seconds = time.process_time() - started[1]  # rank 0's, all its threads
        norm = self.engine.get_global_grad_norm()
        return {
            "step": state.step,
            "loss": round(float(totals[0]) / p.world, 6),
            "lr": lr,
            "grad_norm": None if norm is None else round(float(norm), 6),
            "tokens": int(totals[1]) // ring,
            "label_tokens": int(totals[2]) // ring,
            "step_s": round(seconds, 4),
            "cpu_s": round(cpu_seconds, 4),
            "tokens_per_s": round(int(totals[1]) / ring / seconds, 2),
            "memory_mb": round(float(peak), 1),
            "nonfinite_skipped": state.nonfinite_total,
        }


def truncate_step_log(path: Path, last_step: int) -> None:
    """Drop lines past the resumed checkpoint: those steps are trained again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError):
            continue  # a line cut short by the kill
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def write_events(engine: Any, record: dict[str, Any]) -> None:
    """TensorBoard (DeepSpeed's monitor), when the ds_config switches it on."""
    monitor = getattr(engine, "monitor", None)
    if monitor is None or not monitor.enabled:
        return
    keys = ("loss", "lr", "grad_norm", "tokens_per_s", "memory_mb")
    monitor.write_events(
        [(f"Train/{k}", record[k], record["step"]) for k in keys if record[k] is not None]
    )


def export_model(engine: Any, spec: RunSpec, parallel: Parallel) -> None:
    """The trained weights as a transformers folder (rank 0); ZeRO-3 gathers them first."""
    stage = int(spec.ds_config.get("zero_optimization", {}).get("stage", 0))
    state = engine._zero3_consolidated_16bit_state_dict() if stage == 3 else None
    if parallel.rank == 0:
        module = engine.module
        module.config.use_cache = True
        shutil.rmtree(spec.export_dir, ignore_errors=True)
        module.save_pretrained(str(spec.export_dir), state_dict=state)
    dist.barrier()


def open_progress(spec: RunSpec, start: int, rank: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=spec.steps,
        initial=start,
        desc=f"cpt {spec.phase}",
        unit="step",
        disable=rank != 0,
        file=sys.stdout,
        mininterval=0,
        miniters=1,  # a line per step in the streamed log
        dynamic_ncols=False,
        ncols=100,
    )


def run(spec: RunSpec) -> dict[str, Any]:
    for module in spec.preload:
        importlib.import_module(module)
    parallel = init_parallel(spec)
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    engine = build_engine(load_model(spec, pick_attention(spec, parallel)), spec)
    state, resumed_from = resume(engine, spec, parallel)
    trainer = Trainer(spec, parallel, engine, read_packed_rows(spec.data_dir))
    if parallel.rank == 0:
        truncate_step_log(spec.steps_file, state.step)
    first_step, tokens, train_s = state.step, 0, 0.0
    progress = open_progress(spec, state.step, parallel.rank)
    while state.step < spec.steps:
        record = trainer.train_step(state)
        tokens += record["tokens"]
        train_s += record["step_s"]
        if parallel.rank == 0:
            with spec.steps_file.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            write_events(engine, record)
            postfix = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
            progress.set_postfix(postfix | {"tok/s": record["tokens_per_s"]}, refresh=False)
            progress.update(1)
        if state.step % spec.checkpoint_steps == 0 or state.step == spec.steps:
            save_checkpoint(engine, spec, state, parallel)
    progress.close()
    export_model(engine, spec, parallel)
    return {
        "steps": spec.steps,
        "resumed_from": resumed_from,
        "steps_run": state.step - first_step,
        "nonfinite_skipped": state.nonfinite_total,
        "overflow_skipped": int(engine.skipped_steps),
        "micro_batches": state.cursor,
        "tokens": tokens,
        "train_s": round(train_s, 2),
        "tokens_per_s": round(tokens / train_s, 2) if train_s else None,
        "steps_per_s": round((state.step - first_step) / train_s, 4) if train_s else None,
        "world_size": parallel.world,
        "sequence_parallel": spec.sequence_parallel,
        "data_parallel": parallel.replicas,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_spec", type=Path)
    parser.add_argument("--local_rank", type=int, default=None, help="set by the launcher")
    args = parser.parse_args(argv)
    spec = read_run_spec(args.run_spec)
    try:
        result = run(spec)
    except NonFiniteLossError as err:
        if dist.is_initialized() and dist.get_rank() == 0:
            print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NONFINITE) from None
    if dist.get_rank() == 0:
        spec.result_file.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"cpt {spec.phase}: done, {json.dumps(result)}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
