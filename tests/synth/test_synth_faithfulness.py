"""synth.faithfulness_check: the endpoint's model (or synth.faithfulness_endpoint's) judges
whether each answer the other filters keep is supported by its page chunk. Through the real
openai SDK against fake HTTP servers (the schema on the wire, a no asked again, a judge
endpoint of its own) and with the scripted client (off, on after an off run, an unreadable
verdict), on the two small hand-made pages."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pydantic
import pytest

from tasks.core.params import EndpointParams, SynthParams
from tasks.core.records import PreferenceTriple, QAPair
from tasks.llm.client import EndpointError, build_client, build_pool, check_endpoint, check_pool
from tasks.synth.generate import SynthDirs, open_judge, render_support_key, run_synth
from tasks.synth.parse import parse_support
from tasks.synth.prompts import SUPPORT_SCHEMA, SUPPORT_VERSION
from tests.support.fake_openai import Behaviour, FakeOpenAI, ok, serve_fake_openai
from tests.support.synth_fakes import (
    ScriptedClient,
    call_kind,
    count_words,
    covering_reply,
    is_judge_prompt,
    judged_answer,
    page_of,
    write_pages,
)

SEED = SynthParams().endpoint.sampling.seed
JUDGING = SynthParams(faithfulness_check=True)
# Fluent, made of the page's own words (so word overlap keeps it), and wrong: the page says
# pg_dump writes the snapshot and psql replays it.
SWAPPED = "The psql program writes a consistent snapshot of one database to a script file."


@pytest.fixture
def dirs(tmp_path: Path) -> SynthDirs:
    write_pages(tmp_path / "md")
    return SynthDirs(tmp_path / "md", tmp_path / "qa", tmp_path / "pref", tmp_path / "cache")


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def swapped_then_covering(body: dict[str, Any]) -> Behaviour:
    """backup.html's first Q/A reply is the swapped fact, which the judge rejects; every other
    reply, and that call's second attempt, is one every filter keeps."""
    messages, user = body["messages"], body["messages"][-1]["content"]
    kind = call_kind(user)
    if kind == "judge":
        unsupported = "psql program writes" in judged_answer(messages)
        return ok(json.dumps({"supported": "no" if unsupported else "yes"}))
    if kind == "qa" and body["seed"] == SEED and page_of(user) == "backup.html":
        question = "Which program writes a consistent snapshot of one database?"
        return ok(f"<QUE> {question} <ANS> {SWAPPED} <END>\n")
    return ok(covering_reply(messages))


async def run_through(fake: FakeOpenAI, dirs: SynthDirs, params: SynthParams) -> Any:
    async with build_client(params.endpoint, params.structured) as client:
        served = await check_endpoint(client)
        return await run_synth(client, dirs, params, count_words, endpoint_model=served)


def test_a_judged_no_is_dropped_asked_again_and_replayed_without_calls(dirs: SynthDirs) -> None:
    with serve_fake_openai() as fake:
        fake.responder = swapped_then_covering
        endpoint = EndpointParams(base_url=fake.base_url, model=fake.model)
        params = JUDGING.model_copy(update={"endpoint": endpoint})
        report = asyncio.run(run_through(fake, dirs, params))
        calls = len(fake.chat_requests)
        again = asyncio.run(run_through(fake, dirs, params))
        assert len(fake.chat_requests) == calls  # verdicts replay from the cache too

    judge_bodies = [
        b for b in fake.chat_bodies if call_kind(b["messages"][-1]["content"]) == "judge"
    ]
    # The schema travels as llama.cpp's json_schema (structured: gbnf), decoded greedily.
    assert judge_bodies and all(b["json_schema"] == SUPPORT_SCHEMA for b in judge_bodies)
    assert all(b["temperature"] == 0.0 and "grammar" not in b for b in judge_bodies)
    assert report["dropped_by_reason"] == {"qa.judge_unsupported": 1}
    assert report["attempts"]["qa"] == {"1": 2, "2": 1}  # backup.html's Q/A asked again
    # Every answer the other filters kept was judged once; all but the swapped fact supported.
    faith = report["faithfulness"]
    assert faith["check"] is True and faith["dropped"] == 1
    assert faith["verdicts"] == {"yes": len(judge_bodies) - 1, "no": 1, "unreadable": 0}
    assert faith["calls"] == {"made": len(judge_bodies), "reused": 0}
    assert report["calls"]["made"] == calls
    assert report["coverage"]["sections"]["share"] == 1.0
    assert again["calls"] == {"made": 0, "reused": calls, "failed": 0}
    assert again["faithfulness"]["calls"] == {"made": 0, "reused": len(judge_bodies)}
    assert again["faithfulness"]["verdicts"] == faith["verdicts"]

    pairs = [QAPair.model_validate(r) for r in read_rows(dirs.qa / "pairs.jsonl")]
    triples = [PreferenceTriple.model_validate(r) for r in read_rows(dirs.pref / "triples.jsonl")]
    assert pairs and triples and not any(SWAPPED in p.answer for p in pairs)
    records: list[QAPair | PreferenceTriple] = [*pairs, *triples]
    for record in records:
        assert record.faithful is True
        assert record.grounding is not None and record.grounding >= params.min_grounding
    dropped = read_rows(dirs.qa / "exclusions.jsonl")
    assert [r["reason"] for r in dropped] == ["judge_unsupported"]
    assert SWAPPED in dropped[0]["detail"]


