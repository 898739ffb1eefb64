"""Faults the cpt tests put into the trainer (tasks.cpt.train), imported first by every rank
through RunSpec.preload: a NaN loss on one rank at chosen micro-batches, and an exit after a
chosen step, as a run killed there would make. The test asks for them in the launcher's
environment (render_fault_env); without those variables, importing this module changes nothing
(so the tests may import it for its names).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from tasks.cpt.config import TRAINER_MODULE

PRELOAD = __name__
EXIT_STOPPED = 3  # not one of the trainer's own exit codes
NAN_AT = "CPT_TEST_NAN_AT"  # micro-batch cursors (tasks.cpt.data), comma-separated
NAN_RANK = "CPT_TEST_NAN_RANK"
STOP_AFTER = "CPT_TEST_STOP_AFTER"  # optimizer steps


def render_fault_env(
    stop_after_steps: int | None = None, nonfinite_at: Sequence[int] = (), nonfinite_rank: int = 0
) -> dict[str, str]:
    env = {}
    if stop_after_steps is not None:
        env[STOP_AFTER] = str(stop_after_steps)
    if nonfinite_at:
        env[NAN_AT] = ",".join(str(cursor) for cursor in nonfinite_at)
        env[NAN_RANK] = str(nonfinite_rank)
    return env


def find_trainer() -> ModuleType:
    """The trainer that runs: the launcher starts it as `python -m tasks.cpt.train`, so it is
    __main__, and importing tasks.cpt.train would load a second copy that nothing calls."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == TRAINER_MODULE:
        return main
    return importlib.import_module(TRAINER_MODULE)


def inject_nonfinite(train: ModuleType, cursors: set[int], rank: int) -> None:
    """On `rank`, the loss of micro-batch `cursor` comes back from its forward as NaN, so the
    trainer's own check before the backward is what meets it."""
    taken = {"cursor": -1}
    next_batch, forward_loss = train.Trainer.next_batch, train.forward_loss

    def next_batch_noted(self: Any, cursor: int) -> Any:
        taken["cursor"] = cursor
        return next_batch(self, cursor)

    def forward_loss_or_nan(engine: Any, batch: Any, parallel: Any) -> Any:
        loss = forward_loss(engine, batch, parallel)
        if taken["cursor"] in cursors and parallel.rank == rank:
            return loss * float("nan")
        return loss

    train.Trainer.next_batch = next_batch_noted
    train.forward_loss = forward_loss_or_nan


def stop_after(train: ModuleType, steps: int) -> None:
    """Exit with EXIT_STOPPED before step `steps` + 1, that is after step `steps` and its
    checkpoint, if one was due: the checkpoints of a killed run, and no exported model."""
    train_step = train.Trainer.train_step

    def train_step_or_stop(self: Any, state: Any) -> Any:
        if state.step >= steps:
            raise SystemExit(EXIT_STOPPED)
        return train_step(self, state)

    train.Trainer.train_step = train_step_or_stop


def install_faults(env: Mapping[str, str]) -> None:
    if NAN_AT not in env and STOP_AFTER not in env:
        return
    train = find_trainer()
    if NAN_AT in env:
        cursors = {int(cursor) for cursor in env[NAN_AT].split(",")}
        inject_nonfinite(train, cursors, int(env.get(NAN_RANK, "0")))
    if STOP_AFTER in env:
        stop_after(train, int(env[STOP_AFTER]))


install_faults(os.environ)
