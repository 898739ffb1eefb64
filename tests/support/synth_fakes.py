"""A scripted ChatClient answering every synth prompt well (the replies of the bench's fake
endpoint), shared by the synth, pipeline and stage tests (tier 1: no HTTP, no model; the fake
HTTP server reuses the replies); two small hand-made pages and a reply to them that every
filter keeps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.bench.fake_endpoint import JUDGE_MARK as JUDGE_MARK
from tasks.bench.fake_endpoint import document_of as document_of
from tasks.bench.fake_endpoint import is_judge_prompt as is_judge_prompt
from tasks.bench.fake_endpoint import judged_answer as judged_answer
from tasks.bench.fake_endpoint import scripted_reply
from tasks.core.documents import render_document
from tasks.core.records import MarkdownDoc
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
        self.schemas: list[dict[str, Any] | None] = []

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        grammar: str | None = None,
        extra_body: dict[str, Any] | None = None,
        json_schema: dict[str, Any] | None = None,
        route: str | None = None,
    ) -> Completion:
        self.prompts.append(messages)
        self.grammars.append(grammar)
        self.schemas.append(json_schema)
        error = self.fail(messages, len(self.prompts)) if self.fail else None
        await asyncio.sleep(0)  # let other calls interleave, as a real client does
        if error is not None:
            raise error
        text = self.reply(messages)
        words = sum(count_words(m["content"]) for m in messages)
        return Completion(text, self.finish_reason, words, count_words(text), "scripted-model")

    def users(self) -> list[str]:
        return [p[-1]["content"] for p in self.prompts]


# ---- two small pages, one chunk each (one Q/A pair and one main point asked per chunk) ----

PAGES = {
    "backup.html": (
        "# Backup basics\n\n## Dumps\n\nThe pg_dump program writes a consistent snapshot of one "
        "database to a script file.\n\n## Restores\n\nThe psql program replays a plain dump "
        "script into an empty database created from template0."
    ),
    "vacuum.html": (
        "# Routine vacuuming\n\n## Dead tuples\n\nAutovacuum reclaims the storage occupied by "
        "dead row versions that updates and deletes leave behind.\n\n## Wraparound\n\nFreezing "
        "old transaction identifiers prevents the wraparound of the transaction counter."
    ),
}


def write_pages(md_dir: Path) -> None:
    md_dir.mkdir(parents=True)
    rows = []
    for order, (name, body) in enumerate(PAGES.items()):
        url = f"https://docs.example.org/15/{name}"
        doc = MarkdownDoc(
            id=name.split(".")[0], url=url, title=name, product="PostgreSQL", version="15.4",
            sha="0" * 64, order=order,
        )  # fmt: skip
        (md_dir / f"{doc.id}.md").write_text(render_document(doc, body))
        rows.append({"id": doc.id, "url": url})
    (md_dir / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def call_kind(user: str) -> str:
    if JUDGE_MARK in user:
        return "judge"
    return "qa" if "<QUE> question <ANS>" in user else "points" if "<POINT>" in user else "triple"


def covering_reply(messages: list[dict[str, str]]) -> str:
    """A reply every filter keeps: a Q/A pair per section of the page (so every section is
    covered), its main point, a good or a false-premise triple about that point; the judge
    says yes."""
    user = messages[-1]["content"]
    kind = call_kind(user)
    if kind in ("points", "judge"):
        return scripted_reply(messages)
    if kind == "qa":
        sections = document_of(messages).split("\n\n## ")
        lines = [s.lstrip("# ").split("\n\n")[-1].rstrip(".") for s in sections]
        return "".join(f"<QUE> Why is it that {a}? <ANS> {a}. <END>\n" for a in lines)
    point = user.split("Main point: ", 1)[1].split("\n", 1)[0]
    if "sycophantic" in user:
        return (
            f"<QUE> Why does PostgreSQL refuse the rule that {point}? <GOOD> It does not "
            f"refuse it: {point} <BAD> Because that rule was dropped long ago. <END>"
        )
    return f"<QUE> Is it true that {point} <GOOD> {point} <BAD> No, never. <END>"


def page_of(user: str) -> str:
    return next(name for name in PAGES if f"/15/{name}" in user)


# ---- prompts ------------------------------------------------------------------------------


class RecordingRunner:
    """Stands in for the flow's per-page Prefect task: records which pages it ran."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    async def __call__(self, client: Any, work: PageWork, settings: Settings) -> PageOutcome:
        self.urls.append(work.doc.url)
        return await synthesize_page(client, work, settings)
