"""tasks.llm.client through the real openai SDK against tests/support/fake_openai.py, and
once against the real llama.cpp server with SmolLM2 (tasks.llm.server)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from typing import Any

import pytest

from tasks.core.params import EndpointParams, SamplingParams
from tasks.core.procs import free_port
from tasks.llm.client import (
    Backoff,
    EndpointError,
    MalformedReplyError,
    OpenAIChatClient,
    build_client,
    check_endpoint,
    find_served_model,
    parse_completion,
    render_strict_schema,
)
from tests.support.fake_openai import FakeOpenAI, drop, malformed, ok, sleep, status

# Harmless once tests/conftest.py imports the fixture too.
pytest_plugins = ("tests.support.llm_fixtures",)

MESSAGES = [{"role": "user", "content": "Write one question about the docs."}]
FAST = Backoff(first_s=0.01)  # for tests about what is retried, not about how long it waits


def client_for(
    fake: FakeOpenAI, structured: str = "none", *, backoff: Backoff | None = None, **overrides: Any
) -> OpenAIChatClient:
    params = EndpointParams(base_url=fake.base_url, model=fake.model, **overrides)
    return OpenAIChatClient(params, structured=structured, backoff=backoff)


def gaps(fake: FakeOpenAI) -> list[float]:
    """Seconds between consecutive chat requests as the server saw them."""
    at = [r.at for r in fake.chat_requests]
    return [b - a for a, b in itertools.pairwise(at)]


@pytest.mark.asyncio
async def test_ok_reply_becomes_a_completion(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(ok("hello there", usage=(12, 2)))
    async with client_for(fake_openai) as client:
        got = await client.complete(MESSAGES)
    assert (got.text, got.finish_reason, got.prompt_tokens, got.completion_tokens) == (
        "hello there",
        "stop",
        12,
        2,
    )
    assert got.model == "fake-model"


@pytest.mark.parametrize(
    ("details", "cached"),
    [({"cached_tokens": 8}, 8), ({"cached_tokens": None}, 0), (None, 0), ("junk", 0)],
)
def test_prefix_cache_hits_come_from_usage_details(details: Any, cached: int) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": details}
    body = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": usage}
    got = parse_completion(json.dumps(body), "http://x/v1/chat/completions", "m")
    assert (got.prompt_tokens, got.cached_prompt_tokens) == (10, cached)


@pytest.mark.asyncio
async def test_sampling_grammar_and_extra_body_are_sent(fake_openai: FakeOpenAI) -> None:
    sampling = SamplingParams(temperature=0.2, top_p=0.9, max_tokens=64, seed=7)
    async with client_for(fake_openai, "gbnf", sampling=sampling) as client:
        await client.complete(MESSAGES, grammar='root ::= "x"', extra_body={"top_k": 5})
    body = fake_openai.chat_bodies[0]
    assert body["messages"] == MESSAGES
    assert body["model"] == "fake-model"
    assert {k: body[k] for k in ("temperature", "top_p", "max_tokens", "seed", "top_k")} == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 7,
        "top_k": 5,
    }
    assert body["grammar"] == 'root ::= "x"'


@pytest.mark.asyncio
async def test_vllm_grammar_fields_and_null_seed(fake_openai: FakeOpenAI) -> None:
    params = {"sampling": SamplingParams(seed=None)}
    async with client_for(fake_openai, "vllm", **params) as client:
        await client.complete(MESSAGES, grammar="g", extra_body={"structured_outputs": {"x": 1}})
    async with client_for(fake_openai, "vllm-legacy") as client:
        await client.complete(MESSAGES, grammar="g")
    new, legacy = fake_openai.chat_bodies
    assert new["structured_outputs"] == {"grammar": "g", "x": 1}
    assert "seed" not in new and "grammar" not in new
    assert legacy["guided_grammar"] == "g"


@pytest.mark.asyncio
async def test_grammar_without_structured_mode_is_refused(fake_openai: FakeOpenAI) -> None:
    async with client_for(fake_openai) as client:
        with pytest.raises(ValueError, match="structured"):
            await client.complete(MESSAGES, grammar="g")
    assert fake_openai.chat_requests == []


# What pydantic makes of a model with a nested model, a list and an optional field.
VERDICTS_SCHEMA: dict[str, Any] = {
    "$defs": {
        "Verdict": {
            "properties": {
                "verdict": {"enum": ["yes", "no"], "type": "string"},
                "reason": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
            "required": ["verdict"],
            "title": "Verdict",
            "type": "object",
        }
    },
    "properties": {"verdicts": {"items": {"$ref": "#/$defs/Verdict"}, "type": "array"}},
    "required": ["verdicts"],
    "title": "Verdicts",
    "type": "object",
}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("structured", "path"),
    [
        ("gbnf", ["json_schema"]),
        ("vllm", ["structured_outputs", "json"]),
        ("vllm-legacy", ["guided_json"]),
        ("none", ["response_format", "json_schema", "schema"]),
    ],
)
async def test_json_schema_fields_per_structured_mode(
    fake_openai: FakeOpenAI, structured: str, path: list[str]
) -> None:
    async with client_for(fake_openai, structured) as client:
        await client.complete(MESSAGES, json_schema=VERDICTS_SCHEMA, extra_body={"top_k": 5})
    body = fake_openai.chat_bodies[0]
    sent = body
    for key in path:
        sent = sent[key]
    expected = render_strict_schema(VERDICTS_SCHEMA) if structured == "none" else VERDICTS_SCHEMA
    assert sent == expected
    assert body["top_k"] == 5 and body["temperature"] == 0.7
    if structured == "none":
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["name"] == "Verdicts"
        assert body["response_format"]["json_schema"]["strict"] is True


def test_strict_schemas_close_every_object_and_require_every_property() -> None:
    strict = render_strict_schema(VERDICTS_SCHEMA)
    verdict = strict["$defs"]["Verdict"]
    assert verdict["required"] == ["verdict", "reason"]
    assert verdict["additionalProperties"] is False and strict["additionalProperties"] is False
    assert "default" not in verdict["properties"]["reason"]
    assert verdict["properties"]["reason"]["anyOf"][1] == {"type": "null"}
    assert VERDICTS_SCHEMA["$defs"]["Verdict"]["required"] == ["verdict"]  # not mutated


@pytest.mark.asyncio
async def test_a_grammar_and_a_json_schema_together_are_refused(fake_openai: FakeOpenAI) -> None:
    async with client_for(fake_openai, "gbnf") as client:
        with pytest.raises(ValueError, match="not both"):
            await client.complete(MESSAGES, grammar="g", json_schema=VERDICTS_SCHEMA)
    assert fake_openai.chat_requests == []


@pytest.mark.asyncio
async def test_429_waits_for_retry_after(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(status(429, retry_after=2), ok("after wait"))
    async with client_for(fake_openai, retries=2) as client:
        got = await client.complete(MESSAGES)
    assert got.text == "after wait"
    [gap] = gaps(fake_openai)
    assert 1.9 <= gap < 2.6, f"Retry-After: 2 was waited {gap:.2f} s"


@pytest.mark.asyncio
async def test_5xx_then_success_backs_off(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(status(500), status(503), ok("third time"))
    async with client_for(fake_openai, retries=3) as client:
        got = await client.complete(MESSAGES)
    assert got.text == "third time"
    first, second = gaps(fake_openai)
    # SDK backoff: 0.5 s then 1 s, each less up to 25 % jitter.
    assert 0.35 <= first < 0.7 and 0.7 <= second < 1.2, (first, second)


@pytest.mark.asyncio
async def test_timeout_then_success(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(sleep(2.0), ok("in time"))
    async with client_for(fake_openai, timeout_s=0.5, retries=1) as client:
        got = await client.complete(MESSAGES)
    assert got.text == "in time"
    assert len(fake_openai.chat_requests) == 2


@pytest.mark.asyncio
async def test_no_retry_beyond_retries(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(status(503), status(503), status(503), ok("too late"))
    async with client_for(fake_openai, retries=2) as client:
        with pytest.raises(
            EndpointError, match=r"HTTP 503 after 3 attempts \(max_retries=2\)"
        ) as err:
            await client.complete(MESSAGES)
    assert fake_openai.base_url in str(err.value)
    assert len(fake_openai.chat_requests) == 3 and fake_openai.pending == 1


@pytest.mark.asyncio
async def test_client_errors_and_long_retry_after_are_not_retried(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(status(400), status(429, retry_after=300))
    async with client_for(fake_openai, retries=3) as client:
        with pytest.raises(EndpointError, match=r"HTTP 400 after 1 attempt \(max_retries=3\)"):
            await client.complete(MESSAGES)
        # The SDK refuses to wait more than 120 s; it raises at once instead.
        with pytest.raises(EndpointError, match="HTTP 429 after 1 attempt "):
            await client.complete(MESSAGES)
    assert len(fake_openai.chat_requests) == 2


@pytest.mark.asyncio
async def test_timeouts_exhausted_name_the_url(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(sleep(1.0), sleep(1.0))
    async with client_for(fake_openai, timeout_s=0.3, retries=1) as client:
        with pytest.raises(
            EndpointError, match=r"timed out after 2 attempts \(max_retries=1\)"
        ) as err:
            await client.complete(MESSAGES)
    assert f"{fake_openai.base_url}/chat/completions" in str(err.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("not_json", "not JSON"),
        ("empty_body", "not JSON"),
        ("no_choices", "no choices"),
        ("null_content", "content is None"),
    ],
)
async def test_malformed_reply_is_retried_then_raises(
    fake_openai: FakeOpenAI, what: Any, message: str
) -> None:
    # Changed: a malformed 200 used to fail at once; it is now retried like a 5xx.
    fake_openai.script(*[malformed(what)] * 3, ok("too late"))
    async with client_for(fake_openai, backoff=FAST, retries=2) as client:
        with pytest.raises(MalformedReplyError, match=message) as err:
            await client.complete(MESSAGES)
    assert fake_openai.base_url in str(err.value) and "after 3 attempts" in str(err.value)
    assert err.value.retried == ("malformed", "malformed")
    assert len(fake_openai.chat_requests) == 3 and fake_openai.pending == 1


@pytest.mark.asyncio
async def test_a_malformed_reply_then_a_good_one_succeeds(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(malformed("no_choices"), ok("second time"))
    async with client_for(fake_openai, backoff=FAST, retries=1) as client:
        got = await client.complete(MESSAGES)
    assert (got.text, got.retried) == ("second time", ("malformed",))


@pytest.mark.asyncio
async def test_every_retried_fault_is_counted_by_cause_and_logged(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.script(
        status(429, retry_after=0.05),
        status(500),
        sleep(1.0),
        drop(),
        malformed(),
        ok("at last"),
    )
    caplog.set_level(logging.INFO, logger="tasks.llm.client")
    async with client_for(fake_openai, backoff=FAST, retries=5, timeout_s=0.3) as client:
        got = await client.complete(MESSAGES)
    assert got.text == "at last"
    causes = ("http_429", "http_500", "timeout", "connection", "malformed")
    assert got.retried == causes
    assert len(fake_openai.chat_requests) == 6
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 5
    url = f"{fake_openai.base_url}/chat/completions"
    for n, (line, cause) in enumerate(zip(lines, causes, strict=True), start=1):
        assert line.startswith(f"{url}: {cause} on attempt {n} of 6, retrying in "), line
    assert lines[0].endswith("retrying in 0.05 s")  # the server's Retry-After


@pytest.mark.asyncio
async def test_a_final_failure_says_what_was_retried(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(status(502), drop(), status(404))
    async with client_for(fake_openai, backoff=FAST, retries=4) as client:
        with pytest.raises(EndpointError, match=r"HTTP 404 after 3 attempts") as err:
            await client.complete(MESSAGES)
    assert err.value.retried == ("http_502", "connection")


@pytest.mark.asyncio
async def test_truncated_reply_and_missing_usage(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(ok("cut of", finish_reason="length", usage=None))
    async with client_for(fake_openai) as client:
        got = await client.complete(MESSAGES)
    assert (got.finish_reason, got.prompt_tokens, got.completion_tokens) == ("length", 0, 0)


@pytest.mark.asyncio
async def test_concurrency_is_bounded(fake_openai: FakeOpenAI) -> None:
    fake_openai.responder = lambda body: ok("slow", delay_s=0.15)
    async with client_for(fake_openai, concurrency=3) as client:
        await asyncio.gather(*(client.complete(MESSAGES) for _ in range(10)))
    assert fake_openai.max_in_flight == 3


@pytest.mark.asyncio
async def test_check_endpoint(fake_openai: FakeOpenAI) -> None:
    async with client_for(fake_openai) as client:
        assert await check_endpoint(client) == "fake-model"
    params = EndpointParams(base_url=fake_openai.base_url, model="other-model")
    async with build_client(params) as client:
        with pytest.raises(EndpointError, match="'other-model' is not served") as err:
            await check_endpoint(client)
    assert f"{fake_openai.base_url}/models" in str(err.value) and "fake-model" in str(err.value)


@pytest.mark.asyncio
async def test_check_endpoint_trusts_a_server_without_a_model_list(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.models_status = 404
    async with client_for(fake_openai, retries=0) as client:
        assert await check_endpoint(client) is None
    assert "HTTP 404" in caplog.text and "not checked" in caplog.text
    fake_openai.models_status = 401  # a refused key fails here, not on the first chat call
    async with client_for(fake_openai, retries=0) as client:
        with pytest.raises(EndpointError, match="HTTP 401"):
            await check_endpoint(client)


def test_the_served_model_is_named_by_the_weights_behind_it() -> None:
    vllm = [{"id": "gpt", "root": "openai/gpt-oss-20b"}, {"id": "other"}]
    llama_cpp = [{"id": "/models/smol.gguf", "aliases": ["smol"]}]
    assert find_served_model(vllm, "gpt") == "openai/gpt-oss-20b"
    assert find_served_model(vllm, "other") == "other"
    assert find_served_model(llama_cpp, "smol") == "/models/smol.gguf"
    assert find_served_model(llama_cpp, "gpt") is None


@pytest.mark.asyncio
async def test_check_endpoint_unreachable_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with build_client(EndpointParams(base_url=url, retries=0)) as client:
        with pytest.raises(EndpointError, match="connection failed after 1 attempt") as err:
            await check_endpoint(client)
    assert f"{url}/models" in str(err.value)


QA_GRAMMAR = r"""
root ::= "<QUE> " line " <ANS> " line " <END>"
line ::= [A-Za-z0-9 ,.?'()-]{1,120}
"""
QA_FORMAT = re.compile(r"^<QUE> [^<>\n]+ <ANS> [^<>\n]+ <END>$")


@pytest.mark.asyncio
async def test_real_smollm2_follows_a_grammar() -> None:
    from tasks.core.tokens import find_smollm2_gguf
    from tasks.llm.server import start_llama_server

    alias = "SmolLM2-135M-Instruct"
    with start_llama_server(
        find_smollm2_gguf(), port=free_port(), alias=alias, n_parallel=1, n_ctx=1024, threads=1
    ) as base_url:
        sampling = SamplingParams(temperature=0.7, max_tokens=96, seed=1)
        params = EndpointParams(base_url=base_url, model=alias, sampling=sampling, timeout_s=30)
        async with build_client(params, "gbnf") as client:
            await check_endpoint(client)
            prompt = "Write one question and its answer about installing Python packages."
            got = await client.complete([{"role": "user", "content": prompt}], grammar=QA_GRAMMAR)
            again = await client.complete([{"role": "user", "content": prompt}], grammar=QA_GRAMMAR)
    assert got.finish_reason == "stop", got
    assert QA_FORMAT.match(got.text), got.text
    assert got.completion_tokens > 0 and got.prompt_tokens > 0
    # The repeated prompt comes from llama.cpp's prefix cache, and the usage says so.
    assert got.cached_prompt_tokens == 0 < again.cached_prompt_tokens < again.prompt_tokens + 1


@pytest.mark.asyncio
async def test_real_smollm2_follows_a_json_schema() -> None:
    from tasks.core.tokens import find_smollm2_gguf
    from tasks.llm.server import start_llama_server

    schema = {
        "type": "object",
        "properties": {
            "verdict": {"enum": ["yes", "no"], "type": "string"},
            "score": {"type": "integer", "minimum": 0, "maximum": 10},
        },
        "required": ["verdict", "score"],
        "additionalProperties": False,
    }
    alias = "SmolLM2-135M-Instruct"
    with start_llama_server(
        find_smollm2_gguf(), port=free_port(), alias=alias, n_parallel=1, n_ctx=1024, threads=1
    ) as base_url:
        sampling = SamplingParams(temperature=0.0, max_tokens=48, seed=1)
        params = EndpointParams(base_url=base_url, model=alias, sampling=sampling, timeout_s=30)
        prompt = "Is pip a Python package installer? Answer as JSON with a verdict and a score."
        async with build_client(params, "gbnf") as client:
            got = await client.complete([{"role": "user", "content": prompt}], json_schema=schema)
    assert got.finish_reason == "stop", got
    reply = json.loads(got.text)
    assert set(reply) == {"verdict", "score"}, reply
    assert reply["verdict"] in ("yes", "no") and 0 <= reply["score"] <= 10, reply


def test_the_server_keeps_and_matches_prompt_prefixes() -> None:
    """The settings synth's prefix-first prompts rely on exist in this xllamacpp and are set."""
    import xllamacpp

    from tasks.llm.server import set_prefix_reuse

    params = xllamacpp.CommonParams()
    set_prefix_reuse(params)
    assert params.cache_prompt and params.n_cache_reuse == 0
    assert 0 < params.slot_prompt_similarity < 0.5 and params.cache_ram_mib > 0