def test_off_asks_no_judge_and_records_only_the_overlap_score(dirs: SynthDirs) -> None:
    client = ScriptedClient(reply=covering_reply)
    report = asyncio.run(run_synth(client, dirs, SynthParams(), count_words))
    assert not any(is_judge_prompt(m) for m in client.prompts)
    assert client.schemas == [None] * len(client.prompts)
    assert report["faithfulness"] == {
        "check": False,
        "model": None,
        "endpoint": None,
        "calls": {"made": 0, "reused": 0},
        "verdicts": {"yes": 0, "no": 0, "unreadable": 0},
        "dropped": 0,
    }
    for row in [*read_rows(dirs.qa / "pairs.jsonl"), *read_rows(dirs.pref / "triples.jsonl")]:
        assert row["faithful"] is None and 0 < row["grounding"] <= 1


def test_turning_it_on_keeps_every_reply_and_asks_only_the_judge(dirs: SynthDirs) -> None:
    off = asyncio.run(
        run_synth(ScriptedClient(reply=covering_reply), dirs, SynthParams(), count_words)
    )

    client = ScriptedClient(reply=covering_reply)
    on = asyncio.run(run_synth(client, dirs, JUDGING, count_words))
    assert client.prompts and all(is_judge_prompt(m) for m in client.prompts)
    assert client.schemas == [SUPPORT_SCHEMA] * len(client.prompts)
    # One verdict per kept answer, each asked once.
    assert len(client.prompts) == off["pairs"] + off["triples"]
    assert len({m[-1]["content"] for m in client.prompts}) == len(client.prompts)
    assert on["calls"]["reused"] == off["calls"]["made"]
    assert (on["pairs"], on["triples"]) == (off["pairs"], off["triples"])

    rerun = ScriptedClient(reply=covering_reply)
    asyncio.run(run_synth(rerun, dirs, JUDGING, count_words))
    assert rerun.prompts == []


def test_an_unreadable_verdict_drops_the_answer(dirs: SynthDirs) -> None:
    def reply(messages: list[dict[str, str]]) -> str:
        return "I think so." if is_judge_prompt(messages) else covering_reply(messages)

    report = asyncio.run(run_synth(ScriptedClient(reply=reply), dirs, JUDGING, count_words))
    assert report["pairs"] == report["triples"] == 0
    faith = report["faithfulness"]
    assert faith["verdicts"]["yes"] == faith["verdicts"]["no"] == 0
    assert faith["verdicts"]["unreadable"] == faith["dropped"] > 0
    assert set(report["dropped_by_reason"]) == {"qa.judge_unreadable", "triples.judge_unreadable"}


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ('{"supported": "yes"}', True),
        ('{"supported":"no"}', False),
        ('Sure: ```json\n{"supported": "NO"}\n```', False),
        ("Yes, the page says so.", True),
        ("no", False),
        ("I think so.", None),
        ('{"supported": "maybe"}', None),
    ],
)
def test_parse_support(text: str, verdict: bool | None) -> None:
    assert parse_support(text) is verdict


