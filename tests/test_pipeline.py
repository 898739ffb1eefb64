"""The pipeline as a user runs it: `dvc repro` in a copy of the repo against a real docs site
(committed PostgreSQL pages) served on 127.0.0.1, with one local Prefect server and an
OpenAI-compatible endpoint on 127.0.0.1 (the fake server: real wire format, scripted replies)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tasks.core.procs import free_port
from tasks.services.local import run_prefect_server, serve_directory
from tests.support.fake_openai import Behaviour, FakeOpenAI, ok, serve_fake_openai
from tests.support.judge_fakes import answer_schema, sent_schema
from tests.support.synth_fakes import scripted_reply
from tests.support.tiny_models import write_tiny_gguf

REPO = Path(__file__).resolve().parents[1]
FIXTURE_SITE = REPO / "tests" / "fixtures" / "sites" / "postgresql-15"
STAGES = (
    "crawl",
    "markdown",
    "synth",
    "model",
    "datasets",
    "cpt@short",
    "cpt@long",
    "sft",
    "orpo",
    "eval",
    "gate",
    "export",
)


def copy_repo(dest: Path) -> None:
    """The files a fresh clone would have (tracked and not-ignored), as a new git repo."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-home")
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    try:
        with run_prefect_server(port=free_port()) as api:
            yield api
    finally:
        if old is None:
            os.environ.pop("PREFECT_HOME")
        else:
            os.environ["PREFECT_HOME"] = old


def run_dvc(repo: Path, api: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
        "DVC_NO_ANALYTICS": "1",
    }
    return subprocess.run(
        ["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def endpoint() -> Iterator[FakeOpenAI]:
    with serve_fake_openai() as fake:
        fake.responder = synth_or_judge
        yield fake


def synth_or_judge(body: dict[str, Any]) -> Behaviour:
    """The synth stage's scripted replies; a request that carries a JSON schema is the eval
    stage's judge, answered with an instance of that schema."""
    if sent_schema(body) is not None:
        return answer_schema(body)
    return ok(scripted_reply(body["messages"]))


def point_params_at(repo: Path, site: str, endpoint: FakeOpenAI) -> None:
    """The committed site, the fake endpoint, and a tiny GGUF as the base model (the
    conversion and its check against llama.cpp are real, just small)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["crawl"].update(start_urls=[site + "backup.html"], max_depth=None, exclude=[])
    params["synth"]["endpoint"].update(base_url=endpoint.base_url, model=endpoint.model)
    params["eval"]["judge"].update(base_url=endpoint.base_url, model=endpoint.model)
    params["model"]["gguf"] = str(write_tiny_gguf(repo.parent / "tiny.gguf"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@dataclass
class Pipeline:
    repo: Path
    api: str
    endpoint: FakeOpenAI
    first: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, prefect_api: str, endpoint: FakeOpenAI
) -> Iterator[Pipeline]:
    """A fresh copy of the repo, pointed at the served site and the fake endpoint, after its
    first `dvc repro`; the site stays served while the module's tests run."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    copy_repo(repo)
    with serve_directory(FIXTURE_SITE, port=free_port()) as site:
        point_params_at(repo, site, endpoint)
        yield Pipeline(repo, prefect_api, endpoint, run_dvc(repo, prefect_api, "repro"))


def test_dvc_repro_twice_second_run_executes_nothing(pipeline: Pipeline) -> None:
    repo, prefect_api, endpoint, first = (
        pipeline.repo,
        pipeline.api,
        pipeline.endpoint,
        pipeline.first,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    calls = len(endpoint.chat_requests)
    assert calls > 0

    second = run_dvc(repo, prefect_api, "repro")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout
    assert "didn't change, skipping" in second.stdout

    # A forced re-crawl of the unchanged site leaves data/raw byte-identical,
    # so the markdown stage has nothing to do.
    forced = run_dvc(repo, prefect_api, "repro", "-f", "crawl")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    after = run_dvc(repo, prefect_api, "status")
    assert "changed" not in after.stdout, after.stdout
    assert len(endpoint.chat_requests) == calls  # nothing reran, nothing was paid twice

    pages = sorted((repo / "data" / "markdown").glob("*.md"))
    site_pages = list(FIXTURE_SITE.glob("*.html"))
    assert len(pages) == len(site_pages)
    assert any("pg_dump" in p.read_text() for p in pages)
    crawl_report = yaml.safe_load((repo / "reports" / "crawl.json").read_text())
    assert crawl_report["not_modified"] + crawl_report.get("unchanged", 0) >= len(site_pages)

    runs = requests.post(f"{prefect_api}/flow_runs/filter", json={}, timeout=10).json()
    states = sorted((r["name"], r["state_type"]) for r in runs)
    flow_names = {
        f["id"]: f["name"]
        for f in requests.post(f"{prefect_api}/flows/filter", json={}, timeout=10).json()
    }
    ran = sorted(flow_names[r["flow_id"]] for r in runs if r["state_type"] == "COMPLETED")
    assert ran == sorted([*(s.split("@")[0] for s in STAGES), "crawl"]), states
    # Runs are named for people browsing the history: stage (and phase), revision, time.
    names = {r["name"].split(" ")[0] for r in runs}
    assert names == {*STAGES}, names
    pairs = (repo / "data" / "qa" / "pairs.jsonl").read_text().splitlines()
    triples = (repo / "data" / "pref" / "triples.jsonl").read_text().splitlines()
    assert pairs and triples
    cpt_docs = (repo / "data" / "cpt" / "documents.jsonl").read_text().splitlines()
    assert cpt_docs and (repo / "data" / "sft" / "dataset_info.json").is_file()
    for stage in ("cpt/long", "sft/model", "orpo/model"):
        assert (repo / "models" / stage / "config.json").is_file(), stage
    assert json.loads((repo / "reports" / "orpo.json").read_text()).get("skipped") is None


def unusable_triples(body: dict[str, Any]) -> Any:
    """Good points and Q/A, but every preference-triple reply malformed (no <GOOD>/<BAD>)."""
    user = body["messages"][-1]["content"]
    if "Main point: " in user and "<POINT> main point <END>" not in user:
        return ok("<QUE> Is that so? <END>\n")
    return synth_or_judge(body)


def test_an_empty_preference_set_completes_the_pipeline_with_orpo_skipped(
    pipeline: Pipeline,
) -> None:
    repo = pipeline.repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synth"]["endpoint"]["sampling"]["temperature"] = 0.5  # new calls, not the cached ones
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline.endpoint.responder = unusable_triples

    run = run_dvc(repo, pipeline.api, "repro")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Running stage 'orpo'" in run.stdout
    assert "Running stage 'sft'" not in run.stdout  # the Q/A, so data/sft, did not change
    assert (repo / "data" / "pref" / "triples.jsonl").read_text() == ""
    datasets = json.loads((repo / "reports" / "datasets.json").read_text())
    assert datasets["below_minimum"] == {"orpo": 0}
    orpo = json.loads((repo / "reports" / "orpo.json").read_text())
    assert orpo["skipped"] is True and orpo["model_passed_on_from"] == "models/sft/model"
    assert "set docs_pref has 0 row(s)" in orpo["reason"]
    sft_model, orpo_model = repo / "models" / "sft" / "model", repo / "models" / "orpo" / "model"
    for path in sft_model.iterdir():
        assert (orpo_model / path.name).read_bytes() == path.read_bytes(), path.name
