"""The eval stage's LLM judge: DeepEval's model interface over the one OpenAI-compatible client.

The metrics used here ask for a pydantic schema with every prompt they send. The judge sends
that schema as constrained decoding (json_schema= of the client, in its structured mode),
parses the reply into a schema instance and, when a reply does not parse or validate, asks
again with the next seed and double the max_tokens, at most `max_parse_attempts` times; then
it gives up with InvalidJudgeReply, which the metric turns into a failed score. Every invalid
reply and every give-up is counted in JudgeStats.

Every reply is cached on disk, one JSON file per key, the moment it arrives; the key is the
sha256 of what decides the reply (judge model, sampling, structured mode, prompt, schema,
attempt number), so an unchanged rerun sends no request, and a changed answer costs only its
own calls. The cached replies of every attempt are replayed in order, so a rerun reaches the
same verdicts, and raising max_parse_attempts continues where the last attempt stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tasks.core.env import QUIET_ENV
from tasks.core.io import write_json_atomic
from tasks.llm.client import EndpointError, EndpointPool, Logger, OpenAIChatClient

# DeepEval reads its settings from the environment when imported and whenever the environment
# changes, and picks its telemetry backend once. Flows set this for every stage before anything
# is imported (tasks.core.env); this covers any other importer. A value the user set wins.
os.environ.setdefault("DEEPEVAL_TELEMETRY_OPT_OUT", QUIET_ENV["DEEPEVAL_TELEMETRY_OPT_OUT"])

from deepeval.models import DeepEvalBaseLLM

# Part of every cache key: bump it when what a key stands for changes (how the schema travels,
# the body of a retry), so old replies are not replayed for a different request.
JUDGE_CACHE_VERSION = 1


@dataclass
class JudgeStats:
    calls: int = 0  # HTTP requests sent to the endpoint, the client's wire retries included
    cached: int = 0  # replies read back from the cache instead
    invalid: int = 0  # replies that did not parse or validate against their schema
    failed: int = 0  # judgements given up: every attempt invalid, or a score not a number
    prompt_tokens: int = 0  # of the requests sent in this run
    completion_tokens: int = 0


class InvalidJudgeReply(RuntimeError):
    """No reply to one prompt parsed and validated against its schema within the attempts."""


@dataclass(frozen=True)
class JudgeReply:
    text: str
    finish_reason: str
    # What the reply cost when it was made (kept in the cache entry for reading; a rerun that
    # replays it costs nothing and counts nothing).
    prompt_tokens: int = 0
    completion_tokens: int = 0


def render_judge_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.json"


def read_cached_reply(path: Path, log: Logger) -> JudgeReply | None:
    """The cached reply; None when there is none, or when the file cannot be read back (a torn
    or hand-edited file: it is logged, asked again and overwritten)."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("judge cache %s is not JSON (%s); asking again", path, exc)
        return None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(name), str) for name in ("text", "finish_reason")
    ):
        log.warning("judge cache %s holds no reply; asking again", path)
        return None
    return JudgeReply(data["text"], data["finish_reason"])


def extract_json_object(text: str) -> str:
    """From the first "{" to the last "}": a server that does not enforce the schema may wrap
    the object in a code fence or a sentence."""
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def parse_reply(text: str, schema: type[BaseModel]) -> BaseModel:
    """The reply as a `schema` instance; pydantic's ValidationError (a ValueError) when it is
    not JSON or does not validate."""
    return schema.model_validate_json(extract_json_object(text))


def describe_invalid(reply: JudgeReply, exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors()[:2]
        what = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in errors)
    else:
        what = str(exc) or type(exc).__name__
    return f"reply (finish_reason {reply.finish_reason}) {reply.text[:160]!r}: {what}"


