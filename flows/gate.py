"""gate: pass or fail a release on its eval report.

Run with `dvc repro gate`, `python -m flows.gate` or `make gate` (for CI). Reads params `gate:`
and reports/eval.json; with `gate.baseline`, the eval report committed at that git revision.
Writes reports/gate.json (every check with its value and bound) and exits non-zero with one
line per broken floor (metric, model, value, bound) when the release must not ship.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import run_name
from tasks.core.params import GateParams, PathsParams, load_stage_params
from tasks.core.report import finish_report
from tasks.gate.check import (
    check_baseline,
    check_floors,
    read_baseline_metrics,
    read_eval_report,
    render_gate_report,
)


class GateFailed(RuntimeError):
    """The release broke at least one floor; the message lists each."""


@flow(name="gate", flow_run_name=run_name("gate"))
def gate_flow(paths: PathsParams, params: GateParams) -> dict[str, Any]:
    """Check the gated model's metrics against the floors and the baseline release."""
    started, log = time.monotonic(), get_run_logger()
    eval_path = paths.reports / "eval.json"
    evaluated = read_eval_report(eval_path)
    metrics, names = evaluated["metrics"], evaluated["model_order"]
    model, base = params.model or names[-1], names[0]
    floors = check_floors(metrics, params.floors, model, base)
    baseline = []
    if params.baseline:
        then = read_baseline_metrics(params.baseline, Path(eval_path))
        baseline = check_baseline(metrics, then, model, params.tolerance, params.lower_is_better)
    report = render_gate_report(model, floors, baseline, params.baseline)
    finish_report(paths.reports, "gate", report, started)
    for check in (*floors, *baseline):
        log.info("%s %s", "pass" if check.passed else "FAIL", check.render())
    if not report["passed"]:
        raise GateFailed("the release fails the gate:\n  " + "\n  ".join(report["failed"]))
    return report


if __name__ == "__main__":
    params = load_stage_params()
    try:
        gate_flow(params.paths, params.gate)
    except GateFailed as exc:
        sys.exit(f"error: {exc}")