# ---- synth.faithfulness_endpoint: a judge of its own ----------------------------------------


def judge_reply(body: dict[str, Any]) -> Behaviour:
    """The judge server: no to the swapped fact, yes to every other answer."""
    unsupported = "psql program writes" in judged_answer(body["messages"])
    return ok(json.dumps({"supported": "no" if unsupported else "yes"}))


def kinds(fake: FakeOpenAI) -> list[str]:
    return [call_kind(b["messages"][-1]["content"]) for b in fake.chat_bodies]


def with_judge(synth: FakeOpenAI, judge: FakeOpenAI, model: str) -> SynthParams:
    return JUDGING.model_copy(
        update={
            "endpoint": EndpointParams(base_url=synth.base_url, model=synth.model),
            "faithfulness_endpoint": EndpointParams(
                base_url=judge.base_url, model=model, concurrency=2, retries=0
            ),
            "faithfulness_structured": "vllm",
        }
    )


async def run_with_pools(dirs: SynthDirs, params: SynthParams) -> Any:
    """As the flow runs the stage: synth's pool and the judge's, each checked before any work."""
    logger = logging.getLogger(__name__)
    async with build_pool(params.endpoint, params.structured, logger) as client:
        served = await check_pool(client)
        async with open_judge(params, logger) as judge:
            return await run_synth(
                client, dirs, params, count_words, endpoint_model=served, judge=judge
            )


def test_a_judge_endpoint_of_its_own_gets_every_verdict_and_nothing_else(
    dirs: SynthDirs,
) -> None:
    with (
        serve_fake_openai() as synth,
        serve_fake_openai(models=["big-judge"]) as judge,
    ):
        synth.responder, judge.responder = swapped_then_covering, judge_reply
        params = with_judge(synth, judge, "big-judge")
        report = asyncio.run(run_with_pools(dirs, params))
        made = (len(synth.chat_requests), len(judge.chat_requests))
        again = asyncio.run(run_with_pools(dirs, params))
        assert (len(synth.chat_requests), len(judge.chat_requests)) == made  # all replayed

    # The judge endpoint was checked before any work, and answered every verdict, under its
    # own model and structured mode; synth's endpoint was asked for none.
    assert judge.requests[0].method == "GET" and judge.requests[0].path == "/v1/models"
    assert kinds(judge) and set(kinds(judge)) == {"judge"}
    assert "judge" not in kinds(synth) and {"qa", "points", "triple"} <= set(kinds(synth))
    assert all(b["model"] == "big-judge" for b in judge.chat_bodies)
    assert all(b["structured_outputs"] == {"json": SUPPORT_SCHEMA} for b in judge.chat_bodies)
    assert all(b["temperature"] == 0.0 and "json_schema" not in b for b in judge.chat_bodies)
    assert all("grammar" in b for b in synth.chat_bodies)  # synth.structured: gbnf

    # Its verdicts decided what was kept.
    assert report["dropped_by_reason"] == {"qa.judge_unsupported": 1}
    faith = report["faithfulness"]
    assert faith["model"] == "big-judge"
    assert faith["verdicts"] == {"yes": made[1] - 1, "no": 1, "unreadable": 0}
    assert faith["calls"] == {"made": made[1], "reused": 0}
    # Each endpoint's requests are counted apart.
    assert faith["endpoint"]["attempts"] == made[1]
    assert report["endpoint"]["attempts"] == made[0]
    pairs = [QAPair.model_validate(r) for r in read_rows(dirs.qa / "pairs.jsonl")]
    assert pairs and all(p.faithful for p in pairs) and not any(SWAPPED in p.answer for p in pairs)
    assert again["calls"]["made"] == 0 and again["faithfulness"]["verdicts"] == faith["verdicts"]


