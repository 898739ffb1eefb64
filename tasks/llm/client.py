"""The one place that builds OpenAI-compatible chat clients (vLLM in production, llama.cpp on
127.0.0.1 by default), and the one place that retries a request.

Every attempt goes through OpenAIChatClient.call_with_retries (the SDK's own retries are off),
so each retried fault is counted by cause and logged with its URL, attempt and wait. Retried:
timeouts, dropped connections, HTTP 408/409/429/5xx and a 200 whose body is not a usable reply
(a proxy's error page, a body missing its fields), at most `params.retries` times, waiting
0.5 s doubling to at most 8 s (less up to 25 % jitter, the SDK's own schedule) or the server's
Retry-After when that is at most 120 s. Not retried: other 4xx, and a Retry-After above 120 s
(a server that wants to be left alone that long is not coming back within this run). Every
final failure is an EndpointError naming the URL, what failed and how often it was tried.
Concurrency is bounded per client by a semaphore, so build one client per event loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, cast

import httpx
import openai

from tasks.core.params import EndpointParams

STRUCTURED_MODES: tuple[str, ...] = ("none", "gbnf", "vllm", "vllm-legacy")
# HTTP statuses worth another attempt, besides every 5xx: request timeout, lock timeout, rate
# limit (the SDK's own list).
RETRY_STATUSES = frozenset({408, 409, 429})

T = TypeVar("T")
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop", "length" (cut at max_tokens), ...: the caller decides
    prompt_tokens: int  # 0 when the server sent no usage
    completion_tokens: int
    model: str
    # Prompt tokens the server took from its prefix cache (usage.prompt_tokens_details.
    # cached_tokens; llama.cpp sends it, vLLM with --enable-prompt-tokens-details); 0 if unsent.
    cached_prompt_tokens: int = 0
    # The cause of each failed attempt retried before this reply (http_429, timeout, ...).
    retried: tuple[str, ...] = ()


class EndpointError(RuntimeError):
    """The endpoint is unreachable, refused the request, or sent a reply that is not a chat
    completion; the message names the URL and what was tried or what was wrong. `retried`
    holds the causes of the attempts retried before the final one; `endpoint_fault` says the
    endpoint failed (down, timing out, 5xx, rate limiting, broken replies) rather than the
    request being refused (a 4xx), which another endpoint would refuse as well."""

    def __init__(
        self, message: str, retried: tuple[str, ...] = (), endpoint_fault: bool = False
    ) -> None:
        super().__init__(message)
        self.retried = retried
        self.endpoint_fault = endpoint_fault


class MalformedReplyError(EndpointError):
    """HTTP 200, but the body is not a usable chat completion (not JSON, no choices, no text).
    Retried like a 5xx: a proxy's error page or a server hiccup is usually gone next time."""


class ChatClient(Protocol):
    """`route` names what a call belongs to (synth: its page chunk): with several endpoints,
    calls with the same route go to the same one, where the prompt they share is cached.
    `grammar` or `json_schema` constrains the reply (OpenAIChatClient.complete)."""

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        grammar: str | None = None,
        extra_body: dict[str, Any] | None = None,
        json_schema: dict[str, Any] | None = None,
        route: str | None = None,
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


