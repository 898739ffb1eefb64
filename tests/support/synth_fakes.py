"""A scripted ChatClient and a well-formed reply to any synth prompt, shared by the synth,
pipeline and stage tests (tier 1: no HTTP, no model; the fake HTTP server reuses the replies)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from tasks.core.documents import parse_document
from tasks.llm.client import Completion
from tasks.synth.generate import PageOutcome, PageWork, Settings, synthesize_page


def count_words(text: str) -> int:
    """A stand-in token counter: whitespace-separated words."""
    return len(text.split())


# A sentence ends at a stop before a space: cut at the dot of 15.4 or of a URL, it would quote
# a literal the page does not hold.
SENTENCE_RE = re.compile(r"[A-Z](?:[^.!?\n`|#]|[.!?](?=\S)){30,200}[.!?](?=\s|$)")


def document_of(messages: list[dict[str, str]]) -> str:
    """The page text the prompt carried, without its front matter."""
    page = messages[-1]["content"].split("Document:\n", 1)[1]
    _, body = parse_document(page.split("\nEnd of the document.", 1)[0] + "\n")
    return body


def sentences_of(messages: list[dict[str, str]]) -> list[str]:
    paragraphs = re.sub(r"(?<!\n)\n(?!\n)", " ", document_of(messages))  # wrapped lines joined
    found = [m.group(0).strip() for m in SENTENCE_RE.finditer(paragraphs)]
    return found or ["The page documents one procedure for administrators."]


def scripted_reply(messages: list[dict[str, str]]) -> str:
    """A well-formed, grounded reply to any synth prompt, built from the page's sentences."""
    user = messages[-1]["content"]
    sentences = sentences_of(messages)
    if "<POINT> main point <END>" in user:
        k = int(re.search(r"List the (\d+) main points", user).group(1))  # type: ignore[union-attr]
        return "".join(f"<POINT> {s} <END>\n" for s in (sentences * k)[:k])
    if "<QUE> question <ANS>" in user:
        n = int(re.search(r"Generate exactly (\d+)", user).group(1))  # type: ignore[union-attr]
        cite = re.search(r"End every answer with the citation (.+)", user).group(1)  # type: ignore[union-attr]
        pairs = [
            f"<QUE> What should an administrator know about item {i}: {s[:60]}? "
            f"<ANS> {s} {cite} <END>\n"
            for i, s in enumerate((sentences * n)[:n])
        ]
        return "".join(pairs)
    point = user.split("Main point: ", 1)[1].split("\n", 1)[0]
    kind = "corrective" if "corrective answer" in user else "good"
    return (
        f"<QUE> Is it true ({kind}) that {point[:80]}? <GOOD> {point} "
        f"<BAD> No, that never happens in any release. <END>\n"
    )


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
