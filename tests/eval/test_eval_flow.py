"""The eval flow end to end on tiny real models with the judge behind the fake OpenAI server
(the real openai SDK, constrained decoding, DeepEval's metrics): an invalid verdict is retried
and counted, and a rerun with nothing changed generates nothing and calls nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks.core.params import Params
from tests.support.datasets_inputs import build, page_body, write_inputs
from tests.support.fake_openai import Behaviour, FakeOpenAI, ok
from tests.support.judge_fakes import answer_schema, sent_schema
from tests.support.lf_inputs import write_tiny_model


def make_params(
    root: Path, fake: FakeOpenAI, models: list[Any] | None = None, judge: bool = True
) -> Params:
    base = root / "models" / "base"
    return Params.model_validate(
        {
            "paths": {
                "base_model": base,
                "eval": root / "data" / "eval",
                "eval_cache": root / "data" / "eval_cache",
                "reports": root / "reports",
            },
            "cpt": {
                "phases": {"short": {"seq_len": 64, "init_from": base}},
                "output": root / "models" / "cpt",
            },
            "orpo": {"output": root / "models" / "orpo"},
            "eval": {
                "models": models or ["base", "orpo"],
                # answers from the fake server (a random tiny model writes nothing readable);
                # perplexities and likelihoods still come from the tiny models
                "generation": "endpoint",
                "endpoints": {
                    name: {"base_url": fake.base_url, "model": fake.model, "retries": 1}
                    for name in ("base", "orpo")
                },
                "max_new_tokens": 8,
                "bootstrap_samples": 200,
                "judge": (
                    {"base_url": fake.base_url, "model": fake.model, "retries": 1}
                    if judge
                    else None
                ),
                "judge_metrics": ["correctness", "false_premise"],
            },
        }
    )


def test_eval_flow_judges_counts_invalid_replies_and_reruns_from_cache(
    prefect_harness: None, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    from flows.eval import eval_flow

    dirs = write_inputs(tmp_path / "data", [page_body(n, words=40) for n in range(6)], 1)
    build(dirs, eval_fraction=0.2, probe_fraction=0.5)
    write_tiny_model(tmp_path / "models" / "base")
    orpo = write_tiny_model(tmp_path / "models" / "orpo" / "model")
    (orpo / "train.yaml").write_text("stage: dpo\n")  # same weights, another folder hash
    params = make_params(tmp_path, fake_openai)
    verdicts: list[dict[str, Any]] = []

    def respond(body: dict[str, Any]) -> Behaviour:
        if sent_schema(body) is None:
            return ok("Run VACUUM FULL on the table.")  # a model's answer
        verdicts.append(body)
        return ok("this is not JSON") if len(verdicts) == 1 else answer_schema(body)

    fake_openai.responder = respond  # the first verdict is broken: retried and counted

    report = eval_flow(params)

    judge = report["judge"]
    assert judge["calls"] > 1 and judge["invalid"] >= 1 and judge["failed"] == 0
    # the broken verdict was asked again, with another seed
    again_asked = [v for v in verdicts[1:] if v["messages"] == verdicts[0]["messages"]]
    assert again_asked and again_asked[0]["seed"] != verdicts[0]["seed"]
    assert len(verdicts) == judge["calls"]  # each verdict request carried its schema
    probes = [json.loads(x) for x in (dirs.eval / "probe_triples.jsonl").read_text().splitlines()]
    probes += [json.loads(x) for x in (dirs.eval / "probe_qa.jsonl").read_text().splitlines()]
    orpo = report["metrics"]["orpo"]
    assert orpo["correctness.probes"]["n"] == len(probes)
    false_premises = [p for p in probes if p.get("kind") == "false_premise"]
    assert orpo["correction_rate.probes"]["n"] == len(false_premises) > 0
    # the fake judge scores 7 of 10: every false premise counts as corrected
    assert orpo["correction_rate.probes"]["value"] == 1.0
    assert report["models"]["orpo"]["answers_generated"] > 0

    calls = len(fake_openai.chat_bodies)
    again = eval_flow(params)
    assert len(fake_openai.chat_bodies) == calls  # no judge call
    assert again["judge"]["calls"] == 0 and again["judge"]["cached"] > 0
    assert all(m["answers_generated"] == 0 for m in again["models"].values())
    assert again["metrics"] == report["metrics"]
    html = (tmp_path / "reports" / "eval.html").read_text()
    assert "correctness.probes" in html


def test_eval_flow_names_a_missing_model(
    prefect_harness: None, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    from flows.eval import eval_flow

    dirs = write_inputs(tmp_path / "data", [page_body(n, words=40) for n in range(3)], 1)
    build(dirs, eval_fraction=0.3, probe_fraction=0.5)
    write_tiny_model(tmp_path / "models" / "base")
    with pytest.raises(FileNotFoundError, match="model orpo"):
        eval_flow(make_params(tmp_path, fake_openai))


def test_eval_flow_reports_a_served_model_beside_the_pipeline(
    prefect_harness: None, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """An answers-only server (scoring: none): its answers are scored, its likelihood metrics
    are marked not available in eval.json and the HTML, and it is the headline's final model."""
    from flows.eval import eval_flow

    dirs = write_inputs(tmp_path / "data", [page_body(n, words=40) for n in range(3)], 1)
    build(dirs, eval_fraction=0.3, probe_fraction=0.5)
    write_tiny_model(tmp_path / "models" / "base")
    write_tiny_model(tmp_path / "models" / "orpo" / "model")
    served = {"name": "orpo-served", "base_url": fake_openai.base_url, "model": fake_openai.model}
    models = ["base", "orpo", {**served, "scoring": "none", "retries": 1}]
    report = eval_flow(make_params(tmp_path, fake_openai, models, judge=False))

    assert report["model_order"] == ["base", "orpo", "orpo-served"]
    entry = report["models"]["orpo-served"]
    assert entry["scoring"] == "none" and entry["served"]["model"] == fake_openai.model
    assert entry["answers_generated"] > 0 and report["headline"]["final"] == "orpo-served"
    metrics = report["metrics"]["orpo-served"]
    assert "scoring: none" in metrics["ppl_general"]["not_available"]
    assert "not_available" not in metrics["literal_recall.probes"]
    answers = (tmp_path / "reports" / "eval" / "answers" / "orpo-served.jsonl").read_text()
    assert len(answers.splitlines()) == 8 and '"answer": "ok"' in answers
    assert report["metrics"]["orpo"]["ppl_general"]["value"] > 1
    html = (tmp_path / "reports" / "eval.html").read_text()
    assert "n/a for orpo-served" in html