def schema_body(structured: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The request-body fields that constrain decoding to a JSON schema.

    gbnf: llama.cpp server's top-level `json_schema`. vllm: `structured_outputs.json` (vLLM >=
    0.12). vllm-legacy: `guided_json`. none (no server dialect known): OpenAI's standard
    `response_format`, not an error as with grammars, because OpenAI, vLLM, llama.cpp and most
    other servers accept it, so a schema is enforced wherever the server can; OpenAI enforces
    only strict schemas, hence render_strict_schema. A server that ignores the field answers
    unconstrained, so the caller validates the reply either way.
    """
    if structured == "gbnf":
        return {"json_schema": schema}
    if structured == "vllm":
        return {"structured_outputs": {"json": schema}}
    if structured == "vllm-legacy":
        return {"guided_json": schema}
    if structured == "none":
        name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "reply"))[:64]
        strict = {"name": name, "schema": render_strict_schema(schema), "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": strict}}
    raise ValueError(f"structured must be one of {STRUCTURED_MODES}, got {structured!r}")


def render_strict_schema(schema: Any) -> Any:
    """`schema` as OpenAI's strict mode wants it: every object closed (additionalProperties
    false) and every property required; null defaults dropped (the property stays nullable).
    This only narrows what is valid, so a reply valid here is valid against `schema` too."""
    if isinstance(schema, list):
        return [render_strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {
        key: render_strict_schema(value)
        for key, value in schema.items()
        if not (key == "default" and value is None)
    }
    if strict.get("type") == "object":
        strict.setdefault("additionalProperties", False)
    if isinstance(strict.get("properties"), dict):
        strict["required"] = list(strict["properties"])
    return strict


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


def parse_model_list(text: str, where: str) -> list[dict[str, Any]]:
    """The entries of a GET /models body, each with an id, or MalformedReplyError."""
    try:
        entries = json.loads(text)["data"]
        if not all(isinstance(e, dict) and "id" in e for e in entries):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise MalformedReplyError(f"{where}: not a model list: {text[:200]!r}") from None
    return list(entries)


def list_model_names(entry: dict[str, Any]) -> list[str]:
    """An entry's id and its llama.cpp aliases."""
    return [str(entry["id"]), *(str(a) for a in entry.get("aliases") or [])]


def find_served_model(entries: list[dict[str, Any]], model: str) -> str | None:
    """What the endpoint serves under the name `model`: vLLM's `root` (the weights behind a
    served name) when the entry has one, else its id; None when no entry is named `model`."""
    for entry in entries:
        if model in list_model_names(entry):
            root = entry.get("root")
            return root if isinstance(root, str) and root else str(entry["id"])
    return None