def bound_schema(schema: Any, max_items: int | None, max_chars: int | None) -> Any:
    """`schema` with every array capped at `max_items` and every string at `max_chars` (bounds
    it already has are kept when tighter). Under constrained decoding a small judge that loops
    inside a list or a string then still closes its JSON within max_tokens; the reply is
    validated against the metric's own schema, which the bounded one only narrows."""
    if isinstance(schema, list):
        return [bound_schema(item, max_items, max_chars) for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {k: bound_schema(v, max_items, max_chars) for k, v in schema.items()}
    kind = schema.get("type")
    for limit, applies, key in (
        (max_items, "array", "maxItems"),
        (max_chars, "string", "maxLength"),
    ):
        if limit is not None and kind == applies and "enum" not in schema:
            bounded[key] = min(limit, schema.get(key, limit))
    return bounded


class Judge(DeepEvalBaseLLM):
    """A DeepEval judge model over `client` (one endpoint, or a pool of them that spreads the
    calls and takes out one that keeps failing): its model, sampling and structured mode decide
    every reply; replies are cached under `cache_dir`; counters are in `stats`. Metrics must
    run with async_mode=True and be awaited (`await metric.a_measure(...)`) on the event loop
    the client belongs to."""

    def __init__(
        self,
        client: OpenAIChatClient | EndpointPool,
        cache_dir: Path,
        *,
        max_parse_attempts: int = 3,
        max_items: int | None = None,
        max_chars: int | None = None,
    ) -> None:
        if max_parse_attempts < 1:
            raise ValueError(f"max_parse_attempts must be at least 1, got {max_parse_attempts}")
        self.client = client
        self.cache_dir = cache_dir
        self.max_parse_attempts = max_parse_attempts
        self.max_items, self.max_chars = max_items, max_chars
        self.stats = JudgeStats()
        self.log = client.log
        # One lock per key: concurrent metrics that send the same prompt (the truths of one
        # page, asked once per question about it) wait for the first reply instead of paying
        # for the same call twice.
        self._locks: dict[str, asyncio.Lock] = {}
        self._runner: asyncio.Runner | None = None
        super().__init__(client.params.model)

    def load_model(self) -> OpenAIChatClient | EndpointPool:  # type: ignore[override]
        return self.client

    def get_model_name(self) -> str:
        return self.client.params.model

    async def a_generate(  # type: ignore[override]
        self, prompt: str, schema: type[BaseModel] | None = None
    ) -> BaseModel | str:
        """A `schema` instance when a schema is given (InvalidJudgeReply when no attempt gave
        one), else the reply's text."""
        if schema is None:
            return (await self.fetch_reply(prompt, None, 0)).text
        return await self.fetch_valid(prompt, schema)

    def generate(  # type: ignore[override]
        self, prompt: str, schema: type[BaseModel] | None = None
    ) -> BaseModel | str:
        """a_generate for DeepEval's synchronous paths (async_mode=False), from code with no
        running event loop. The calls run on a loop of the judge's own, kept between calls:
        the client's pooled connections belong to the loop that opened them. So one judge
        serves synchronous callers or one event loop, not both."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.sync_runner().run(self.a_generate(prompt, schema))
        raise RuntimeError(
            "Judge.generate was called inside a running event loop; measure metrics with "
            "async_mode=True and `await metric.a_measure(test_case)` instead"
        )

    def sync_runner(self) -> asyncio.Runner:
        if self._runner is None:
            self._runner = asyncio.Runner()
            weakref.finalize(self, self._runner.close)
        return self._runner

    # DeepEval's own versions retry without the schema on any TypeError, which would turn a
    # bug into unconstrained, unchecked calls; the judge always takes the schema.
    async def a_generate_with_schema(  # type: ignore[override]
        self, prompt: str, schema: type[BaseModel] | None = None
    ) -> BaseModel | str:
        return await self.a_generate(prompt, schema)

    def generate_with_schema(  # type: ignore[override]
        self, prompt: str, schema: type[BaseModel] | None = None
    ) -> BaseModel | str:
        return self.generate(prompt, schema)

    async def fetch_valid(self, prompt: str, schema: type[BaseModel]) -> BaseModel:
        schema_json = bound_schema(schema.model_json_schema(), self.max_items, self.max_chars)
        problem = ""
        for attempt in range(self.max_parse_attempts):
            reply = await self.fetch_reply(prompt, schema_json, attempt)
            try:
                return parse_reply(reply.text, schema)
            except ValueError as exc:
                self.stats.invalid += 1
                problem = describe_invalid(reply, exc)
                self.log.info(
                    "judge: invalid %s on attempt %d of %d: %s",
                    schema.__name__,
                    attempt + 1,
                    self.max_parse_attempts,
                    problem,
                )
        self.stats.failed += 1
        raise InvalidJudgeReply(
            f"judge {self.get_model_name()}: no reply valid as {schema.__name__} in "
            f"{self.max_parse_attempts} attempts; the last {problem}"
        )

    def key_spec(self, prompt: str, schema: dict[str, Any] | None, attempt: int) -> dict[str, Any]:
        params = self.client.params
        return {
            "version": JUDGE_CACHE_VERSION,
            "model": params.model,
            "sampling": params.sampling.model_dump(),
            "structured": self.client.structured,
            "prompt": prompt,
            "schema": schema,
            "attempt": attempt,
        }

    async def fetch_reply(
        self, prompt: str, schema: dict[str, Any] | None, attempt: int
    ) -> JudgeReply:
        """The cached reply for this attempt, or a new call whose reply is cached at once."""
        key = render_judge_key(self.key_spec(prompt, schema, attempt))
        path = cache_path(self.cache_dir, key)
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = read_cached_reply(path, self.log)
            if cached is not None:
                self.stats.cached += 1
                return cached
            reply = await self.ask(prompt, schema, attempt)
            write_json_atomic(path, {"key": key, "attempt": attempt, **asdict(reply)})
            return reply

    def retry_body(self, attempt: int) -> dict[str, Any] | None:
        """A retry gets the next seed (the same seed brings back the same reply) and twice the
        max_tokens of the attempt before: a reply decoded under the schema that still does not
        validate was mostly cut short."""
        if attempt == 0:
            return None
        sampling = self.client.params.sampling
        body: dict[str, Any] = {"max_tokens": sampling.max_tokens * 2**attempt}
        if sampling.seed is not None:
            body["seed"] = sampling.seed + attempt
        return body

    async def ask(self, prompt: str, schema: dict[str, Any] | None, attempt: int) -> JudgeReply:
        messages = [{"role": "user", "content": prompt}]
        try:
            reply = await self.client.complete(
                messages, json_schema=schema, extra_body=self.retry_body(attempt)
            )
        except EndpointError as exc:
            self.stats.calls += 1 + len(exc.retried)
            raise
        self.stats.calls += 1 + len(reply.retried)
        self.stats.prompt_tokens += reply.prompt_tokens
        self.stats.completion_tokens += reply.completion_tokens
        return JudgeReply(
            reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens
        )
