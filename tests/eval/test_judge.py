"""tasks.eval.judge and tasks.eval.judging through DeepEval's real metrics and the real openai
SDK, against tests/support/fake_openai.py: its responder answers every request with a minimal
instance of the JSON schema the request carries, so a valid reply also proves the schema
travelled."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tasks.core.params import EndpointParams, EvalParams, SamplingParams
from tasks.core.procs import free_port
from tasks.core.records import EvalPage
from tasks.eval.inputs import EvalInputs, Question
from tasks.eval.judge import InvalidJudgeReply, Judge, bound_schema
from tasks.eval.judging import JUDGE_METRICS, JudgeCase, judge_cases
from tasks.eval.run import judge_answer_sets
from tasks.llm.client import Backoff, OpenAIChatClient, render_strict_schema
from tests.support.fake_openai import Behaviour, FakeOpenAI, ok, serve_fake_openai
from tests.support.judge_fakes import answer_schema, sent_schema

SAMPLING = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=128, seed=7)
PAGE = (
    "ALTER TABLE ... SET TABLESPACE moves a table to another tablespace.\n"
    "Run `pg_ctl -D /srv/pg reload` after editing pg_hba.conf.\n"
)
CASES = [
    JudgeCase("q1", "qa", "How do I reload?", "Run pg_ctl reload.", "pg_ctl reload", PAGE, "15"),
    JudgeCase("q2", "good", "Is VACUUM FULL locking?", "Yes, fully.", "Yes.", PAGE, None),
    JudgeCase(
        "q3",
        "false_premise",
        "Why does DROP TABLE keep the data?",
        "It does not keep it.",
        "DROP TABLE removes the data; the premise is wrong.",
        PAGE,
        "15",
    ),
]
# Requests one case costs per metric with DeepEval 4.3.1: GEval scores in one call (its steps
# are given); faithfulness extracts truths and claims, then asks verdicts; relevancy extracts
# statements, then asks verdicts.
CALLS_PER_METRIC = {
    "correctness": 1,
    "version_correctness": 1,
    "command_validity": 1,
    "workflow_order": 1,
    "faithfulness": 3,
    "relevancy": 2,
    "false_premise": 1,
}


class Score(BaseModel):
    reason: str
    score: float


def prompt_of(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def make_judge(fake: FakeOpenAI, cache: Path, structured: str = "gbnf", attempts: int = 3) -> Judge:
    params = EndpointParams(
        base_url=fake.base_url, model=fake.model, sampling=SAMPLING, concurrency=4, retries=1
    )
    client = OpenAIChatClient(params, structured=structured, backoff=Backoff(first_s=0.01))
    return Judge(client, cache, max_parse_attempts=attempts)


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every socket connection made during the test, refusing any that leaves 127.0.0.1."""
    seen: list[Any] = []
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> None:
        seen.append(address)
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"connection to {address} outside the judge endpoint")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield seen


@pytest.mark.asyncio
@pytest.mark.parametrize("structured", ["gbnf", "vllm", "vllm-legacy", "none"])
async def test_the_schema_travels_and_the_reply_is_validated(
    fake_openai: FakeOpenAI, tmp_path: Path, structured: str
) -> None:
    fake_openai.responder = answer_schema
    judge = make_judge(fake_openai, tmp_path, structured)
    got = await judge.a_generate("Score this.", Score)
    await judge.client.aclose()
    assert got == Score(reason="fine", score=7)
    body = fake_openai.chat_bodies[0]
    expected = Score.model_json_schema()
    assert sent_schema(body) == (
        render_strict_schema(expected) if structured == "none" else expected
    )
    assert body["messages"] == [{"role": "user", "content": "Score this."}]
    assert body["temperature"] == 0.0 and body["seed"] == 7
    assert (judge.stats.calls, judge.stats.invalid, judge.stats.prompt_tokens) == (1, 0, 50)