def lacks_model_list(exc: EndpointError) -> bool:
    """The server answered GET /models, but with no usable list (404, 405, a body that is not
    a list): it is up, it just does not say what it serves."""
    cause = exc.__cause__
    missing = isinstance(cause, openai.APIStatusError) and cause.status_code in (404, 405)
    return missing or isinstance(exc, MalformedReplyError)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a server asked to wait: retry-after-ms, or Retry-After in seconds or as a date."""
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            return float(headers[name]) / divisor
        except (KeyError, ValueError):
            continue
    try:
        when = email.utils.parsedate_to_datetime(headers["retry-after"])
    except (KeyError, TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


@dataclass(frozen=True)
class Backoff:
    """How long to wait before each retry. Tests shorten `first_s`; production keeps the SDK's
    schedule, which vLLM and llama.cpp deployments are used to."""

    first_s: float = 0.5
    max_s: float = 8.0
    max_retry_after_s: float = 120.0

    def wait_s(self, retry: int, retry_after: float | None) -> float:
        """The server's Retry-After when it gave a usable one, else exponential backoff; the
        jitter keeps clients that failed together from retrying together."""
        if retry_after is not None and 0 < retry_after <= self.max_retry_after_s:
            return retry_after
        return min(self.first_s * 2**retry, self.max_s) * (1 - 0.25 * random.random())


@dataclass(frozen=True)
class Fault:
    """One failed attempt: its cause (a report key), what to say about it, whether it is
    worth another attempt, and the wait the server asked for."""

    cause: str  # http_<status>, timeout, connection, malformed
    what: str  # "HTTP 503", "timed out", ...: the start of the final error message
    detail: str  # what follows "after N attempts (max_retries=R)"
    retryable: bool
    retry_after: float | None = None


def classify_fault(exc: openai.APIError | MalformedReplyError, backoff: Backoff) -> Fault:
    if isinstance(exc, MalformedReplyError):
        reason = str(exc).partition(": ")[2]  # the message without its leading URL
        return Fault("malformed", "malformed reply", f": {reason}", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        retry_after = parse_retry_after(exc.response.headers)
        detail = f": {exc.message}"
        too_long = retry_after is not None and retry_after > backoff.max_retry_after_s
        if too_long:
            detail += f"; its Retry-After {retry_after:g} s is over {backoff.max_retry_after_s:g} s"
        retryable = (code in RETRY_STATUSES or code >= 500) and not too_long
        return Fault(f"http_{code}", f"HTTP {code}", detail, retryable, retry_after)
    if isinstance(exc, openai.APITimeoutError):
        return Fault("timeout", "timed out", f" ({type(exc.__cause__).__name__})", True)
    if isinstance(exc, openai.APIConnectionError):
        return Fault("connection", "connection failed", f" ({type(exc.__cause__).__name__})", True)
    # Anything else the SDK raises says the request itself is wrong: trying again cannot help.
    return Fault("api_error", type(exc).__name__, f": {exc}", retryable=False)


def render_final_error(where: str, fault: Fault, attempts: int, retries: int) -> str:
    tried = f"{attempts} attempt{'s' if attempts != 1 else ''} (max_retries={retries})"
    return f"{where}: {fault.what} after {tried}{fault.detail}"


class ClosesOnExit:
    """`async with` closes the object through its `aclose`."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class OpenAIChatClient(ClosesOnExit):
    """ChatClient over openai.AsyncOpenAI with sampling, retries and concurrency from params.
    Retries are logged to `logger` (the flow passes its Prefect run logger, so they show in the
    run's log and the UI)."""

    def __init__(
        self,
        params: EndpointParams,
        *,
        structured: str = "none",
        backoff: Backoff | None = None,
        logger: Logger | None = None,
        base_url: str | None = None,
    ) -> None:
        """`base_url` picks one of params' URLs (EndpointPool's clients); default: the first."""
        if structured not in STRUCTURED_MODES:
            raise ValueError(f"structured must be one of {STRUCTURED_MODES}, got {structured!r}")
        self.params = params
        self.structured = structured
        self.backoff = backoff or Backoff()
        self.log = logger or log
        self.base_url = (base_url or params.url).rstrip("/")
        # max_retries=0: call_with_retries is the one place that retries, so that every
        # attempt is seen, counted and logged, and a malformed 200 shares the same budget.
        self.sdk = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=params.api_key(),
            max_retries=0,
            timeout=params.timeout_s,
        )
        self._slots = asyncio.Semaphore(params.concurrency)

    async def call_with_retries(
        self, where: str, attempt: Callable[[], Awaitable[T]]
    ) -> tuple[T, tuple[str, ...]]:
        """`attempt()`'s result and the causes of the failed attempts retried before it;
        EndpointError (MalformedReplyError for a broken body) when the retries are spent or
        the fault is not worth another attempt."""
        retried: list[str] = []
        while True:
            try:
                return await attempt(), tuple(retried)
            except (openai.APIError, MalformedReplyError) as exc:
                fault = classify_fault(exc, self.backoff)
                if not fault.retryable or len(retried) >= self.params.retries:
                    raise self.final_error(where, fault, tuple(retried)) from exc
            await self.wait_to_retry(where, fault, len(retried))
            retried.append(fault.cause)

    def final_error(self, where: str, fault: Fault, retried: tuple[str, ...]) -> EndpointError:
        message = render_final_error(where, fault, len(retried) + 1, self.params.retries)
        error = MalformedReplyError if fault.cause == "malformed" else EndpointError
        return error(message, retried, endpoint_fault=fault.retryable)

    async def wait_to_retry(self, where: str, fault: Fault, retry: int) -> None:
        wait = self.backoff.wait_s(retry, fault.retry_after)
        self.log.info(
            "%s: %s on attempt %d of %d, retrying in %.2f s",
            where,
            fault.cause,
            retry + 1,
            self.params.retries + 1,
            wait,
        )
        await asyncio.sleep(wait)

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
        self,
        grammar: str | None,
        extra_body: dict[str, Any] | None,
        json_schema: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if grammar is not None and json_schema is not None:
            raise ValueError("give a grammar or a JSON schema, not both: a server applies one")
        base = grammar_body(self.structured, grammar) if grammar is not None else {}
        if json_schema is not None:
            base = schema_body(self.structured, json_schema)
        return merge_bodies(base, extra_body)

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        grammar: str | None = None,
        extra_body: dict[str, Any] | None = None,
        json_schema: dict[str, Any] | None = None,
        route: str | None = None,
    ) -> Completion:
        """One chat completion, retried as the module docstring says; EndpointError when the
        retries are spent. A truncated reply comes back with finish_reason "length".
        `grammar` or `json_schema` constrains decoding as the client's structured mode says.
        `route` matters only to EndpointPool."""
        where = f"{self.base_url}/chat/completions"
        body = self.request_extra_body(grammar, extra_body, json_schema)
        # Sampling goes in extra_body too so extra_body can override it and so fields the SDK
        # does not know (top_k, min_p) travel the same way.
        body = {**self.sampling_body(), **body}

        async def attempt() -> Completion:
            raw = await self.sdk.chat.completions.with_raw_response.create(
                model=self.params.model, messages=cast(Any, messages), extra_body=body
            )
            return parse_completion(raw.text, where, self.params.model)

        # The slot is held through the waits: a server that is failing or rate-limiting us
        # gets fewer requests, not the next queued ones.
        async with self._slots:
            reply, retried = await self.call_with_retries(where, attempt)
        return replace(reply, retried=retried)

    async def fetch_models(self) -> list[dict[str, Any]]:
        """GET {base_url}/models: the entries of the models the server serves."""
        where = f"{self.base_url}/models"

        async def attempt() -> list[dict[str, Any]]:
            raw = await self.sdk.models.with_raw_response.list()
            return parse_model_list(raw.text, where)

        entries, _ = await self.call_with_retries(where, attempt)
        return entries

    async def post_json(self, url: str, body: dict[str, Any]) -> Any:
        """POST `body` to `url` (a path under base_url, or a full URL for the routes a server
        keeps beside its OpenAI API: llama.cpp's /completion and /tokenize) with the same
        retries and slots as a chat call; the reply's JSON."""

        async def attempt() -> Any:
            raw = await self.sdk.post(url, cast_to=httpx.Response, body=body)
            try:
                return raw.json()
            except ValueError:
                raise MalformedReplyError(f"{url}: not JSON: {raw.text[:200]!r}") from None

        async with self._slots:
            reply, _ = await self.call_with_retries(url, attempt)
        return reply

    @property
    def server_root(self) -> str:
        """The server's address without the OpenAI API's /v1."""
        return self.base_url.removesuffix("/v1")

    async def aclose(self) -> None:
        await self.sdk.close()


