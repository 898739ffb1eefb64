"""The order of synth's prompts and calls for the endpoint's prefix cache: the page comes before
every call's own instructions, a chunk's points call goes first and its Q/A and triple calls
follow it, follow-up calls overtake later chunks' first calls, and the report says what share
of the prompt the server took from its cache (tier 1: scripted client, no HTTP)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core.params import EndpointParams, SynthParams
from tasks.core.records import MarkdownDoc
from tasks.llm.client import Completion
from tasks.synth.generate import (
    CallGate,
    CallOrder,
    CallResult,
    PageWork,
    Settings,
    plan_page,
    summarize_calls,
    synthesize_page,
    synthesize_pages,
)
from tasks.synth.prompts import STYLES
from tests.support.synth_fakes import ScriptedClient, count_words

PAGE_END = "End of the document."


def make_doc(n: int) -> MarkdownDoc:
    return MarkdownDoc(
        id=f"p{n}",
        url=f"https://docs.example.org/15/page-{n}.html",
        title=f"Page {n}",
        product="PostgreSQL",
        version="15.4",
        sha="0" * 64,
    )


def page_body(n: int, sections: int = 1) -> str:
    sentence = f"Setting number {n} controls how the server archives segment files. "
    return "\n\n".join(f"## Section {i}\n\n{(sentence * 12).strip()}" for i in range(sections))


def plan(n: int, params: SynthParams, sections: int = 1) -> PageWork:
    return plan_page(make_doc(n), page_body(n, sections), params, count_words)


def kind_of(messages: list[dict[str, str]]) -> str:
    user = messages[-1]["content"]
    return "qa" if "<ANS>" in user else "points" if "<POINT>" in user else "triple"


def page_of(messages: list[dict[str, str]]) -> str:
    """Which page a call is for, from its source URL."""
    return messages[-1]["content"].split("page-", 1)[1].split(".html", 1)[0]


def run_one_page(params: SynthParams, tmp_path: Path, order: CallOrder) -> ScriptedClient:
    client = ScriptedClient()
    settings = Settings(params.model_copy(update={"max_attempts": 1}), tmp_path, order=order)
    outcome = asyncio.run(synthesize_page(client, plan(1, params, sections=3), settings))
    assert outcome.error is None
    return client


def test_every_call_of_a_chunk_starts_with_the_same_page_block(tmp_path: Path) -> None:
    params = SynthParams(context_tokens=200)  # three sections: several chunks
    client = run_one_page(params, tmp_path, CallOrder())
    by_chunk: dict[str, list[str]] = {}
    for messages in client.prompts:
        user = messages[-1]["content"]
        assert user.startswith("Below is a page of the PostgreSQL 15.4 documentation.")
        page, instructions = user.split(PAGE_END, 1)
        assert "Document:\n---\n" in page and "<END>" in instructions
        assert "<END>" not in page  # the call's own format comes only after the page
        by_chunk.setdefault(page, []).append(kind_of(messages))
    assert len(by_chunk) > 1
    for kinds in by_chunk.values():  # each chunk's page block is shared word for word
        assert sorted(set(kinds)) == ["points", "qa", "triple"]
    systems = {messages[0]["content"] for messages in client.prompts}
    assert len(systems) == 1  # the system line too: one prefix for every call of a chunk


def shared_prefix(a: str, b: str) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[:n]


def test_a_points_two_triple_calls_share_the_point_and_their_first_sentence(
    tmp_path: Path,
) -> None:
    """A point's good and false-premise calls go one after the other and share, past the page,
    the point and the sentence after it; what differs (the kind's own words, the style) comes
    after that, and the reply's format is the last line."""
    params = SynthParams(min_points=2, max_points=2, max_attempts=1)
    body = "## Archiving\n\n" + " ".join(
        f"Setting number {i} controls how the server archives segment file {i}." for i in range(9)
    )
    client = ScriptedClient()
    work = plan_page(make_doc(1), body, params, count_words)
    outcome = asyncio.run(synthesize_page(client, work, Settings(params, tmp_path)))
    assert outcome.error is None
    calls = [m[-1]["content"] for m in client.prompts if kind_of(m) == "triple"]
    assert len(calls) == 4  # two points, two kinds each, one after another
    for good, false_premise in (calls[:2], calls[2:]):
        assert "wrong answer" in good and "sycophantic" in false_premise
        point = good.split("Main point: ", 1)[1].split("\n", 1)[0]
        shared = shared_prefix(good, false_premise).split(PAGE_END, 1)[1]
        assert shared.startswith(f"\n\nMain point: {point}\n\nWrite one question about this")
        assert shared.endswith("documentation page. ")
    for user in calls:
        rest = user.split("Main point: ", 1)[1].split("documentation page. ", 1)[1]
        assert any(style in rest for style in STYLES.values())  # after the shared sentence
        assert user.splitlines()[-1].startswith("<QUE> question <GOOD> ")  # the format, last


def test_the_bench_can_still_put_the_page_last(tmp_path: Path) -> None:
    client = run_one_page(SynthParams(), tmp_path, CallOrder("page_last"))
    for user in client.users():
        instructions, page = user.split("\n\nBelow is a page of the", 1)
        assert "<END>" in instructions and page.endswith(PAGE_END)


def test_the_points_call_goes_first_then_qa_and_triples_together(tmp_path: Path) -> None:
    params = SynthParams(endpoint=EndpointParams(concurrency=8))
    kinds = [kind_of(m) for m in run_one_page(params, tmp_path, CallOrder()).prompts]
    assert kinds[0] == "points" and "qa" in kinds[1:3] and kinds.count("qa") == 1
    beside = CallOrder(qa_after_points=False, one_at_a_time=False)
    beside = run_one_page(params, tmp_path / "b", beside).prompts
    assert [kind_of(m) for m in beside[:2]] == ["points", "qa"]


def test_follow_up_calls_overtake_later_pages_first_calls(tmp_path: Path) -> None:
    """One call at a time: every call of page 0 goes before page 1's points call, and so on
    (a chunk keeps its place from one call to its next); first come, first served would send
    all three points calls first."""
    params = SynthParams(endpoint=EndpointParams(concurrency=1), max_attempts=1)
    works = [plan(n, params) for n in range(3)]
    settings = Settings(params, tmp_path, ranks={w.doc.id: i for i, w in enumerate(works)})
    client = ScriptedClient()
    asyncio.run(synthesize_pages(client, works, settings, synthesize_page))
    calls = [(page_of(m), kind_of(m)) for m in client.prompts]
    assert [page for page, _ in calls] == sorted(page for page, _ in calls)
    assert [kind for page, kind in calls if page == "0"][:2] == ["points", "qa"]


async def hold_in_turn(gate: CallGate, ranks: list[int], seen: list[int]) -> None:
    async def one(rank: int) -> None:
        async with gate.hold((rank,)):
            seen.append(rank)
            await asyncio.sleep(0)

    await asyncio.gather(*(one(r) for r in ranks))


def test_gate_lets_the_lowest_rank_through_first_and_no_more_than_its_size() -> None:
    gate, seen = CallGate(2), []
    asyncio.run(hold_in_turn(gate, [5, 4, 3, 2, 1, 0], seen))
    assert seen[:2] == [5, 4]  # the first two found the gate open
    assert seen[2:] == [0, 1, 2, 3]
    assert gate.free == 2 and not gate.waiting


def test_a_cancelled_waiter_passes_its_place_on() -> None:
    async def scenario() -> list[str]:
        gate, seen = CallGate(1), []

        async def one(name: str, rank: int, wait: float) -> None:
            async with gate.hold((rank,)):
                seen.append(name)
                await asyncio.sleep(wait)

        first = asyncio.ensure_future(one("first", 0, 0.05))
        await asyncio.sleep(0)
        doomed = asyncio.ensure_future(one("doomed", 0, 0))
        last = asyncio.ensure_future(one("last", 1, 0))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.gather(first, last, return_exceptions=True)
        assert doomed.cancelled() and gate.free == 1
        return seen

    assert asyncio.run(scenario()) == ["first", "last"]


class CachingClient(ScriptedClient):
    """A scripted client whose server took a fixed share of each prompt from its cache."""

    def __init__(self, share: Callable[[list[dict[str, str]]], float]) -> None:
        super().__init__()
        self.share = share

    async def complete(self, messages: list[dict[str, str]], **kwargs: Any) -> Completion:
        reply = await super().complete(messages, **kwargs)
        cached = int(reply.prompt_tokens * self.share(messages))
        return dataclasses.replace(reply, cached_prompt_tokens=cached)


def test_report_gives_the_cached_share_per_kind_for_made_and_replayed_calls(
    tmp_path: Path,
) -> None:
    params = SynthParams(max_attempts=1)
    client = CachingClient(lambda m: 0.0 if kind_of(m) == "points" else 0.5)
    settings = Settings(params, tmp_path)
    asyncio.run(synthesize_pages(client, [plan(0, params)], settings, synthesize_page))
    made = summarize_calls(settings.calls, 0, 1.0)["prefix_cache"]["made"]
    assert set(made) == {"all", "points", "qa", "good", "false_premise"}
    assert made["points"]["cached_share"] == 0.0 and made["points"]["calls"] == 1
    assert 0.49 <= made["qa"]["cached_share"] <= 0.5
    assert made["all"]["calls"] == len(client.prompts)
    assert made["all"]["cached_tokens"] == sum(
        v["cached_tokens"] for k, v in made.items() if k != "all"
    )

    # A rerun replays every reply, with what the server cached when it was made.
    again = Settings(params, tmp_path)
    asyncio.run(synthesize_pages(ScriptedClient(), [plan(0, params)], again, synthesize_page))
    summary = summarize_calls(again.calls, 0, 1.0)["prefix_cache"]
    assert summary["made"]["all"]["calls"] == 0
    assert summary["replayed"] == made
    assert all(isinstance(c, CallResult) and not c.made for c in again.calls)


class CountingClient(ScriptedClient):
    """Counts the calls in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = self.most = 0

    async def complete(self, messages: list[dict[str, str]], **kwargs: Any) -> Completion:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            return await super().complete(messages, **kwargs)
        finally:
            self.in_flight -= 1


def test_one_at_a_time_sends_a_chunks_calls_one_after_another(tmp_path: Path) -> None:
    params = SynthParams(endpoint=EndpointParams(concurrency=8), max_attempts=1)
    seen = {}
    for name, order in (("serial", CallOrder()), ("together", CallOrder(one_at_a_time=False))):
        client = CountingClient()
        settings = Settings(params, tmp_path / name, order=order)
        asyncio.run(synthesize_page(client, plan(1, params), settings))
        seen[name] = (client.most, len(client.prompts))
    assert seen["serial"][0] == 1 < seen["together"][0]  # Q/A and triples together
    assert seen["serial"][1] == seen["together"][1] >= 4  # points, Q/A, two triples per point
