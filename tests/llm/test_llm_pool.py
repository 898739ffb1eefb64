"""tasks.llm.client.EndpointPool: several endpoints as one client, through the real openai SDK
against fake HTTP servers (tests/support/fake_openai.py), one of them dead or dying."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from tasks.core.params import EndpointParams, EvalParams, SynthParams
from tasks.core.procs import free_port
from tasks.llm.client import (
    Backoff,
    EndpointError,
    EndpointPool,
    OpenAIChatClient,
    build_pool,
    check_pool,
)
from tests.support.fake_openai import FakeOpenAI, drop, ok, serve_fake_openai, status

MESSAGES = [{"role": "user", "content": "Write one question about the docs."}]
FAST = Backoff(first_s=0.01)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


def pool_for(urls: list[str], max_failures: int = 2, retries: int = 1) -> EndpointPool:
    params = EndpointParams(
        base_url=urls, model="fake-model", retries=retries, max_failures=max_failures
    )
    clients = [OpenAIChatClient(params, backoff=FAST, base_url=url) for url in urls]
    return EndpointPool(clients, params.max_failures)


async def ask_routes(pool: EndpointPool, routes: list[str]) -> list[str]:
    async with pool:
        replies = await asyncio.gather(*(pool.complete(MESSAGES, route=r) for r in routes))
    return [reply.text for reply in replies]


def served_by(*fakes: FakeOpenAI) -> list[int]:
    return [len(fake.chat_requests) for fake in fakes]


def test_a_route_stays_on_one_endpoint_and_routes_spread_over_all() -> None:
    with serve_fake_openai() as a, serve_fake_openai() as b:
        a.responder = lambda body: ok("from a")
        b.responder = lambda body: ok("from b")
        routes = [f"page/{i % 12}" for i in range(48)]
        texts = asyncio.run(ask_routes(pool_for([a.base_url, b.base_url]), routes))
    where = {
        route: {t for r, t in zip(routes, texts, strict=True) if r == route} for route in routes
    }
    assert all(len(endpoints) == 1 for endpoints in where.values())  # a chunk stays put
    assert Counter(texts) == {"from a": served_by(a)[0], "from b": served_by(b)[0]}
    assert min(served_by(a, b)) >= 8  # 12 routes, neither endpoint left idle


def test_a_dead_endpoint_is_taken_out_and_its_routes_go_to_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with serve_fake_openai() as live:
        dead = dead_url()
        pool = pool_for([dead, live.base_url], max_failures=2)
        with caplog.at_level(logging.WARNING):
            texts = asyncio.run(ask_routes(pool, [f"chunk/{i}" for i in range(16)]))
    assert texts == ["ok"] * 16 and len(live.chat_requests) == 16
    assert list(pool.removed) == [dead] and pool.list_live()[0].base_url == live.base_url
    removed = [r.getMessage() for r in caplog.records if "taken out of rotation" in r.getMessage()]
    assert len(removed) == 1 and dead in removed[0] and "1 endpoint(s) left" in removed[0]


def test_an_endpoint_dying_mid_run_is_replaced_and_the_retries_say_so() -> None:
    with serve_fake_openai() as a, serve_fake_openai() as b:
        answered = Counter[str]()

        def dying(body: object) -> object:
            answered["b"] += 1
            return ok("from b") if answered["b"] <= 2 else drop()

        b.responder = dying  # type: ignore[assignment]
        a.responder = lambda body: ok("from a")
        pool = pool_for([a.base_url, b.base_url], max_failures=2, retries=1)

        async def ask_in_turn() -> list[tuple[str, tuple[str, ...]]]:
            async with pool:
                out = []
                for i in range(24):
                    reply = await pool.complete(MESSAGES, route=f"chunk/{i}")
                    out.append((reply.text, reply.retried))
                return out

        replies = asyncio.run(ask_in_turn())
    assert [url for url in pool.removed] == [b.base_url]
    assert Counter(text for text, _ in replies) == {"from a": 22, "from b": 2}
    failed_over = [retried for _, retried in replies if "failover" in retried]
    assert failed_over and all(r[:2] == ("connection", "failover") for r in failed_over)


def test_with_none_left_the_error_names_every_url() -> None:
    urls = [dead_url(), dead_url()]
    with pytest.raises(EndpointError) as caught:
        asyncio.run(ask_routes(pool_for(urls, max_failures=1, retries=0), ["x"]))
    message = str(caught.value)
    assert message.startswith("no endpoint left of 2") and all(url in message for url in urls)


def test_a_refused_request_is_not_the_endpoints_fault() -> None:
    with serve_fake_openai() as a, serve_fake_openai() as b:
        a.responder = b.responder = lambda body: status(400)
        pool = pool_for([a.base_url, b.base_url], max_failures=1)
        with pytest.raises(EndpointError, match="HTTP 400"):
            asyncio.run(ask_routes(pool, ["x"]))
    assert not pool.removed and sum(served_by(a, b)) == 1


def test_check_takes_out_what_is_down_and_fails_on_another_model() -> None:
    with serve_fake_openai() as live:
        dead = dead_url()
        params = EndpointParams(base_url=[dead, live.base_url], model="fake-model", retries=0)
        pool = build_pool(params)
        assert asyncio.run(check_pool(pool)) == "fake-model" and list(pool.removed) == [dead]
    with serve_fake_openai() as a, serve_fake_openai(models=["other-model"]) as b:
        params = EndpointParams(base_url=[a.base_url, b.base_url], model="fake-model")
        with pytest.raises(EndpointError, match="not served there"):
            asyncio.run(check_pool(build_pool(params)))
    with pytest.raises(EndpointError, match="no endpoint left of 1"):
        params = EndpointParams(base_url=[dead_url()], model="fake-model", retries=0)
        asyncio.run(check_pool(build_pool(params)))


def test_base_url_takes_one_url_or_a_list_of_distinct_ones_for_synth_and_the_judge() -> None:
    one = "http://127.0.0.1:8766/v1"
    assert SynthParams().endpoint.urls == [one]
    two = SynthParams.model_validate({"endpoint": {"base_url": [one, "http://h2:8000/v1"]}})
    assert two.endpoint.urls == [one, "http://h2:8000/v1"]
    for bad in ([], [one, one], ["not a url"]):
        with pytest.raises(ValueError, match="base_url"):
            SynthParams.model_validate({"endpoint": {"base_url": bad}})
    judges = EvalParams.model_validate({"judge": {"base_url": [one, "http://h2:8000/v1"]}})
    assert judges.judge is not None and judges.judge.urls == [one, "http://h2:8000/v1"]
    with pytest.raises(ValueError, match=r"endpoints\.orpo\.base_url: one URL here"):
        EvalParams.model_validate({"endpoints": {"orpo": {"base_url": [one, "http://h2:8000/v1"]}}})