def build_client(
    params: EndpointParams, structured: str = "none", logger: Logger | None = None
) -> OpenAIChatClient:
    return OpenAIChatClient(params, structured=structured, logger=logger)


async def check_endpoint(client: OpenAIChatClient) -> str | None:
    """Fail fast, before any work, when the endpoint is down or does not serve the model.
    Returns what it serves under the model's name (find_served_model), or None from a server
    without a usable GET /models, which cannot be checked and is trusted."""
    try:
        entries = await client.fetch_models()
    except EndpointError as exc:
        if not lacks_model_list(exc):
            raise
        client.log.warning("%s; the served model is not checked", exc)
        return None
    served = find_served_model(entries, client.params.model)
    if served is None:
        names = sorted({name for entry in entries for name in list_model_names(entry)})
        raise EndpointError(
            f"{client.base_url}/models: model {client.params.model!r} is not served there; "
            f"it serves {names}"
        )
    return served


class EndpointPool(ClosesOnExit):
    """Several endpoints serving the same model, as one ChatClient; with one URL it behaves
    as that endpoint's client alone.

    A call goes to the live endpoint its route ranks first (rendezvous hashing: every route
    ranks the endpoints in its own order, so taking one out moves only the routes that were on
    it, and a synth chunk's calls meet the prompt its earlier calls left in that server's
    cache); a call without a route takes the next endpoint in turn. Each endpoint's client
    keeps its own concurrency and retries. A call that still fails there counts against the
    endpoint and is sent again; `max_failures` such failures in a row (a success resets the
    count) take the endpoint out of rotation, with a log line, and its routes go to the rest.
    When none is left, the EndpointError names every URL and its last error. A refused request
    (a 4xx) is raised as it is: every endpoint would refuse it."""

    def __init__(
        self, clients: list[OpenAIChatClient], max_failures: int, logger: Logger | None = None
    ) -> None:
        if not clients:
            raise ValueError("an endpoint pool needs at least one client")
        self.clients = clients
        self.max_failures = max_failures
        self.log = logger or log
        self.failures = {c.base_url: 0 for c in clients}  # in a row
        self.removed: dict[str, str] = {}  # URL -> the error that took it out
        self.turns = itertools.count()

    @property
    def base_urls(self) -> list[str]:
        return [c.base_url for c in self.clients]

    @property
    def params(self) -> EndpointParams:
        """The endpoints' params (build_pool gives every client the same, but its URL)."""
        return self.clients[0].params

    @property
    def structured(self) -> str:
        return self.clients[0].structured

    def list_live(self) -> list[OpenAIChatClient]:
        return [c for c in self.clients if c.base_url not in self.removed]

    def pick(self, route: str | None) -> OpenAIChatClient:
        live = self.list_live()
        if not live:
            lines = "; ".join(f"{url}: {why}" for url, why in self.removed.items())
            raise EndpointError(f"no endpoint left of {len(self.clients)}: {lines}")
        if route is None:
            return live[next(self.turns) % len(live)]
        return max(live, key=lambda c: rank_endpoint(route, c.base_url))

    def remove(self, client: OpenAIChatClient, why: str) -> None:
        if client.base_url in self.removed:
            return
        self.removed[client.base_url] = why
        left = len(self.clients) - len(self.removed)
        self.log.warning(
            "%s taken out of rotation (%d endpoint(s) left): %s", client.base_url, left, why
        )

    def note_failure(self, client: OpenAIChatClient, error: EndpointError) -> None:
        self.failures[client.base_url] += 1
        if self.failures[client.base_url] >= self.max_failures:
            failed = f"{self.max_failures} failed request(s) in a row, the last: {error}"
            self.remove(client, failed)

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        grammar: str | None = None,
        extra_body: dict[str, Any] | None = None,
        json_schema: dict[str, Any] | None = None,
        route: str | None = None,
    ) -> Completion:
        """The reply from the route's endpoint; the causes retried on endpoints that failed
        it come first in `retried`, each failed endpoint's last one as "failover"."""
        failed: list[str] = []
        while True:
            client = self.pick(route)
            try:
                reply = await client.complete(
                    messages, grammar=grammar, extra_body=extra_body, json_schema=json_schema
                )
            except EndpointError as exc:
                if not exc.endpoint_fault:
                    raise
                self.note_failure(client, exc)
                failed += [*exc.retried, "failover"]
                continue
            self.failures[client.base_url] = 0
            return replace(reply, retried=(*failed, *reply.retried))

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def rank_endpoint(route: str, base_url: str) -> bytes:
    return hashlib.sha256(f"{route}\0{base_url}".encode()).digest()


def build_pool(
    params: EndpointParams, structured: str = "none", logger: Logger | None = None
) -> EndpointPool:
    """One client per URL in params.base_url, each with params' concurrency and retries."""
    clients = [
        OpenAIChatClient(params, structured=structured, logger=logger, base_url=url)
        for url in params.urls
    ]
    return EndpointPool(clients, params.max_failures, logger)


async def check_pool(pool: EndpointPool) -> str | None:
    """check_endpoint on every endpoint: one that is down (after its retries) is taken out of
    rotation, one that serves another model fails the check, and so does a pool with none
    left. Returns what the endpoints serve (check_endpoint), which must be the same on all."""
    served: dict[str, str | None] = {}
    for client in pool.list_live():
        try:
            served[client.base_url] = await check_endpoint(client)
        except EndpointError as exc:
            if not exc.endpoint_fault:
                raise
            pool.remove(client, str(exc))
    pool.pick(None)  # raises, naming every URL, when none is left
    known = {model for model in served.values() if model is not None}
    if len(known) > 1:
        raise EndpointError(f"the endpoints serve different models: {served}")
    return known.pop() if known else None
