"""A scripted ChatClient answering every synth prompt well (the replies of the bench's fake
endpoint), shared by the synth, pipeline and stage tests (tier 1: no HTTP, no model; the fake
HTTP server reuses the replies)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tasks.bench.fake_endpoint import document_of as document_of
from tasks.bench.fake_endpoint import scripted_reply
from tasks.llm.client import Completion
from tasks.synth.generate import PageOutcome, PageWork, Settings, synthesize_page


def count_words(text: str) -> int:
    """A stand-in token counter: whitespace-separated words."""
    return len(text.split())


class ScriptedClient:
    """A ChatClient that answers from a script and records every prompt; `fail(messages, n)`
    may return an exception to raise instead (n = this call's number, from 1)."""

    def __init__(
        self,
        reply: Callable[[list[dict[str, str]]], str] = scripted_reply,
        fail: Callable[[list[dict[str, str]], int], BaseException | None] | None = None,
        finish_reason: str = "stop",
    ) -> None:
        self.reply, self.fail, self.finish_reason = reply, fail, finish_reason
        self.prompts: list[list[dict[str, str]]] = []
        self.grammars: list[str | None] = []

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        grammar: str | None = None,
        extra_body: dict[str, Any] | None = None,
        route: str | None = None,
    ) -> Completion:
        self.prompts.append(messages)
        self.grammars.append(grammar)
        error = self.fail(messages, len(self.prompts)) if self.fail else None
        await asyncio.sleep(0)  # let other calls interleave, as a real client does
        if error is not None:
            raise error
        text = self.reply(messages)
        words = sum(count_words(m["content"]) for m in messages)
        return Completion(text, self.finish_reason, words, count_words(text), "scripted-model")

    def users(self) -> list[str]:
        return [p[-1]["content"] for p in self.prompts]


# ---- prompts ------------------------------------------------------------------------------


class RecordingRunner:
    """Stands in for the flow's per-page Prefect task: records which pages it ran."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    async def __call__(self, client: Any, work: PageWork, settings: Settings) -> PageOutcome:
        self.urls.append(work.doc.url)
        return await synthesize_page(client, work, settings)
