"""dvc.yaml, params.yaml and the flows agree: each stage runs its own flow module, depends on
every project module that flow imports, and declares its params section and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.params import STAGES

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def render(value: str) -> str:
    """dvc.yaml's ${paths.x} templating, from params.yaml."""
    for key, path in PARAMS["paths"].items():
        value = value.replace("${paths." + key + "}", str(path))
    return value


def imported_project_files(module: str) -> set[str]:
    code = (
        f"import json, sys, {module}; print(json.dumps(sorted(m.__file__ for n, m in "
        "sys.modules.items() if n.split('.')[0] in ('flows', 'tasks') and m.__file__)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    files = {str(Path(f).resolve().relative_to(REPO)) for f in json.loads(out)}
    return {f for f in files if not f.endswith("__init__.py")}


def names(entries: list) -> list[str]:
    return [render(next(iter(e)) if isinstance(e, dict) else e) for e in entries]


@pytest.mark.parametrize("stage", sorted(DVC["stages"]))
def test_stage_runs_its_flow_and_depends_on_its_code(stage: str) -> None:
    spec = DVC["stages"][stage]
    assert spec["cmd"] == f"python -m flows.{stage}"
    assert stage in STAGES and stage in PARAMS
    assert spec["params"][0] == stage
    for key in spec["params"][1:]:  # another stage's setting this one reads, e.g. cpt.phases
        section, *rest = key.split(".")
        value = PARAMS[section]
        for part in rest:
            value = value[part]
        assert section in STAGES and section != stage
    missing = imported_project_files(f"flows.{stage}") - set(names(spec["deps"]))
    assert not missing, f"dvc.yaml stage {stage} lacks deps {sorted(missing)}"
    assert names(spec["metrics"]) == [f"{PARAMS['paths']['reports']}/{stage}.json"]


def test_stages_chain_through_declared_paths() -> None:
    outs = {stage: names(spec["outs"]) for stage, spec in DVC["stages"].items()}
    assert outs["crawl"] == [PARAMS["paths"]["raw"]]
    assert PARAMS["paths"]["raw"] in names(DVC["stages"]["markdown"]["deps"])
    assert outs["markdown"] == [PARAMS["paths"]["markdown"]]
    assert outs["model"] == [PARAMS["paths"]["base_model"]]
    datasets_deps = names(DVC["stages"]["datasets"]["deps"])
    for key in ("markdown", "qa", "pref", "base_model"):
        assert PARAMS["paths"][key] in datasets_deps
    assert outs["datasets"] == [PARAMS["paths"][k] for k in ("eval", "cpt", "sft", "orpo")]
