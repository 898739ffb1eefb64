"""Params and stage metrics between two versions, as `dvc params diff` and `dvc metrics diff`
would list them, read from the files each version already gave us, with the direction that is
better marked where it is known."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Key parts (of a dotted metric key) that say which way is better. Checked in order, so a
# specific name wins over a general one; anything else is left unmarked.
LOWER_PARTS = {
    "loss",
    "eval_loss_best",
    "eval_loss_last",
    "train_loss",
    "nll",
    "perplexity",
    "failed",
    "pages_failed",
    "cache_corrupt",
    "damaged",
    "replacement_chars",
    "pad_tokens",
    "retries",
    "parse_failures",
    "dropped_by_reason",
    "mismatches",
}
LOWER_PREFIXES = ("ppl_", "literal_invented", "dropped")
HIGHER_PARTS = {"efficiency", "agreement", "grounded_share", "mean_score", "passed", "share"}
# The eval stage's per-model scores (metrics.<model>.<metric>.value).
HIGHER_PREFIXES = (
    "correctness",
    "literal_recall",
    "choice_",
    "correction_rate",
    "false_premise",
    "faithfulness",
    "relevancy",
    "answer_relevancy",
)
UNDIRECTED_LEAVES = {"n", "low", "high"}  # an interval's bounds and size, not a score


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists and scalars are leaves."""
    if not isinstance(obj, Mapping):
        return {prefix: obj} if prefix else {}
    flat: dict[str, Any] = {}
    for key in sorted(obj, key=str):
        flat |= flatten(obj[key], f"{prefix}.{key}" if prefix else str(key))
    return flat


def diff_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    flat_a, flat_b = flatten(a), flatten(b)
    return [
        {"key": key, "before": flat_a.get(key), "after": flat_b.get(key)}
        for key in sorted(flat_a.keys() | flat_b.keys())
        if flat_a.get(key) != flat_b.get(key) or (key in flat_a) != (key in flat_b)
    ]


def better_direction(report: str, key: str, lower_is_better: Sequence[str] = ()) -> str | None:
    """'lower', 'higher' or None (not known) for one metric of one report."""
    parts = key.split(".")
    if parts[-1] in UNDIRECTED_LEAVES:
        return None
    if parts[-1].endswith("_per_s") or parts[-1].endswith("_per_second"):
        return "higher"  # a rate
    if parts[-1].endswith("_s"):
        return "lower"  # seconds
    if report == "eval" and any(p in lower_is_better for p in parts):
        return "lower"
    for part in parts:
        if part in LOWER_PARTS or part.startswith(LOWER_PREFIXES):
            return "lower"
    for part in parts:
        if part in HIGHER_PARTS or (report == "eval" and part.startswith(HIGHER_PREFIXES)):
            return "higher"
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float)


def judge(before: Any, after: Any, direction: str | None) -> str:
    if direction is None or not (is_number(before) and is_number(after)) or before == after:
        return ""
    return "better" if (after < before) == (direction == "lower") else "worse"


def diff_metrics(
    a: Mapping[str, Mapping[str, Any]],
    b: Mapping[str, Mapping[str, Any]],
    lower_is_better: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every numeric metric of every stage report that differs (or exists on one side only)."""
    rows = []
    for report in sorted(a.keys() | b.keys()):
        flat_a = {k: v for k, v in flatten(a.get(report) or {}).items() if is_number(v)}
        flat_b = {k: v for k, v in flatten(b.get(report) or {}).items() if is_number(v)}
        for key in sorted(flat_a.keys() | flat_b.keys()):
            before, after = flat_a.get(key), flat_b.get(key)
            if before == after and (key in flat_a) == (key in flat_b):
                continue
            direction = better_direction(report, key, lower_is_better)
            delta = after - before if before is not None and after is not None else None
            rows.append(
                {
                    "report": report,
                    "key": key,
                    "before": before,
                    "after": after,
                    "delta": round(delta, 6) if isinstance(delta, float) else delta,
                    "better": direction,
                    "verdict": judge(before, after, direction),
                }
            )
    return rows
