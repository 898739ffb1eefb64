"""The one place that builds OpenAI-compatible chat clients (vLLM in production, llama.cpp on
127.0.0.1 by default).

Retries, backoff and timeouts are the openai SDK's own (`max_retries=params.retries`,
`timeout=params.timeout_s`): it retries timeouts, connection errors and HTTP 408/409/429/5xx
with jittered exponential backoff (0.5 s doubling, at most 8 s) and waits a server's
Retry-After instead when that is 0-120 s. It does not retry a Retry-After above 120 s, other
4xx, or a 200 whose body is broken; this module turns all of those into EndpointError naming
the URL. Concurrency is bounded per client by a semaphore, so build one client per event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

import openai

from tasks.core.params import EndpointParams

if TYPE_CHECKING:
    import httpx2  # the SDK's HTTP library; only its Request type is named here

STRUCTURED_MODES: tuple[str, ...] = ("none", "gbnf", "vllm", "vllm-legacy")


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop", "length", ...; callers drop "length" (truncated) replies
    prompt_tokens: int  # 0 when the server sent no usage
    completion_tokens: int
    model: str
    # Prompt tokens the server took from its prefix cache (usage.prompt_tokens_details.
    # cached_tokens; llama.cpp sends it, vLLM with --enable-prompt-tokens-details); 0 if unsent.
    cached_prompt_tokens: int = 0


class EndpointError(RuntimeError):
    """The endpoint is unreachable, refused the request, or sent a reply that is not a chat
    completion; the message names the URL and what was tried or what was wrong."""


class MalformedReplyError(EndpointError):
    """HTTP 200, but the body is not a usable chat completion (not JSON, no choices, no text).
    Not retried: a server that does this once usually does it again for the same request."""


class ChatClient(Protocol):
    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        grammar: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> Completion: ...


def grammar_body(structured: str, grammar: str) -> dict[str, Any]:
    """The request-body fields that constrain decoding to a GBNF/EBNF grammar.

    gbnf: llama.cpp server's `grammar`. vllm: `structured_outputs.grammar` (vLLM >= 0.12, which
    removed the `guided_*` fields; xgrammar takes GBNF-style EBNF). vllm-legacy: `guided_grammar`
    for vLLM < 0.12.
    """
    if structured == "gbnf":
        return {"grammar": grammar}
    if structured == "vllm":
        return {"structured_outputs": {"grammar": grammar}}
    if structured == "vllm-legacy":
        return {"guided_grammar": grammar}
    raise ValueError(
        f"a grammar was given but the client was built with structured={structured!r}; "
        f"use one of {STRUCTURED_MODES[1:]} for a server that can enforce grammars"
    )


def merge_bodies(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """`extra` over `base`, one level deep for nested dicts (so a caller can add to
    structured_outputs without dropping the grammar)."""
    merged = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def parse_completion(text: str, where: str, default_model: str) -> Completion:
    """A Completion from a chat.completion JSON body, or MalformedReplyError saying why not."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise MalformedReplyError(f"{where}: reply is not JSON: {text[:200]!r}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReplyError(f"{where}: reply has no choices: {text[:200]!r}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedReplyError(f"{where}: choices[0].message.content is {content!r}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Completion(
        text=content,
        finish_reason=str(choices[0].get("finish_reason") or "unknown"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        model=str(data.get("model") or default_model),
        cached_prompt_tokens=int(cached or 0),
    )


# Attempts (first try plus the SDK's retries) of the complete() call running in this task,
# counted by an httpx request hook: the SDK does not report how often it retried a failure.
_attempts: ContextVar[list[int] | None] = ContextVar("llm_attempts", default=None)


async def count_attempt(request: httpx2.Request) -> None:
    counter = _attempts.get()
    if counter is not None:
        counter[0] += 1


def describe_api_error(exc: openai.APIError, attempts: int, retries: int) -> str:
    """What failed and how often it was tried, for an EndpointError message."""
    tried = f"{attempts} attempt{'s' if attempts != 1 else ''} (max_retries={retries})"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} after {tried}: {exc.message}"
    kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "connection failed"
    return f"{kind} after {tried} ({type(exc.__cause__).__name__})"


@contextmanager
def raise_endpoint_errors(where: str, retries: int) -> Iterator[None]:
    """Turn the SDK's final error (its retries spent) into EndpointError naming `where`."""
    counter = [0]
    token = _attempts.set(counter)
    try:
        yield
    except openai.APIError as exc:
        raise EndpointError(f"{where}: {describe_api_error(exc, counter[0], retries)}") from exc
    finally:
        _attempts.reset(token)


class OpenAIChatClient:
    """ChatClient over openai.AsyncOpenAI with sampling, retries and concurrency from params."""

    def __init__(self, params: EndpointParams, *, structured: str = "none") -> None:
        if structured not in STRUCTURED_MODES:
            raise ValueError(f"structured must be one of {STRUCTURED_MODES}, got {structured!r}")
        self.params = params
        self.structured = structured
        self.base_url = params.base_url.rstrip("/")
        self.sdk = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=params.api_key(),
            max_retries=params.retries,
            timeout=params.timeout_s,
            http_client=openai.DefaultAsyncHttpxClient(
                event_hooks={"request": [count_attempt], "response": []}
            ),
        )
        self._slots = asyncio.Semaphore(params.concurrency)

    def sampling_body(self) -> dict[str, Any]:
        sampling = self.params.sampling
        body: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(sampling, name):
                body[name] = getattr(sampling, name)
        return body

    def request_extra_body(
        self, grammar: str | None, extra_body: dict[str, Any] | None
    ) -> dict[str, Any]:
        base = grammar_body(self.structured, grammar) if grammar is not None else {}
        return merge_bodies(base, extra_body)

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        grammar: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> Completion:
        """One chat completion; EndpointError when the SDK's retries are spent or the reply
        is malformed. A truncated reply comes back with finish_reason "length"."""
        where = f"{self.base_url}/chat/completions"
        body = self.request_extra_body(grammar, extra_body)
        # Sampling goes in extra_body too so extra_body can override it and so fields the SDK
        # does not know (top_k, min_p) travel the same way.
        body = {**self.sampling_body(), **body}
        async with self._slots:
            with raise_endpoint_errors(where, self.params.retries):
                raw = await self.sdk.chat.completions.with_raw_response.create(
                    model=self.params.model, messages=cast(Any, messages), extra_body=body
                )
        return parse_completion(raw.text, where, self.params.model)

    async def fetch_model_ids(self) -> list[str]:
        """GET {base_url}/models: the ids (and llama.cpp aliases) the server serves."""
        where = f"{self.base_url}/models"
        with raise_endpoint_errors(where, self.params.retries):
            raw = await self.sdk.models.with_raw_response.list()
        try:
            entries = json.loads(raw.text)["data"]
            ids = [str(e["id"]) for e in entries]
            ids += [str(a) for e in entries for a in e.get("aliases") or []]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise MalformedReplyError(f"{where}: not a model list: {raw.text[:200]!r}") from None
        return sorted(set(ids))

    async def aclose(self) -> None:
        await self.sdk.close()

    async def __aenter__(self) -> OpenAIChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def build_client(params: EndpointParams, structured: str = "none") -> OpenAIChatClient:
    return OpenAIChatClient(params, structured=structured)


async def check_endpoint(client: OpenAIChatClient) -> None:
    """Fail fast, before any work, when the endpoint is down or does not serve the model."""
    served = await client.fetch_model_ids()
    if client.params.model not in served:
        raise EndpointError(
            f"{client.base_url}/models: model {client.params.model!r} is not served there; "
            f"it serves {served}"
        )
