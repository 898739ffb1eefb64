"""The synth stage asks again for what its filters dropped, measures what its output covers and
stops loudly on junk: through the real openai SDK against the fake HTTP server, on two small
hand-made pages (one chunk each, asking for one Q/A pair and one main point)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tasks.core.params import EndpointParams, PathsParams, SynthParams
from tasks.core.records import PreferenceTriple, QAPair
from tasks.llm.client import build_client, check_endpoint
from tasks.synth.generate import (
    SynthDirs,
    run_synth,
)
from tasks.synth.yields import TooLowYield
from tests.support.fake_openai import Behaviour, FakeOpenAI, ok, serve_fake_openai
from tests.support.synth_fakes import (
    RecordingRunner,
    ScriptedClient,
    call_kind,
    count_words,
    covering_reply,
    page_of,
    write_pages,
)

REPO = Path(__file__).resolve().parents[2]
SEED = SynthParams().endpoint.sampling.seed
# Replies a filter or parser drops: a copied placeholder and a pair without its answer, a
# point without text, a triple whose answers are the same.
JUNK = {
    "qa": "<QUE> question <ANS> answer <END>\n<QUE> What is it? <END>",
    "points": "<POINT> <END>",
    "triple": "<QUE> Is that so? <GOOD> Yes. <BAD> Yes. <END>",
}


@pytest.fixture
def dirs(tmp_path: Path) -> SynthDirs:
    write_pages(tmp_path / "md")
    return SynthDirs(tmp_path / "md", tmp_path / "qa", tmp_path / "pref", tmp_path / "cache")


def junk_then_good(body: dict[str, Any]) -> Behaviour:
    """Junk on the first attempt, except backup.html's points (so its triples are asked on
    the first attempt and asked again); good replies with any other seed."""
    user = body["messages"][-1]["content"]
    kind = call_kind(user)
    first = body["seed"] == SEED and (kind != "points" or page_of(user) == "vacuum.html")
    return ok(JUNK[kind] if first else covering_reply(body["messages"]))


async def run_through(fake: FakeOpenAI, dirs: SynthDirs, params: SynthParams, **kw: Any) -> Any:
    async with build_client(params.endpoint, params.structured) as client:
        served = await check_endpoint(client)
        return await run_synth(client, dirs, params, count_words, endpoint_model=served, **kw)


def endpoint_params(fake: FakeOpenAI) -> SynthParams:
    return SynthParams(endpoint=EndpointParams(base_url=fake.base_url, model=fake.model))


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_what_the_first_attempt_dropped_is_asked_again_until_all_is_covered(
    dirs: SynthDirs,
) -> None:
    with serve_fake_openai() as fake:
        fake.responder = junk_then_good
        params = endpoint_params(fake)
        report = asyncio.run(run_through(fake, dirs, params))
        calls = len(fake.chat_requests)
        runner = RecordingRunner()
        again = asyncio.run(run_through(fake, dirs, params, run_page=runner))
        assert len(fake.chat_requests) == calls  # every attempt replays from the cache
        assert runner.urls == []  # and whole pages replay inline, without a page task

    assert {b["seed"] for b in fake.chat_bodies} == {SEED, SEED + 100}
    assert report["coverage"] == {
        "pages": {"covered": 2, "total": 2, "share": 1.0},
        "sections": {"covered": 6, "total": 6, "share": 1.0},
        "points": {"covered": 2, "total": 2, "share": 1.0},
    }
    # backup.html's triples come on the first attempt and again; vacuum.html's points came
    # back empty, so its triples are asked (once) on the second.
    assert report["attempts"] == {
        "points": {"1": 2, "2": 1},
        "qa": {"1": 2, "2": 2},
        "triple": {"1": 2, "2": 4},
    }
    assert report["dropped_by_attempt"] == {
        "1": {
            "points.empty_point": 1,
            "qa.missing_ans": 2,
            "qa.placeholder": 2,
            "triples.chosen_equals_rejected": 2,
        },
        "2": {},
    }
    assert report["calls"]["made"] == calls == 13
    assert report["yield"] == {"kept": 6, "asked": 6, "share": 1.0, "min_yield": 0.05}
    assert again["calls"] == {"made": 0, "reused": calls, "failed": 0}
    assert {k: again[k] for k in ("attempts", "coverage", "yield")} == {
        k: report[k] for k in ("attempts", "coverage", "yield")
    }
    pairs = [QAPair.model_validate(r) for r in read_rows(dirs.qa / "pairs.jsonl")]
    triples = [PreferenceTriple.model_validate(r) for r in read_rows(dirs.pref / "triples.jsonl")]
    assert len(pairs) == 6 and len(triples) == 4
    assert {r.endpoint_model for r in [*pairs, *triples]} == {report["endpoint_model"]}
    assert report["endpoint_model"] == "fake-model"
    excluded = read_rows(dirs.qa / "exclusions.jsonl") + read_rows(dirs.pref / "exclusions.jsonl")
    assert not any(r["reason"].startswith("uncovered_") for r in excluded)


def test_no_second_attempt_when_the_first_kept_something(dirs: SynthDirs) -> None:
    client = ScriptedClient(reply=covering_reply)
    report = asyncio.run(run_synth(client, dirs, SynthParams(), count_words))
    assert report["attempts"] == {"points": {"1": 2}, "qa": {"1": 2}, "triple": {"1": 4}}
    assert len(client.prompts) == 8 and report["coverage"]["sections"]["share"] == 1.0


def test_junk_everywhere_stops_the_stage_after_writing_its_outputs(
    tmp_path: Path, prefect_harness: None
) -> None:
    from flows.synth import synth_flow

    write_pages(tmp_path / "md")
    paths = PathsParams(
        markdown=tmp_path / "md",
        qa=tmp_path / "qa",
        pref=tmp_path / "pref",
        synth_cache=tmp_path / "cache",
        reports=tmp_path / "reports",
        cache=REPO / ".cache",  # the tokenizer the other synth tests use
    )
    with serve_fake_openai() as fake:
        fake.responder = lambda body: ok(JUNK[call_kind(body["messages"][-1]["content"])])
        with pytest.raises(TooLowYield) as stop:
            synth_flow(paths, endpoint_params(fake))

    message = str(stop.value)
    assert "synth kept 0 of the 6 Q/A pairs and triples it asked for" in message
    assert "yield of 0.000, under synth.min_yield = 0.05" in message
    assert "points.empty_point (6), qa.missing_ans (6), qa.placeholder (6)" in message
    assert "The endpoint serves 'fake-model'" in message
    report = json.loads((paths.reports / "synth.json").read_text())
    assert report["yield"]["share"] == 0.0 and report["pairs"] == 0
    assert report["coverage"]["pages"] == {"covered": 0, "total": 2, "share": 0.0}
    assert report["attempts"]["qa"] == {"1": 2, "2": 2, "3": 2}
    reasons = {r["reason"] for r in read_rows(paths.qa / "exclusions.jsonl")}
    assert {"placeholder", "missing_ans", "uncovered_page", "uncovered_section"} <= reasons
    points = read_rows(paths.pref / "exclusions.jsonl")
    assert "chunk 0: point 1 of 1 not given: points.empty_point (attempt 3)" in {
        r["detail"] for r in points if r["reason"] == "uncovered_point"
    }
