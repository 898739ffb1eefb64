"""The overfitting watch of the sft and orpo stages: whether LlamaFactory may split a validation
set off the training set (its own `val_size`), the train keys that follow when it may not, the
eval loss curve from the trainer's log, and when eval loss rose while train loss fell.

Evaluation and early stopping are LlamaFactory's (and transformers') own: `val_size`,
`eval_strategy`, `eval_steps`, `per_device_eval_batch_size` and `early_stopping_steps` (the
patience of transformers' EarlyStoppingCallback, counted in evaluations) pass through from
params. The flow turns them off where there is no split to evaluate: val_size 0, no
evaluation asked for, or a set too small to spare the rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.finetune.llamafactory import TRAINER_STATE, write_curve

# LlamaFactory treats a val_size at or below this as no split (data_args.py, data_utils.py).
NO_SPLIT = 1e-6
# Train keys that ask for evaluation, dropped (or set to "no") when there is no split:
# LlamaFactory refuses do_eval without one, transformers' Trainer refuses an eval_strategy
# without an eval set, and early stopping and load_best_model_at_end need evaluations.
EVAL_OFF: dict[str, Any] = {
    "val_size": None,
    "do_eval": None,
    "eval_strategy": "no",
    "early_stopping_steps": None,
    "load_best_model_at_end": None,
}
# Evaluations without a lower eval loss before the report calls it overfitting, when early
# stopping is off (with it on, its own patience): one higher evaluation can be noise.
DEFAULT_PATIENCE = 2


@dataclass(frozen=True)
class ValidationPlan:
    """The validation split a run makes: the rows held out, or why none are; and the train
    keys the flow sets as a result."""

    rows: int
    skipped: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def count_validation_rows(rows: int, val_size: float) -> int:
    """Rows LlamaFactory's split takes from a set of `rows`: datasets' train_test_split rounds
    a share up, and a val_size above 1 is a row count."""
    if val_size <= NO_SPLIT:
        return 0
    if val_size > 1:
        return int(val_size)
    return math.ceil(val_size * rows)


def plan_validation(
    train: Mapping[str, Any], rows: int, minimum: int, section: str, name: str
) -> ValidationPlan:
    """Split `val_size` off set `name` (`rows` rows) only when it has at least `minimum` rows and
    the split leaves rows to train on; otherwise train on every row without evaluation. When
    early stopping is on and no metric is named, it watches eval_loss."""
    val_size = float(train.get("val_size") or 0)
    held_out = count_validation_rows(rows, val_size)
    why = None
    if val_size <= NO_SPLIT:
        why = f"{section}.train.val_size is {val_size:g}"
    elif train.get("eval_strategy", "no") == "no" and not train.get("do_eval"):
        why = f"{section}.train.eval_strategy is no, so nothing would evaluate the split"
    elif rows < minimum:
        why = (
            f"set {name} has {rows} row(s), fewer than {section}.validation_min_rows "
            f"({minimum}); every row trains"
        )
    elif held_out >= rows:
        why = f"{section}.train.val_size {val_size:g} would take all {rows} row(s) of set {name}"
    if why is not None:
        return ValidationPlan(0, f"no validation split: {why}", dict(EVAL_OFF))
    early = train.get("early_stopping_steps") is not None
    if early and train.get("metric_for_best_model") is None:
        return ValidationPlan(held_out, overrides={"metric_for_best_model": "eval_loss"})
    return ValidationPlan(held_out)


def extract_evaluations(history: Iterable[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(step, eval_loss) of every evaluation during training."""
    return [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e and "step" in e]


def extract_train_losses(history: Iterable[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(step, loss) of every logged training step (the run's summary entry has no `loss`)."""
    return [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]


def extract_losses(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows {step, loss, eval_loss} of the logged training steps, eval_loss blank (None) where
    no evaluation ran at that step. An evaluation at a step that logged no training loss is
    left to the eval curve, so the loss column has no blanks."""
    evals = dict(extract_evaluations(history))
    return [
        {"step": step, "loss": loss, "eval_loss": evals.get(step)}
        for step, loss in extract_train_losses(history)
    ]


def write_loss_curves(reports: Path, stage: str, history: Sequence[Mapping[str, Any]]) -> None:
    """<stage>_loss.csv (step, loss, eval_loss) and <stage>_eval_loss.csv (step, eval_loss at
    each evaluation): DVC plots one column per file, and a blank cell would plot as zero."""
    write_curve(reports / f"{stage}_loss.csv", extract_losses(history), ["loss", "eval_loss"])
    evals = [{"step": s, "eval_loss": v} for s, v in extract_evaluations(history)]
    write_curve(reports / f"{stage}_eval_loss.csv", evals, ["eval_loss"])


def mean_train_loss(train: Sequence[tuple[int, float]], after: int, upto: int) -> float | None:
    """The mean training loss logged at steps after `after` up to `upto`; the last one logged by
    `upto` when none fall in between; None before the first."""
    window = [loss for step, loss in train if after < step <= upto]
    if window:
        return sum(window) / len(window)
    earlier = [loss for step, loss in train if step <= upto]
    return earlier[-1] if earlier else None


def find_overfitting(
    evals: Sequence[tuple[int, float]], train: Sequence[tuple[int, float]], patience: int
) -> tuple[int, int] | None:
    """The steps (from, to) over which eval loss rose while train loss fell, or None.

    Eval loss rose: the lowest evaluation (the earliest, on ties) is followed by at least
    `patience` later ones, the same wait as early stopping, and the last is higher. Train loss
    fell: its mean over the steps leading to the last evaluation (since the one before) is
    below its mean over the steps leading to the lowest; means, so one noisy step decides
    nothing."""
    if not evals:
        return None
    best = min(range(len(evals)), key=lambda i: evals[i][1])
    last = len(evals) - 1
    if last - best < patience or evals[last][1] <= evals[best][1]:
        return None
    at_best = mean_train_loss(train, evals[best - 1][0] if best else 0, evals[best][0])
    at_last = mean_train_loss(train, evals[last - 1][0], evals[last][0])
    if at_best is None or at_last is None or at_last >= at_best:
        return None
    return evals[best][0], evals[last][0]


def read_max_steps(folder: Path) -> int | None:
    """The step count the run was set for (max_steps, or the epochs' worth of steps)."""
    state = folder / TRAINER_STATE
    return json.loads(state.read_text("utf-8")).get("max_steps") if state.is_file() else None


def summarize_validation(
    history: Sequence[Mapping[str, Any]],
    plan: ValidationPlan,
    config: Mapping[str, Any],
    max_steps: int | None,
) -> dict[str, Any]:
    """The report's validation section: rows held out (or why none), the eval loss (last,
    best and its step), whether eval loss rose while train loss fell and over which steps,
    and whether early stopping ended the run."""
    evals = extract_evaluations(history)
    patience = config.get("early_stopping_steps")
    found = find_overfitting(evals, extract_train_losses(history), patience or DEFAULT_PATIENCE)
    best = min(evals, key=lambda e: e[1]) if evals else None
    steps = max((e["step"] for e in history if "step" in e), default=0)
    return {
        "rows": plan.rows,
        "skipped": plan.skipped,
        "evaluations": len(evals),
        "eval_loss_last": evals[-1][1] if evals else None,
        "eval_loss_best": best[1] if best else None,
        "best_step": best[0] if best else None,
        "overfitting": found is not None if evals else None,
        "overfitting_from_step": found[0] if found else None,
        "overfitting_to_step": found[1] if found else None,
        "early_stopping_patience": patience,
        "stopped_early": bool(patience and max_steps and steps < max_steps),
    }