def test_another_judge_model_asks_every_verdict_again_and_nothing_else(dirs: SynthDirs) -> None:
    with (
        serve_fake_openai() as synth,
        serve_fake_openai(models=["judge-a", "judge-b"]) as judge,
    ):
        synth.responder, judge.responder = swapped_then_covering, judge_reply
        first = asyncio.run(run_with_pools(dirs, with_judge(synth, judge, "judge-a")))
        asked = (len(synth.chat_requests), len(judge.chat_requests))
        second = asyncio.run(run_with_pools(dirs, with_judge(synth, judge, "judge-b")))

    assert len(synth.chat_requests) == asked[0]  # no generation call asked again
    again = judge.chat_bodies[asked[1] :]
    assert len(again) == asked[1] == first["faithfulness"]["calls"]["made"]
    assert {b["model"] for b in again} == {"judge-b"}
    assert second["calls"]["made"] == second["faithfulness"]["calls"]["made"] == asked[1]
    assert second["faithfulness"]["model"] == "judge-b"
    assert second["pairs"] == first["pairs"] and second["triples"] == first["triples"]


def test_an_unreachable_judge_endpoint_fails_before_any_call_naming_its_key(
    dirs: SynthDirs,
) -> None:
    with serve_fake_openai() as synth, serve_fake_openai() as gone:
        gone.stop()
        params = with_judge(synth, gone, "big-judge")
        with pytest.raises(EndpointError, match=r"^synth\.faithfulness_endpoint: ") as failed:
            asyncio.run(run_with_pools(dirs, params))
        assert gone.base_url in str(failed.value)
        assert synth.chat_requests == []

        # With the check off, the judge endpoint is never needed, so never contacted.
        off = params.model_copy(update={"faithfulness_check": False})
        synth.responder = lambda body: ok(covering_reply(body["messages"]))
        report = asyncio.run(run_with_pools(dirs, off))
        assert report["faithfulness"]["check"] is False and report["pairs"] > 0


def test_a_judge_endpoint_down_at_the_start_is_taken_out_and_the_others_judge(
    dirs: SynthDirs, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        serve_fake_openai() as synth,
        serve_fake_openai(models=["big-judge"]) as judge,
        serve_fake_openai(models=["big-judge"]) as gone,
    ):
        gone.stop()
        synth.responder, judge.responder = swapped_then_covering, judge_reply
        params = with_judge(synth, judge, "big-judge")
        assert params.faithfulness_endpoint is not None
        both = params.faithfulness_endpoint.model_copy(
            update={"base_url": [gone.base_url, judge.base_url]}
        )
        with caplog.at_level(logging.WARNING):
            report = asyncio.run(
                run_with_pools(dirs, params.model_copy(update={"faithfulness_endpoint": both}))
            )

    taken_out = [r.getMessage() for r in caplog.records if "out of rotation" in r.getMessage()]
    assert len(taken_out) == 1 and gone.base_url in taken_out[0]
    assert report["pages_failed"] == 0 and report["dropped_by_reason"] == {
        "qa.judge_unsupported": 1
    }
    assert report["faithfulness"]["calls"]["made"] == len(judge.chat_requests) > 0
    assert gone.chat_requests == []


def test_a_structured_mode_for_the_judge_needs_a_judge_endpoint() -> None:
    with pytest.raises(pydantic.ValidationError, match="faithfulness_endpoint is null"):
        SynthParams(faithfulness_structured="vllm")


def test_with_no_judge_endpoint_verdict_keys_are_what_they_were() -> None:
    """Verdicts cached before synth.faithfulness_endpoint existed replay: with it null, a
    verdict's key is still the hash of synth's endpoint model, sampling and structured mode."""
    messages = [{"role": "user", "content": "Does the page support it?"}]
    params = JUDGING
    before = {
        "support_version": SUPPORT_VERSION,
        "messages": messages,
        "schema": SUPPORT_SCHEMA,
        "structured": params.structured,
        "model": params.endpoint.model,
        "sampling": params.endpoint.sampling.model_dump(),
    }
    key = hashlib.sha256(json.dumps(before, sort_keys=True).encode("utf-8")).hexdigest()
    assert render_support_key(messages, params) == key
    judge = EndpointParams(base_url="http://judge.example:8000/v1", model="big-judge")
    assert (
        render_support_key(messages, params.model_copy(update={"faithfulness_endpoint": judge}))
        != key
    )
