"""The eval stage on tiny real models: every model measured side by side, results cached by
the model's hash (an unchanged rerun loads no model and generates nothing; a new model costs
only its own results), and the reports a person reads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tasks.core.params import EvalParams
from tasks.eval.inputs import read_eval_inputs, select_passage, strip_citation
from tasks.eval.measure import ModelRef
from tasks.eval.run import (
    measure_models,
    render_headline,
    resolve_models,
    summarize,
    write_eval_outputs,
)
from tests.support.datasets_inputs import build, page_body, write_inputs
from tests.support.lf_inputs import write_tiny_model

GENERAL = (
    "The river ran past the mill.\n\nBread rises when yeast feeds on sugar.\n\nBirds fly south."
)
PARAMS = EvalParams(judge=None, max_new_tokens=8, bootstrap_samples=200, review_sample=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    dirs = write_inputs(root / "data", [page_body(n, words=60) for n in range(6)], 2)
    build(dirs, eval_fraction=0.2, probe_fraction=0.5)
    base = write_tiny_model(root / "models" / "base")
    return {"root": root, "eval": dirs.eval, "base": base}


def perturbed_copy(src: Path, out: Path, scale: float) -> Path:
    """The model at `src` with noise of `scale` added to every weight: a different model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return out


def run_eval(world: dict[str, Path], refs: list[ModelRef], cache: Path, reports: Path) -> dict:
    inputs = read_eval_inputs(world["eval"], list(PARAMS.sets))
    results = measure_models(refs, inputs, GENERAL, "You are an expert.", PARAMS, cache)
    metrics, reference = summarize(results, inputs, {}, PARAMS)
    report = {
        "metrics": metrics,
        "open_book": reference,
        "headline": render_headline(metrics, reference, PARAMS.sets),
        "generated": {r.name: r.generated for r in results},
    }
    write_eval_outputs(reports, results, inputs, {}, metrics, reference, report, PARAMS)
    return report


def test_every_model_is_measured_and_reported(world: dict[str, Path], tmp_path: Path) -> None:
    sft = perturbed_copy(world["base"], tmp_path / "sft", 0.02)
    refs = [ModelRef("base", world["base"]), ModelRef("sft", sft)]
    report = run_eval(world, refs, tmp_path / "cache", tmp_path / "reports")
    inputs = read_eval_inputs(world["eval"], ["probes", "held_out"])
    probes = [q for q in inputs.questions if q.set == "probes"]
    assert probes, "the fixture must hold knowledge probes"
    for name in ("base", "sft"):
        m = report["metrics"][name]
        assert m["ppl_general"]["value"] > 1 and m["ppl_general"]["n"] == 3
        assert m["ppl_held_out"]["value"] > 1
        good = [q for q in probes if q.kind == "good"]
        assert m["choice_good.probes"]["n"] == len(good)
        entry = m["choice_good.probes"]
        assert entry["low"] <= entry["value"] <= entry["high"]
    # base and sft differ, so their perplexities do
    assert report["metrics"]["base"]["ppl_general"] != report["metrics"]["sft"]["ppl_general"]
    reports = tmp_path / "reports"
    answers = [json.loads(x) for x in (reports / "eval/answers/sft.jsonl").read_text().splitlines()]
    assert {a["id"] for a in answers} == {q.id for q in inputs.questions}
    assert (reports / "eval/answers/base-open-book.jsonl").is_file()
    with (reports / "eval_scores.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == ["base", "sft"]
    page = (reports / "eval.html").read_text()
    assert "<svg" in page and "choice_good.probes" in page and "base, open book" in page


def test_review_sheet_hides_which_model_answered(world: dict[str, Path], tmp_path: Path) -> None:
    sft = perturbed_copy(world["base"], tmp_path / "sft", 0.05)
    refs = [ModelRef("base", world["base"]), ModelRef("sft", sft)]
    run_eval(world, refs, tmp_path / "cache", tmp_path / "reports")
    folder = tmp_path / "reports" / "eval"
    with (folder / "review.csv").open() as fh:
        sheet = list(csv.DictReader(fh))
    with (folder / "review_key.csv").open() as fh:
        key = {r["id"]: r for r in csv.DictReader(fh)}
    assert "sft" not in (folder / "review.csv").read_text()
    answers = {
        name: {
            json.loads(x)["id"]: json.loads(x)["answer"]
            for x in (folder / f"answers/{name}.jsonl").read_text().splitlines()
        }
        for name in ("base", "sft")
    }
    for row in sheet:
        k = key[row["id"]]
        assert row["answer_a"] == answers[k["a"]][row["id"]]
        assert row["answer_b"] == answers[k["b"]][row["id"]]
        assert {k["a"], k["b"]} == {"base", "sft"}


def test_an_unchanged_rerun_loads_no_model_and_a_new_model_costs_only_itself(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sft = perturbed_copy(world["base"], tmp_path / "sft", 0.02)
    refs = [ModelRef("base", world["base"]), ModelRef("sft", sft)]
    first = run_eval(world, refs, tmp_path / "cache", tmp_path / "r1")
    assert first["generated"]["base"] > 0 and first["generated"]["sft"] > 0

    loaded: list[str] = []
    import tasks.eval.measure as measure

    real = measure.load_model
    monkeypatch.setattr(
        measure, "load_model", lambda folder: loaded.append(folder.name) or real(folder)
    )
    again = run_eval(world, refs, tmp_path / "cache", tmp_path / "r2")
    assert loaded == [] and again["generated"] == {"base": 0, "sft": 0}
    assert again["metrics"] == first["metrics"]

    perturbed_copy(world["base"], sft, 0.03)  # sft retrained: a new model in the same folder
    third = run_eval(world, refs, tmp_path / "cache", tmp_path / "r3")
    assert loaded == ["sft"]
    assert third["generated"]["base"] == 0 and third["generated"]["sft"] > 0


def test_models_are_resolved_in_stage_order_and_bad_names_fail(world: dict[str, Path]) -> None:
    available = {"base": world["base"], "cpt/short": world["base"], "sft": world["base"]}
    assert [r.name for r in resolve_models(available, ["sft", "base"])] == ["base", "sft"]
    with pytest.raises(ValueError, match="unknown model"):
        resolve_models(available, ["base", "dpo"])
    with pytest.raises(ValueError, match="base model"):
        resolve_models(available, ["sft"])
    with pytest.raises(FileNotFoundError, match="orpo"):
        resolve_models({**available, "orpo": world["root"] / "nowhere"}, None)


def test_missing_eval_data_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dvc repro datasets"):
        read_eval_inputs(tmp_path, ["probes"])


def test_citations_and_passages() -> None:
    assert strip_citation("Use VACUUM. (Source: http://x/a.html, PostgreSQL 15)") == "Use VACUUM."
    text = "\n\n".join(f"para {i} " + "filler " * 30 for i in range(20)) + "\n\nvacuum freeze age"
    passage = select_passage(text, "what is the vacuum freeze age", 400)
    assert "vacuum freeze age" in passage and len(passage) <= 400
