"""The gate: floors pinned in params pass or fail naming the metric, model, value and bound; a
missing metric fails; a baseline release read from git catches a regression."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tasks.core.params import Floor, GateParams, PathsParams
from tasks.gate.check import check_baseline, check_floors, read_baseline_metrics


def entry(value: float, low: float | None = None, high: float | None = None, n: int = 10) -> dict:
    return {
        "value": value,
        "n": n,
        "low": value if low is None else low,
        "high": value if high is None else high,
    }


METRICS = {
    "base": {"ppl_general": entry(20.0), "choice_good.probes": entry(0.5)},
    "orpo": {"ppl_general": entry(24.0), "choice_good.probes": entry(0.6, 0.4, 0.8)},
    "cpt/short": {"ppl_general": entry(21.0), "choice_good.probes": entry(0.5)},
    "sft": {"ppl_general": entry(21.0), "choice_good.probes": entry(0.5)},
}


def test_floors_pass_and_fail_naming_the_bound() -> None:
    floors = [
        Floor(metric="ppl_general", max_ratio_vs_base=1.5),
        Floor(metric="choice_good.probes", min_vs_base=0.0),
        Floor(metric="choice_good.probes", min=0.7),
    ]
    checks = check_floors(METRICS, floors, "orpo", "base")
    assert [c.passed for c in checks] == [True, True, False]
    assert checks[2].render() == "choice_good.probes of orpo: 0.6, must be >= 0.7"
    damaged = {**METRICS, "orpo": {**METRICS["orpo"], "ppl_general": entry(90.0)}}
    failed = [
        c for c in check_floors(METRICS | damaged, floors[:1], "orpo", "base") if not c.passed
    ]
    assert "ppl_general of orpo: 90" in failed[0].render() and "<= 30" in failed[0].render()


def test_a_floor_on_a_missing_metric_fails_unless_optional() -> None:
    required = Floor(metric="correctness.probes", min=0.1)
    optional = Floor(metric="correctness.probes", min=0.1, required=False)
    assert not check_floors(METRICS, [required], "orpo", "base")[0].passed
    assert check_floors(METRICS, [optional], "orpo", "base")[0].passed
    with pytest.raises(ValueError, match="at least one"):
        Floor(metric="x")


def test_baseline_regression_beyond_tolerance_and_interval() -> None:
    then = {"orpo": {"choice_good.probes": entry(0.9), "ppl_general": entry(20.0)}}
    checks = {c.metric: c for c in check_baseline(METRICS, then, "orpo", 0.05, ["ppl_general"])}
    # 0.6 with interval up to 0.8, against 0.9 - 0.05: even the interval's top is below
    assert not checks["choice_good.probes"].passed
    # 24 against 20 x 1.05: worse beyond the relative tolerance
    assert not checks["ppl_general"].passed
    close = {"orpo": {"choice_good.probes": entry(0.82), "ppl_general": entry(23.5)}}
    assert all(c.passed for c in check_baseline(METRICS, close, "orpo", 0.05, ["ppl_general"]))


def test_baseline_is_read_from_a_git_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    Path("reports").mkdir()
    Path("reports/eval.json").write_text(json.dumps({"metrics": METRICS}))
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "release"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    assert read_baseline_metrics("v1", Path("reports/eval.json")) == METRICS
    with pytest.raises(FileNotFoundError, match="v2"):
        read_baseline_metrics("v2", Path("reports/eval.json"))


def test_gate_flow_fails_with_one_line_per_broken_floor(
    tmp_path: Path, prefect_harness: None
) -> None:
    from flows.gate import GateFailed, gate_flow

    reports = tmp_path / "reports"
    reports.mkdir()
    # written as the eval stage writes it: keys sorted, the stage order kept apart
    (reports / "eval.json").write_text(
        json.dumps(
            {"metrics": METRICS, "model_order": ["base", "cpt/short", "sft", "orpo"]},
            sort_keys=True,
        )
    )
    paths = PathsParams(reports=reports)
    passing = GateParams(floors=[Floor(metric="ppl_general", max_ratio_vs_base=1.5)])
    assert gate_flow(paths, passing)["passed"]
    failing = GateParams(
        floors=[
            Floor(metric="ppl_general", max_ratio_vs_base=1.1),
            Floor(metric="choice_good.probes", min=0.9),
        ]
    )
    with pytest.raises(GateFailed) as err:
        gate_flow(paths, failing)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 2 and "ppl_general of orpo: 24" in lines[0]
    report = json.loads((reports / "gate.json").read_text())
    assert report["passed"] is False and len(report["failed"]) == 2