@pytest.mark.asyncio
async def test_without_a_schema_the_text_comes_back(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.responder = answer_schema
    judge = make_judge(fake_openai, tmp_path)
    assert await judge.a_generate("Say something.") == "plain text"
    await judge.client.aclose()
    assert sent_schema(fake_openai.chat_bodies[0]) is None


@pytest.mark.asyncio
async def test_an_invalid_reply_is_retried_with_another_seed_and_counted(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script(ok('{"reason": "cut sho', finish_reason="length"), ok('{"score": "x"}'))
    fake_openai.responder = answer_schema
    judge = make_judge(fake_openai, tmp_path)
    got = await judge.a_generate("Score this.", Score)
    await judge.client.aclose()
    assert got == Score(reason="fine", score=7)
    assert (judge.stats.calls, judge.stats.invalid, judge.stats.failed) == (3, 2, 0)
    bodies = fake_openai.chat_bodies
    assert [b["seed"] for b in bodies] == [7, 8, 9]
    assert [b["max_tokens"] for b in bodies] == [128, 256, 512]


@pytest.mark.asyncio
async def test_after_the_last_attempt_the_metric_fails_and_is_counted(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # Every judge request about the broken case gets a reply that is not JSON.
    def respond(body: dict[str, Any]) -> Behaviour:
        return ok("I cannot answer") if "BROKEN" in prompt_of(body) else answer_schema(body)

    fake_openai.responder = respond
    broken = JudgeCase("b", "qa", "What is BROKEN?", "BROKEN it is.", "ref", PAGE, "15")
    judge = make_judge(fake_openai, tmp_path, attempts=2)
    got = await judge_cases([broken, CASES[0]], judge, ["correctness"])
    assert got == [{"correctness": None}, {"correctness": pytest.approx(0.7)}]
    assert (judge.stats.calls, judge.stats.invalid, judge.stats.failed) == (3, 2, 1)
    with pytest.raises(InvalidJudgeReply, match="no reply valid as Score in 2 attempts"):
        await judge.a_generate("BROKEN", Score)
    await judge.client.aclose()


@pytest.mark.asyncio
async def test_a_rerun_makes_no_calls_and_gives_the_same_scores(
    fake_openai: FakeOpenAI, tmp_path: Path, loopback_only: list[Any]
) -> None:
    fake_openai.responder = answer_schema
    first = make_judge(fake_openai, tmp_path)
    scores = await judge_cases(CASES, first, JUDGE_METRICS)
    await first.client.aclose()
    sent = len(fake_openai.chat_requests)

    second = make_judge(fake_openai, tmp_path)
    again = await judge_cases(CASES, second, JUDGE_METRICS)
    await second.client.aclose()

    assert again == scores
    assert len(fake_openai.chat_requests) == sent == first.stats.calls
    assert second.stats.calls == 0
    assert second.stats.cached == first.stats.calls + first.stats.cached
    assert loopback_only, "the guard saw no connection at all"


@pytest.mark.asyncio
async def test_one_dict_per_case_and_false_premise_only_where_it_applies(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.responder = answer_schema
    judge = make_judge(fake_openai, tmp_path)
    got = await judge_cases(CASES, judge, JUDGE_METRICS)
    await judge.client.aclose()
    assert [list(scores) for scores in got] == [list(JUDGE_METRICS)] * len(CASES)
    assert [scores["false_premise"] for scores in got] == [None, None, pytest.approx(0.7)]
    for scores in got:
        assert scores["correctness"] == pytest.approx(0.7)
        assert scores["faithfulness"] == scores["relevancy"] == 1.0
    assert (judge.stats.invalid, judge.stats.failed) == (0, 0)


@pytest.mark.asyncio
@pytest.mark.parametrize("metric", JUDGE_METRICS)
async def test_requests_per_case_and_metric(
    fake_openai: FakeOpenAI, tmp_path: Path, metric: str
) -> None:
    fake_openai.responder = answer_schema
    judge = make_judge(fake_openai, tmp_path)
    await judge_cases([CASES[2]], judge, [metric])
    await judge.client.aclose()
    assert len(fake_openai.chat_requests) == CALLS_PER_METRIC[metric]


@pytest.mark.asyncio
async def test_rubrics_see_the_version_and_the_page_verbatim(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.responder = answer_schema
    judge = make_judge(fake_openai, tmp_path)
    await judge_cases([CASES[0]], judge, ["correctness", "version_correctness", "command_validity"])
    await judge.client.aclose()
    prompts = {prompt_of(b) for b in fake_openai.chat_bodies}
    versioned = [p for p in prompts if "Product version: 15" in p]
    with_page = [p for p in prompts if "Run `pg_ctl -D /srv/pg reload` after" in p]
    assert len(versioned) == len(with_page) == 1 and versioned != with_page
    assert all("only source of truth" in p for p in prompts - {*versioned, *with_page})


@pytest.mark.asyncio
async def test_empty_answers_and_missing_pages(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.responder = answer_schema
    empty = JudgeCase("e", "qa", "How do I reload?", "  ", "pg_ctl reload", PAGE, "15")
    no_page = JudgeCase("n", "qa", "How do I reload?", "pg_ctl reload", "pg_ctl reload", "", None)
    judge = make_judge(fake_openai, tmp_path)
    got = await judge_cases([empty, no_page], judge, ["correctness", "faithfulness"])
    await judge.client.aclose()
    assert got == [
        {"correctness": 0.0, "faithfulness": 0.0},
        {"correctness": pytest.approx(0.7), "faithfulness": None},
    ]
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.asyncio
async def test_unknown_metrics_are_refused(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    judge = make_judge(fake_openai, tmp_path)
    with pytest.raises(ValueError, match="unknown judge metrics \\['fluency'\\]"):
        await judge_cases(CASES, judge, ["correctness", "fluency"])
    await judge.client.aclose()
    assert fake_openai.chat_requests == []


def test_generate_runs_outside_an_event_loop(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.responder = answer_schema
    judge = make_judge(fake_openai, tmp_path)
    assert judge.generate("Score this.", Score) == Score(reason="fine", score=7)
    assert judge.generate("Score that.", Score) == Score(reason="fine", score=7)
    assert judge.get_model_name() == "fake-model"

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="inside a running event loop"):
            judge.generate("Score this.", Score)

    asyncio.run(inside())
    judge.sync_runner().run(judge.client.aclose())


def test_deepeval_telemetry_is_off() -> None:
    from deepeval.telemetry import telemetry_opt_out

    assert telemetry_opt_out()


def test_bounded_schema_caps_lists_and_strings_but_not_enums_or_tighter_bounds() -> None:
    from deepeval.metrics.faithfulness.schema import Verdicts

    schema = Verdicts.model_json_schema()
    bounded = bound_schema(schema, 8, 240)
    assert bounded["properties"]["verdicts"]["maxItems"] == 8
    item = bounded["$defs"]["FaithfulnessVerdict"]["properties"]
    reason = next(v for v in item["reason"]["anyOf"] if v.get("type") == "string")
    assert reason["maxLength"] == 240
    assert "maxLength" not in item["verdict"]  # an enum's values are its bound
    tight = {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 10}}
    assert bound_schema(tight, 8, 240) == tight
    assert bound_schema(schema, None, None) == schema


def judge_inputs() -> EvalInputs:
    page = EvalPage(id="p1", url="https://docs.example/p1", title="p1", version="15", text=PAGE)
    questions = [
        Question(
            f"q{i}", "probes", "qa", "p1", page.url, "15", f"How do I reload ({i})?", "Run it."
        )
        for i in range(8)
    ]
    return EvalInputs(held_out_pages=[], sources={"p1": page}, questions=questions)


def test_the_judge_spreads_over_several_endpoints_and_takes_a_dead_one_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """eval.judge with a list of URLs: the stage's judge (judge_answer_sets) sends its calls to
    every live endpoint, takes out the one that is down with a log line, and scores every
    answer."""
    inputs = judge_inputs()
    answers = {q.id: "Run pg_ctl reload." for q in inputs.questions}
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with serve_fake_openai() as a, serve_fake_openai() as b:
        a.responder = b.responder = answer_schema
        judge = {"model": a.model, "sampling": SAMPLING.model_dump(), "retries": 0}
        params = EvalParams(
            judge=EndpointParams.model_validate(
                {**judge, "base_url": [a.base_url, dead, b.base_url]}
            ),
            judge_metrics=["correctness"],
        )
        with caplog.at_level(logging.WARNING):
            judged, stats = asyncio.run(
                judge_answer_sets({"orpo": answers}, inputs, params, tmp_path / "cache")
            )
        served = len(a.chat_requests), len(b.chat_requests)
    assert set(judged["orpo"]) == set(answers)
    assert all(scores["correctness"] == 0.7 for scores in judged["orpo"].values())
    assert min(served) >= 2 and sum(served) == stats["calls"] == len(answers)
    assert list(stats["endpoints_removed"]) == [dead.rstrip("/")] and stats["failed"] == 0
    removed = [r.getMessage() for r in caplog.records if "taken out of rotation" in r.getMessage()]
    assert len(removed) == 1 and dead in removed[0]
