"""The gate's checks on reports/eval.json: floors pinned in params, and no regression against
the eval report of a baseline release read from git."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.core.params import Floor

Metrics = Mapping[str, Mapping[str, Mapping[str, Any]]]  # model -> metric key -> entry


@dataclass(frozen=True)
class Check:
    metric: str
    model: str
    value: float | None
    bound: str  # what it had to be, e.g. ">= 0.5 (base 0.45 + 0.05)"
    passed: bool

    def render(self) -> str:
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        return f"{self.metric} of {self.model}: {shown}, must be {self.bound}"


def read_eval_report(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro eval` first")
    return dict(json.loads(path.read_text("utf-8")))


def metric_value(metrics: Metrics, model: str, key: str) -> float | None:
    entry = metrics.get(model, {}).get(key) or {}
    value = entry.get("value")
    return None if value is None else float(value)


def check_floor(metrics: Metrics, floor: Floor, model: str, base: str) -> list[Check]:
    """One Check per bound the floor sets; a metric that is missing fails (a floor that
    cannot be checked must not pass by default)."""
    value = metric_value(metrics, model, floor.metric)
    base_value = metric_value(metrics, base, floor.metric)
    if value is None and not floor.required:
        return [Check(floor.metric, model, None, "measured (optional floor: skipped)", True)]
    checks = []

    def add(bound: str, ok: bool | None) -> None:
        checks.append(Check(floor.metric, model, value, bound, bool(ok) and value is not None))

    if floor.min is not None:
        add(f">= {floor.min:g}", value is not None and value >= floor.min)
    if floor.max is not None:
        add(f"<= {floor.max:g}", value is not None and value <= floor.max)
    if floor.min_vs_base is not None:
        if base_value is None:
            add(f">= base {base} + {floor.min_vs_base:g} (base value missing)", False)
        else:
            limit = base_value + floor.min_vs_base
            add(
                f">= {limit:.4g} (base {base_value:.4g} {floor.min_vs_base:+g})",
                value is not None and value >= limit,
            )
    if floor.max_ratio_vs_base is not None:
        if base_value is None:
            add(f"<= base {base} x {floor.max_ratio_vs_base:g} (base value missing)", False)
        else:
            limit = base_value * floor.max_ratio_vs_base
            add(
                f"<= {limit:.4g} (base {base_value:.4g} x {floor.max_ratio_vs_base:g})",
                value is not None and value <= limit,
            )
    return checks


def check_floors(metrics: Metrics, floors: Sequence[Floor], model: str, base: str) -> list[Check]:
    return [c for f in floors for c in check_floor(metrics, f, f.model or model, base)]


def is_lower_better(key: str, lower_is_better: Sequence[str]) -> bool:
    return key.split(".")[0] in lower_is_better


def check_baseline(
    now: Metrics, then: Metrics, model: str, tolerance: float, lower_is_better: Sequence[str]
) -> list[Check]:
    """Every metric the gated model has in both reports: it regresses when even the favourable
    end of its interval is worse than the baseline value by more than the tolerance (absolute
    for shares, relative for perplexities)."""
    checks = []
    for key, entry in sorted(now.get(model, {}).items()):
        old = then.get(model, {}).get(key) or {}
        if entry.get("value") is None or old.get("value") is None:
            continue
        lower = is_lower_better(key, lower_is_better)
        slack = tolerance * abs(old["value"]) if key.startswith("ppl_") else tolerance
        if lower:
            best = entry["low"] if entry.get("low") is not None else entry["value"]
            limit = old["value"] + slack
            checks.append(
                Check(
                    key,
                    model,
                    entry["value"],
                    f"<= {limit:.4g} (baseline {old['value']:.4g}; interval low {best:.4g})",
                    best <= limit,
                )
            )
        else:
            best = entry["high"] if entry.get("high") is not None else entry["value"]
            limit = old["value"] - slack
            checks.append(
                Check(
                    key,
                    model,
                    entry["value"],
                    f">= {limit:.4g} (baseline {old['value']:.4g}; interval high {best:.4g})",
                    best >= limit,
                )
            )
    return checks


def read_baseline_metrics(revision: str, report: Path) -> dict[str, Any]:
    """reports/eval.json as committed at `revision` (a tag, branch or commit)."""
    spec = f"{revision}:{report.as_posix()}"
    done = subprocess.run(["git", "show", spec], capture_output=True, text=True)
    if done.returncode != 0:
        raise FileNotFoundError(
            f"gate.baseline: cannot read {report} at revision {revision!r} "
            f"({done.stderr.strip()}); name a tag or commit whose eval report is committed"
        )
    return dict(json.loads(done.stdout)).get("metrics", {})


def render_gate_report(
    model: str, floors: Sequence[Check], baseline: Sequence[Check], revision: str | None
) -> dict[str, Any]:
    failed = [c for c in (*floors, *baseline) if not c.passed]
    return {
        "passed": not failed,
        "model": model,
        "floors": [asdict(c) for c in floors],
        "baseline": {"revision": revision, "checks": [asdict(c) for c in baseline]},
        "failed": [c.render() for c in failed],
    }
