"""The export stage end to end on a tiny model laid out as the pipeline leaves it (the
committed reports and dvc.lock beside it): the GGUF, Modelfile and model card land in
models/export only once verified, the card's YAML header holds base_model, license and the
eval results in the model-index layout, and its body the dataset hashes of dvc.lock, the
synth endpoint and prompt version and the training configs; the Modelfile mirrors the
tokenizer's ChatML template with the SFT system prompt. A failed check leaves no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.core.params import Params
from tasks.export.card import CHATML_TEMPLATE, render_modelfile
from tasks.export.verify import ExportMismatch
from tests.support.tiny_models import write_tiny_model_folder

REPO = Path(__file__).resolve().parents[2]
REPORTS = ("model.json", "markdown.json", "synth.json", "eval.json", "gate.json")
SYSTEM = "You are an expert PostgreSQL database administrator."


def lay_out_repo(root: Path, tiny_root: Path) -> None:
    """models/orpo/{model, train.yaml} and the committed reports and dvc.lock."""
    (root / "reports").mkdir(parents=True)
    for name in REPORTS:
        shutil.copy(REPO / "reports" / name, root / "reports" / name)
    shutil.copy(REPO / "dvc.lock", root / "dvc.lock")
    shutil.copytree(write_tiny_model_folder(tiny_root, "llama"), root / "models/orpo/model")
    (root / "models/orpo/train.yaml").write_text("stage: dpo\npref_loss: orpo\n")


def make_params(**export: Any) -> Params:
    return Params.model_validate(
        {
            "crawl": {"start_urls": ["http://127.0.0.1:8765/managing-databases.html"]},
            "datasets": {"system_prompt": SYSTEM},
            "export": {"verify_tokens": 64, **export},
        }
    )


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    lay_out_repo(tmp_path / "repo", tmp_path / "tiny")
    monkeypatch.chdir(tmp_path / "repo")
    return tmp_path / "repo"


def read_card(path: Path) -> tuple[dict[str, Any], str]:
    _, header, body = path.read_text().split("---\n", 2)
    return yaml.safe_load(header), body


def test_export_writes_a_verified_gguf_a_modelfile_and_a_card(
    repo: Path, prefect_harness: None
) -> None:
    from flows.export import export_flow

    report = export_flow(make_params())
    out = repo / "models/export"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "model.gguf"]
    saved = json.loads((repo / "reports/export.json").read_text())
    assert saved["verification"]["agreement"] == report["verification"]["agreement"] >= 0.95
    assert saved["verification"]["tokenization"]["identical"]
    assert (saved["type"], saved["architecture"], saved["file"]) == ("f16", "llama", "model.gguf")
    assert saved["bytes"] == (out / "model.gguf").stat().st_size

    header, body = read_card(out / "README.md")
    assert header["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert header["license"] == "apache-2.0"  # from the base GGUF's general.license
    assert "gguf" in header["tags"]
    results = header["model-index"][0]["results"]
    metrics = {m["name"]: m["value"] for r in results for m in r["metrics"]}
    evaluated = json.loads((repo / "reports/eval.json").read_text())["metrics"]["orpo"]
    assert metrics["ppl_held_out"] == evaluated["ppl_held_out"]["value"]
    assert {r["dataset"]["type"] for r in results} >= {"probes", "held_out"}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in ("crawl", "markdown", "synth", "datasets"):
        for entry in lock[stage]["outs"]:
            if entry["md5"].endswith(".dir"):
                assert f"`{entry['md5']}`" in body
    synth = json.loads((repo / "reports/synth.json").read_text())
    assert f"`{synth['endpoint_model']}`" in body and f"`{synth['prompt_version']}`" in body
    assert "models/orpo/train.yaml" in body and "pref_loss: orpo" in body
    assert "Release gate (params.yaml `gate:`): passed." in body
    assert "http://127.0.0.1:8765/managing-databases.html" in body

    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in modelfile
    assert f'SYSTEM """{SYSTEM}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_a_failed_check_leaves_no_export(repo: Path, prefect_harness: None) -> None:
    from flows.export import export_flow

    (repo / "models/export").mkdir(parents=True)
    (repo / "models/export/model.gguf").write_text("the previous release")
    with pytest.raises(ExportMismatch, match=r"export\.min_argmax_agreement"):
        # q4_0 on a tiny random model parts from transformers at many positions
        export_flow(make_params(type="q4_0", min_argmax_agreement=1.0))
    assert (repo / "models/export/model.gguf").read_text() == "the previous release"
    assert sorted(p.name for p in (repo / "models").iterdir()) == ["export", "orpo"]  # no staging
    assert json.loads((repo / "reports/export.json").read_text())["verification"]["agreement"] < 1


def test_a_template_other_than_chatml_is_left_to_ollama() -> None:
    modelfile = render_modelfile("model.gguf", "[INST] Q1 [/INST]", SYSTEM, "</s>")
    assert "TEMPLATE" not in modelfile.replace("no TEMPLATE", "")
    assert 'PARAMETER stop "</s>"' in modelfile
