"""dvc.yaml, params.yaml and the flows agree: each stage runs its own flow module, depends on
every project module that flow imports (a file, or the folder holding it), and declares its
params section and report. A foreach stage (cpt) is checked once per generated stage
(cpt@short, ...), as DVC expands it. And the layout holds: a stage package imports only the
shared core, the LLM access layer and itself."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.core.params import STAGES

STAGE_PACKAGES = (
    "crawl",
    "markdown",
    "synth",
    "model",
    "datasets",
    "cpt",
    "finetune",
    "eval",
    "gate",
    "export",
    "diff",  # not a stage, but held to the same layout
)
SHARED_PACKAGES = ("core", "llm")
# Modules a stage runs as a separate process instead of importing.
CHILD_MODULES = {"cpt": "tasks.cpt.train", "model": "tasks.model.hub"}

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def render(value: str, context: dict | None = None) -> str:
    """dvc.yaml's ${a.b} templating, from params.yaml (and a foreach stage's key and item)."""

    def lookup(match: re.Match[str]) -> str:
        found: object = {**PARAMS, **(context or {})}
        for part in match.group(1).split("."):
            found = found[part]  # type: ignore[index]
        return str(found)

    return re.sub(r"\$\{([^}]+)\}", lookup, value)


def render_tree(node: object, context: dict) -> object:
    if isinstance(node, str):
        return render(node, context)
    if isinstance(node, list):
        return [render_tree(n, context) for n in node]
    if isinstance(node, dict):
        return {render(k, context): render_tree(v, context) for k, v in node.items()}
    return node


def expand_stages() -> dict[str, dict]:
    """DVC's stages, foreach ones expanded to NAME@KEY with ${key} and ${item.x} filled in."""
    stages = {}
    for name, spec in DVC["stages"].items():
        if "foreach" not in spec:
            stages[name] = spec
            continue
        section, *rest = spec["foreach"].strip("${}").split(".")
        items = PARAMS[section]
        for part in rest:
            items = items[part]
        for key, item in items.items():
            stages[f"{name}@{key}"] = render_tree(spec["do"], {"key": key, "item": item})
    return stages


STAGE_SPECS = expand_stages()


def imported_project_files(*modules: str) -> set[str]:
    code = (
        f"import json, sys, {', '.join(modules)}; print(json.dumps(sorted(m.__file__ for n, m in "
        "sys.modules.items() if n.split('.')[0] in ('flows', 'tasks') and m.__file__)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    files = {str(Path(f).resolve().relative_to(REPO)) for f in json.loads(out)}
    return {f for f in files if not f.endswith("__init__.py")}


def names(entries: list) -> list[str]:
    return [render(next(iter(e)) if isinstance(e, dict) else e) for e in entries]


@pytest.mark.parametrize("name", sorted(STAGE_SPECS))
def test_stage_runs_its_flow_and_depends_on_its_code(name: str) -> None:
    spec = STAGE_SPECS[name]
    stage, _, key = name.partition("@")  # cpt@short: flow cpt for phase short
    # synth's cmd ends with its retry round as a shell comment (tasks/synth/rerun.py).
    cmd = spec["cmd"].split("  # ", 1)[0]
    assert cmd == f"python -m flows.{stage}" + (f" {key}" if key else "")
    assert stage in STAGES and stage in PARAMS
    # A foreach stage tracks its own item and the keys of its section it reads (not the
    # other items, so that changing one phase reruns that phase only).
    assert spec["params"][0] == (f"{stage}.phases.{key}" if key else stage)
    for param in spec["params"][1:]:  # another stage's setting this one reads, e.g. cpt.phases
        section, *rest = param.split(".")
        value = PARAMS[section]
        for part in rest:
            value = value[part]
        assert section in STAGES and (section != stage or key)
    modules = [f"flows.{stage}", *([CHILD_MODULES[stage]] if stage in CHILD_MODULES else [])]
    declared = names(spec["deps"])
    missing = {
        path
        for path in imported_project_files(*modules)
        if not any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in declared)
    }
    assert not missing, f"dvc.yaml stage {name} lacks deps {sorted(missing)}"
    report = name.replace("@", "_")
    assert names(spec["metrics"]) == [f"{PARAMS['paths']['reports']}/{report}.json"]


def test_stages_chain_through_declared_paths() -> None:
    outs = {stage: names(spec.get("outs", [])) for stage, spec in STAGE_SPECS.items()}
    assert outs["crawl"] == [PARAMS["paths"]["raw"]]
    assert PARAMS["paths"]["raw"] in names(DVC["stages"]["markdown"]["deps"])
    assert outs["markdown"] == [PARAMS["paths"]["markdown"]]
    assert outs["model"] == [PARAMS["paths"]["base_model"]]
    datasets_deps = names(DVC["stages"]["datasets"]["deps"])
    for key in ("markdown", "qa", "pref", "base_model"):
        assert PARAMS["paths"][key] in datasets_deps
    assert outs["datasets"] == [PARAMS["paths"][k] for k in ("eval", "cpt", "sft", "orpo")]
    cpt = PARAMS["cpt"]
    starts = {PARAMS["paths"]["base_model"]}  # each phase starts where another one ended
    starts |= {f"{cpt['output']}/{phase}" for phase in cpt["phases"]}
    for phase, settings in cpt["phases"].items():
        deps = names(STAGE_SPECS[f"cpt@{phase}"]["deps"])
        assert f"{PARAMS['paths']['cpt']}/{phase}" in deps
        assert settings["init_from"] in starts and settings["init_from"] in deps
        assert outs[f"cpt@{phase}"][0] == f"{cpt['output']}/{phase}"
    # eval reads every model the training stages write, and the gate reads eval's report
    eval_deps = names(DVC["stages"]["eval"]["deps"])
    for path in (PARAMS["paths"]["eval"], PARAMS["paths"]["base_model"], cpt["output"]):
        assert path in eval_deps
    for stage in ("sft", "orpo"):
        assert f"{PARAMS[stage]['output']}/model" in eval_deps
    report = f"{PARAMS['paths']['reports']}/eval.json"
    assert report in names(DVC["stages"]["gate"]["deps"])


def imports_of(path: Path) -> set[str]:
    """The project modules a file imports (absolute imports; the code uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "tasks"}


@pytest.mark.parametrize("package", STAGE_PACKAGES)
def test_a_stage_package_imports_only_the_core_and_itself(package: str) -> None:
    allowed = {package, *SHARED_PACKAGES}
    crossing = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / "tasks" / package).rglob("*.py"))
        for name in imports_of(path)
        if name == "tasks" or name.split(".")[1] not in allowed
    }
    assert not crossing, sorted(crossing)


@pytest.mark.parametrize("package", SHARED_PACKAGES)
def test_the_shared_packages_import_no_stage(package: str) -> None:
    crossing = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / "tasks" / package).rglob("*.py"))
        for name in imports_of(path)
        if name == "tasks" or name.split(".")[1] not in SHARED_PACKAGES
    }
    assert not crossing, sorted(crossing)
