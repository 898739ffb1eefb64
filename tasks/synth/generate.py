"""The synth stage's work: pages → chunks → LLM calls (cached by content) → parsed, filtered
Q/A pairs and preference triples, plus the stage report.

Every call is keyed by the hash of what decides its reply (the rendered messages, which hold
the page or chunk and the template; PROMPT_VERSION; model; sampling; structured mode and
grammar) and its reply is written to data/synth_cache/<key[:2]>/<key>.json the moment it
returns. A rerun reads finished calls back instead of calling, so an unchanged rerun makes no
calls, a changed page costs only its own calls, and a killed run resumes where it stopped.
Parsing and filtering always run again from the cached replies: they are cheap and pure.

Only a final reply is cached. The client retries what failed on the wire (errors, timeouts,
malformed bodies); a reply that arrived but was cut at max_tokens or refused is asked again
here, with another seed, at most synth.endpoint.retries times, and the last reply is final
whatever it says. A cache entry that cannot be read back is counted, logged and asked again.

A final reply of which nothing was kept (every pair or triple dropped by a parser or filter, no
usable main point) is asked again as a new attempt, with the seed base + 100 * attempt (re-asks
add at most synth.endpoint.retries <= 20 to it, so no two asks share a seed), at most
synth.max_attempts times in all. Each attempt is its own cached call; attempt 0's key is the key
calls had before attempts existed, so old caches stay valid. Whether a reply kept anything is
decided within its page (near-duplicates of the page's own earlier questions included): pages
run independently, so a question that repeats another page's is dropped but not asked again.

With synth.faithfulness_check on, every answer of an attempt that passes the other filters (a
triple's chosen answer) is then judged by the endpoint's model, right after the chunk's own
calls while the chunk is still in the server's prefix cache: a yes/no under a JSON schema,
keyed by the chunk, question and answer (tasks/synth/prompts.py: SUPPORT_VERSION) and the
judge's model, sampling and structured mode, and cached like any call. With
synth.faithfulness_endpoint set, that endpoint judges instead (Judge), through a pool of its
own, and the chunk's place among synth's calls is handed on before its answers are judged: the
synth endpoint's slots need not wait for another server. A no drops the answer as
judge_unsupported, which counts like any other drop (and so is asked again). Near-duplicates
are checked after the judge, corpus-wide, so the judge is asked about a page's answers whatever
the other pages hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openai
from tqdm import tqdm

from tasks.core.documents import read_pages, render_document
from tasks.core.io import write_bytes_atomic, write_if_changed, write_json_atomic
from tasks.core.params import CompetencyMix, SynthParams
from tasks.core.records import (
    Competency,
    Exclusion,
    MarkdownDoc,
    PreferenceTriple,
    QAPair,
    TripleKind,
    text_id,
)
from tasks.core.tokens import load_tokenizer, resolve_tokenizer
from tasks.llm.client import (
    ChatClient,
    Completion,
    EndpointError,
    Logger,
    build_pool,
    check_pool,
)
from tasks.synth.coverage import (
    Coverage,
    PagePlan,
    Verdict,
    list_triple_slots,
    measure_coverage,
    select_last_verdicts,
)
from tasks.synth.filters import (
    REFUSAL_RE,
    NearDuplicates,
    check_qa,
    check_triple,
    describe_drop,
    extract_content_words,
    score_grounding,
    strip_citation,
)
from tasks.synth.parse import Parsed, parse_points, parse_qa, parse_support, parse_triple
from tasks.synth.prompts import (
    PROMPT_VERSION,
    SUPPORT_SCHEMA,
    SUPPORT_VERSION,
    Persona,
    PromptOrder,
    grammar_max_chars,
    render_citation,
    render_messages,
    render_points_grammar,
    render_points_prompt,
    render_qa_grammar,
    render_qa_prompt,
    render_support_prompt,
    render_triple_grammar,
    render_triple_prompt,
)
from tasks.synth.yields import summarize_yield

TokenCounter = Callable[[str], int]
T = TypeVar("T")

PAIRS_FILE = "pairs.jsonl"
TRIPLES_FILE = "triples.jsonl"
EXCLUSIONS_FILE = "exclusions.jsonl"
HEADING_RE = re.compile(r"^#{1,6}\s")
FENCE_RE = re.compile(r"^\s*(?:`{3,}|~{3,})")
GOLDEN = (math.sqrt(5) - 1) / 2
ATTEMPT_SEED_STEP = 100  # endpoint.retries is at most 20, so re-asks never reach the next attempt
log = logging.getLogger(__name__)


class TooManyFailedPages(RuntimeError):
    """More pages than synth.max_failed_fraction kept failing; the report says which."""


@dataclass(frozen=True)
class Chunk:
    index: int
    document: str  # front matter + (part of) the body: what the model reads
    tokens: int
    n_pairs: int
    n_points: int


@dataclass(frozen=True)
class PageWork:
    doc: MarkdownDoc
    chunks: tuple[Chunk, ...]


def split_on(lines: list[str], starts: Callable[[str], bool]) -> list[str]:
    """Join lines into pieces, a new piece at each line where `starts` holds outside code."""
    pieces: list[list[str]] = [[]]
    fenced = False
    for line in lines:
        if not fenced and starts(line) and any(s.strip() for s in pieces[-1]):
            pieces.append([])
        pieces[-1].append(line)
        if FENCE_RE.match(line.lstrip("\0")):
            fenced = not fenced
    return ["\n".join(p).strip("\n") for p in pieces if any(s.strip() for s in p)]


def split_sections(body: str) -> list[str]:
    return split_on(body.split("\n"), lambda line: bool(HEADING_RE.match(line)))


def split_paragraphs(section: str) -> list[str]:
    lines = section.split("\n")
    starts = {i for i in range(1, len(lines)) if not lines[i - 1].strip() and lines[i].strip()}
    marked = [("\0" if i in starts else "") + line for i, line in enumerate(lines)]
    return [p.replace("\0", "") for p in split_on(marked, lambda line: line.startswith("\0"))]


def split_oversized(section: str, limit: int, count: TokenCounter) -> list[str]:
    """A section over the limit: its paragraphs (then lines), each continuation piece led by
    the section's heading so the model knows where it is."""
    head = section.split("\n", 1)[0] if HEADING_RE.match(section) else ""
    parts = split_paragraphs(section)
    if len(parts) == 1:
        parts = [line for line in section.split("\n") if line.strip()]
    pieces = pack_pieces(parts, limit, count)
    return [pieces[0], *(p if p.startswith(head) else f"{head}\n\n{p}" for p in pieces[1:])]


def pack_pieces(pieces: list[str], limit: int, count: TokenCounter) -> list[str]:
    """Greedily join consecutive pieces while the result stays within `limit` tokens."""
    packed: list[str] = []
    for piece in pieces:
        joined = f"{packed[-1]}\n\n{piece}" if packed else piece
        if packed and count(joined) <= limit:
            packed[-1] = joined
        else:
            packed.append(piece)
    return packed


def split_body(body: str, limit: int, count: TokenCounter) -> list[str]:
    """The body in heading-aligned parts of at most `limit` tokens (a single line longer than
    that stays whole)."""
    if count(body) <= limit:
        return [body]
    sections: list[str] = []
    for section in split_sections(body):
        fits = count(section) <= limit
        sections += [section] if fits else split_oversized(section, limit, count)
    return pack_pieces(sections, limit, count)


def scale_count(tokens: int, per_tokens: int, low: int, high: int) -> int:
    return max(low, min(high, round(tokens / per_tokens)))


def plan_page(doc: MarkdownDoc, body: str, params: SynthParams, count: TokenCounter) -> PageWork:
    """A page's chunks (the whole page when it fits), each with its number of pairs/points."""
    limit = max(16, params.context_tokens - count(render_document(doc, "")))
    chunks = []
    for index, part in enumerate(split_body(body, limit, count)):
        tokens = count(part)
        n_pairs = scale_count(tokens, params.pairs_per_tokens, params.min_pairs, params.max_pairs)
        n_points = scale_count(
            tokens, params.points_per_tokens, params.min_points, params.max_points
        )
        chunks.append(Chunk(index, render_document(doc, part), tokens, n_pairs, n_points))
    return PageWork(doc, tuple(chunks))


def assign_competencies(page_id: str, n: int, mix: CompetencyMix) -> list[Competency]:
    """Deterministic tags whose shares approach `mix`: a golden-ratio sequence started at a
    page-specific offset is spread evenly within a page and across pages, and a page's tags
    do not depend on any other page (so they survive other pages changing)."""
    offset = int(hashlib.sha256(page_id.encode()).hexdigest()[:8], 16) / 16**8
    shares = mix.model_dump()
    bounds, total = [], 0.0
    for tag in Competency:
        total += shares[tag.value]
        bounds.append((total, tag))
    tags = []
    for k in range(n):
        u = (offset + k * GOLDEN) % 1.0
        tags.append(next((tag for bound, tag in bounds if u < bound), bounds[-1][1]))
    return tags


@dataclass(frozen=True)
class CallRequest:
    kind: str  # qa | points | good | false_premise | judge
    page_id: str
    messages: list[dict[str, str]]
    grammar: str | None
    key: str
    url: str = ""  # the page's, for log lines
    attempt: int = 0
    chunk: int = 0
    schema: dict[str, Any] | None = None  # the judge's reply schema (instead of a grammar)


@dataclass(frozen=True)
class CallResult:
    key: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    seconds: float
    made: bool  # False when read back from the cache
    cached_prompt_tokens: int = 0  # prompt tokens the server took from its prefix cache
    kind: str = ""  # the request's: qa | points | good | false_premise | judge


class CallGate:
    """Lets at most `size` calls through at once, the lowest rank first (then first come).

    The stage ranks a call by its page's reading position and its chunk, so a chunk's
    follow-up calls (its triples once its points arrive, its asks again) go before the first
    calls of chunks behind it: they reach the endpoint while the page is still in its prefix
    cache, instead of behind every other chunk's first calls (first come, first served, as the
    client's own semaphore does, a chunk's triples would wait for all the pages' points calls
    and find the page evicted at production scale)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiting: list[tuple[tuple[int, ...], int, asyncio.Future[None]]] = []
        self.arrivals = itertools.count()

    @asynccontextmanager
    async def hold(self, rank: tuple[int, ...]) -> AsyncIterator[None]:
        if self.free > 0 and not self.waiting:
            self.free -= 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self.waiting, (rank, next(self.arrivals), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self.release()  # handed the place just as it was cancelled: pass it on
                raise
        try:
            yield
        finally:
            self.release()

    def release(self) -> None:
        """The place goes to the first waiter still waiting, else back to the pool."""
        while self.waiting:
            _, _, turn = heapq.heappop(self.waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1


@dataclass
class EndpointCounts:
    """Requests sent to the endpoint this run, and the causes of those that were retried:
    the client's (http_<status>, timeout, connection, malformed) and ours (length, refusal)."""

    attempts: int = 0
    retries_by_cause: Counter[str] = field(default_factory=Counter)

    def add(self, retried: Sequence[str]) -> None:
        """One call to the client: its final attempt and those it retried before."""
        self.attempts += 1 + len(retried)
        self.retries_by_cause.update(retried)

    def summary(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "retries": sum(self.retries_by_cause.values()),
            "retries_by_cause": dict(sorted(self.retries_by_cause.items())),
        }


@dataclass(frozen=True)
class CallOrder:
    """Where the page goes in a prompt and when a chunk's Q/A call is asked. Not params: the
    stage always puts the page first and asks Q/A after the points call; tasks/bench/synth.py
    sets the others to measure what each is worth."""

    prompt: PromptOrder = "page_first"
    qa_after_points: bool = True
    # A chunk's calls one after another: llama.cpp keeps a prefix in one slot, so follow-ups
    # sent together prefill it again in the other slots; one at a time, each finds it there.
    # Other chunks keep the remaining slots busy (reports/bench_synth.json: prompt_order).
    one_at_a_time: bool = True


@dataclass(frozen=True)
class Judge:
    """synth.faithfulness_endpoint's client (a pool, as synth's own) and the model it serves
    (check_pool; its params' name when the server does not say)."""

    client: ChatClient
    model: str


@dataclass
class Settings:
    """What every page's calls share: params, the cache folder, the calls seen this run, and
    the faithfulness endpoint's client (None: synth's own client judges)."""

    params: SynthParams
    cache_dir: Path
    calls: list[CallResult] = field(default_factory=list)
    failed_calls: int = 0
    endpoint: EndpointCounts = field(default_factory=EndpointCounts)
    corrupt_entries: list[str] = field(default_factory=list)  # why each was unreadable
    # Reading position of each page: calls are let through to the endpoint earliest page and
    # chunk first (CallGate), so a chunk's follow-up calls overtake later chunks' first calls.
    ranks: dict[str, int] = field(default_factory=dict)
    gate: CallGate | None = None
    order: CallOrder = field(default_factory=CallOrder)
    judge: Judge | None = None
    # The judge calls' requests to synth.faithfulness_endpoint (to synth.endpoint, they count
    # in `endpoint`).
    judge_requests: EndpointCounts = field(default_factory=EndpointCounts)

    def __post_init__(self) -> None:
        if self.gate is None:
            endpoint = self.params.endpoint
            self.gate = CallGate(endpoint.concurrency * len(endpoint.urls))

    @property
    def persona(self) -> Persona:
        return Persona(self.params.persona, self.params.domain)

    def judged_apart(self, request: CallRequest) -> bool:
        """A verdict asked of synth.faithfulness_endpoint rather than synth's endpoint."""
        return request.kind == "judge" and self.judge is not None

    def client_for(self, request: CallRequest, synth: ChatClient) -> ChatClient:
        return self.judge.client if self.judge and self.judged_apart(request) else synth

    def counts_for(self, request: CallRequest) -> EndpointCounts:
        return self.judge_requests if self.judged_apart(request) else self.endpoint

    def request_body(
        self, grammar: str | None, reask: int = 0, attempt: int = 0
    ) -> dict[str, Any] | None:
        """A grammar bounds the reply's length in characters, and a token is at least one, so
        max_tokens raised to that bound never cuts a constrained reply short (a small model
        otherwise fills its budget and every block ends truncated). A re-asked call and each
        new attempt get their own seed: the same seed would bring back the same reply."""
        p = self.params
        body: dict[str, Any] = {}
        if grammar is not None:
            longest = grammar_max_chars(p.max_pairs, p.max_points, p.max_answer_chars)
            body["max_tokens"] = max(p.endpoint.sampling.max_tokens, longest)
        shift = ATTEMPT_SEED_STEP * attempt + reask
        if shift and p.endpoint.sampling.seed is not None:
            body["seed"] = p.endpoint.sampling.seed + shift
        return body or None

    def judge_body(self, reask: int = 0) -> dict[str, Any]:
        """Greedy decoding: a verdict should not depend on the draw. A re-ask (a reply cut
        short or refused) still gets its own seed, for servers that sample anyway."""
        body: dict[str, Any] = {"temperature": 0.0}
        seed = self.params.judge_endpoint.sampling.seed
        if reask and seed is not None:
            body["seed"] = seed + reask
        return body


def render_call_key(
    messages: list[dict[str, str]], grammar: str | None, params: SynthParams, attempt: int = 0
) -> str:
    """The hash of what decides a call's reply. Attempt 0 leaves the attempt out, so its key
    is the one every call had before attempts existed."""
    spec: dict[str, Any] = {
        "prompt_version": PROMPT_VERSION,
        "messages": messages,
        "grammar": grammar,
        "structured": params.structured,
        "model": params.endpoint.model,
        "sampling": params.endpoint.sampling.model_dump(),
    }
    if attempt:
        spec["attempt"] = attempt
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def render_support_key(messages: list[dict[str, str]], params: SynthParams) -> str:
    """The hash of what decides a verdict. Not PROMPT_VERSION: the generation prompts do not
    decide it (the answer in the messages does), so changing them keeps verdicts on answers
    that come back unchanged. The judge's model, sampling and structured mode: with
    synth.faithfulness_endpoint null they are synth's, so those keys stay what they were."""
    judge = params.judge_endpoint
    spec: dict[str, Any] = {
        "support_version": SUPPORT_VERSION,
        "messages": messages,
        "schema": SUPPORT_SCHEMA,
        "structured": params.judge_structured,
        "model": judge.model,
        "sampling": judge.sampling.model_dump(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def build_request(
    kind: str, doc: MarkdownDoc, user: str, grammar: str, s: Settings, at: tuple[int, int]
) -> CallRequest:
    """`at` is (chunk index, attempt)."""
    chunk, attempt = at
    messages = render_messages(s.persona, user)
    used = grammar if s.params.structured != "none" else None
    key = render_call_key(messages, used, s.params, attempt)
    return CallRequest(kind, doc.id, messages, used, key, doc.url, attempt, chunk)


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.json"


class CorruptCacheEntry(ValueError):
    """A cache file that is there but cannot be read back as a reply (a torn or hand-edited
    file); the call is asked again and the file overwritten."""


# What a cache entry must hold to be replayed; bool is excluded from the ints below.
CACHE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "text": str,
    "finish_reason": str,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_prompt_tokens": int,
    "model": str,
    "seconds": (int, float),
}


def read_cached(cache_dir: Path, key: str) -> CallResult | None:
    """The cached reply, None when there is none, CorruptCacheEntry when it is unusable."""
    path = cache_path(cache_dir, key)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCacheEntry(f"{path}: not JSON ({exc})") from None
    return parse_cache_entry(data, key, path)


def parse_cache_entry(data: Any, key: str, path: Path) -> CallResult:
    if not isinstance(data, dict):
        raise CorruptCacheEntry(f"{path}: a JSON {type(data).__name__}, not an object")
    if data.get("key", key) != key:
        raise CorruptCacheEntry(f"{path}: holds the reply for key {data['key']!r}")
    data = {"cached_prompt_tokens": 0, **data}  # entries from before it was recorded
    for name, kind in CACHE_FIELDS.items():
        value = data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CorruptCacheEntry(f"{path}: {name} is {value!r}")
    return CallResult(
        key,
        data["text"],
        data["finish_reason"],
        data["prompt_tokens"],
        data["completion_tokens"],
        data["model"],
        float(data["seconds"]),
        made=False,
        cached_prompt_tokens=data["cached_prompt_tokens"],
    )


def write_cached(cache_dir: Path, request: CallRequest, result: CallResult) -> None:
    entry = {
        "key": result.key,
        "kind": request.kind,
        "page_id": request.page_id,
        "attempt": request.attempt,
        "prompt_version": SUPPORT_VERSION if request.schema else PROMPT_VERSION,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cached_prompt_tokens": result.cached_prompt_tokens,
        "model": result.model,
        "seconds": result.seconds,
    }
    write_json_atomic(cache_path(cache_dir, result.key), entry)


def read_cached_or_note(s: Settings, key: str) -> CallResult | None:
    """The cached reply, or None; a corrupt entry is noted (and so asked again)."""
    try:
        return read_cached(s.cache_dir, key)
    except CorruptCacheEntry as exc:
        s.corrupt_entries.append(str(exc))
        return None


def check_final(reply: Completion) -> str | None:
    """Why a reply is not yet a final answer (it is asked again), or None when it is."""
    if reply.finish_reason == "length":
        return "length"
    if REFUSAL_RE.search(reply.text):
        return "refusal"
    return None


async def ask_once(client: ChatClient, request: CallRequest, s: Settings, reask: int) -> Completion:
    if request.schema is None:
        body = s.request_body(request.grammar, reask, request.attempt)
    else:
        body = s.judge_body(reask)
    rank = (s.ranks.get(request.page_id, 0), request.chunk)
    # A chunk's calls share their prompt's prefix: with several endpoints they go to the same
    # one, whose prefix cache holds it.
    route = f"{request.page_id}/{request.chunk}"
    assert s.gate is not None  # set in Settings.__post_init__
    # One at a time, the chunk holds its place for all its calls (ask_chunk). A judge of its
    # own is bounded by its pool's concurrency: the gate is for synth's endpoint.
    free = s.order.one_at_a_time or s.judged_apart(request)
    gate = contextlib.nullcontext() if free else s.gate.hold(rank)
    counts = s.counts_for(request)
    try:
        async with gate:
            reply = await s.client_for(request, client).complete(
                request.messages,
                grammar=request.grammar,
                extra_body=body,
                json_schema=request.schema,
                route=route,
            )
    except (EndpointError, openai.APIError) as exc:
        s.failed_calls += 1
        counts.add(getattr(exc, "retried", ()))
        raise
    counts.add(reply.retried)
    return reply


async def ask_until_final(client: ChatClient, request: CallRequest, s: Settings) -> Completion:
    """A reply cut at max_tokens or refused is asked again, at most endpoint.retries times;
    the last reply is final whatever it says (the parser and filters count what is wrong)."""
    reply = await ask_once(client, request, s, 0)
    retries = (s.params.judge_endpoint if request.kind == "judge" else s.params.endpoint).retries
    for reask in range(1, retries + 1):
        problem = check_final(reply)
        if problem is None:
            break
        s.counts_for(request).retries_by_cause[problem] += 1
        run_logger().info(
            "synth %s: %s reply %s on attempt %d of %d, asking again with another seed",
            request.url,
            request.kind,
            problem,
            reask,
            retries + 1,
        )
        reply = await ask_once(client, request, s, reask)
    return reply


async def fetch_completion(client: ChatClient, request: CallRequest, s: Settings) -> CallResult:
    """The cached reply, or a new call whose final reply is cached before anything else
    happens."""
    cached = read_cached_or_note(s, request.key)
    if cached is not None:
        cached = dataclasses.replace(cached, kind=request.kind)
        s.calls.append(cached)
        return cached
    started = time.monotonic()
    reply = await ask_until_final(client, request, s)
    seconds = round(time.monotonic() - started, 3)
    result = CallResult(
        request.key,
        reply.text,
        reply.finish_reason,
        reply.prompt_tokens,
        reply.completion_tokens,
        reply.model,
        seconds,
        made=True,
        cached_prompt_tokens=reply.cached_prompt_tokens,
        kind=request.kind,
    )
    write_cached(s.cache_dir, request, result)
    s.calls.append(result)
    return result


async def gather_all(*aws: Awaitable[T]) -> list[T]:
    """Like asyncio.gather, but lets every sibling finish (and cache its reply) before the
    first error is raised."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ChunkReply:
    """The reply to a chunk's Q/A or points call on one attempt (0 = the first ask)."""

    chunk: int
    attempt: int
    result: CallResult


@dataclass(frozen=True)
class TripleSlot:
    """One triple a chunk asks for; `index` is its place in list_triple_slots."""

    index: int
    point: str
    kind: TripleKind
    competency: Competency


@dataclass(frozen=True)
class TripleReply:
    chunk: int
    slot: TripleSlot
    attempt: int
    result: CallResult


@dataclass(frozen=True)
class Candidate:
    """An answer every filter but the judge's keeps: a Q/A answer (with its citation, as it is
    kept) or a triple's chosen answer, with the question it answers."""

    chunk: int
    question: str
    answer: str


@dataclass(frozen=True)
class Judgement:
    """The judge's reply about one candidate."""

    candidate: Candidate
    result: CallResult

    @property
    def supported(self) -> bool | None:
        """None when the reply says neither yes nor no."""
        return parse_support(self.result.text)


@dataclass(frozen=True)
class ChunkAsked:
    """What one attempt asked of a chunk: None for a call it did not ask."""

    qa: ChunkReply | None
    points: ChunkReply | None
    triples: list[TripleReply]
    judgements: tuple[Judgement, ...] = ()


@dataclass(frozen=True)
class PageOutcome:
    """Every reply of a page's calls: attempt by attempt, each in chunk (and slot) order."""

    work: PageWork
    qa: tuple[ChunkReply, ...] = ()
    points: tuple[ChunkReply, ...] = ()
    triples: tuple[TripleReply, ...] = ()
    judgements: tuple[Judgement, ...] = ()
    error: str | None = None

    def extend(self, asked: Sequence[ChunkAsked]) -> PageOutcome:
        """With the replies of the next attempt."""
        return PageOutcome(
            self.work,
            qa=(*self.qa, *(a.qa for a in asked if a.qa)),
            points=(*self.points, *(a.points for a in asked if a.points)),
            triples=(*self.triples, *(t for a in asked for t in a.triples)),
            judgements=(*self.judgements, *(j for a in asked for j in a.judgements)),
        )

    def verdicts_by_candidate(self) -> dict[Candidate, bool | None]:
        return {j.candidate: j.supported for j in self.judgements}

    def list_attempts(self) -> list[int]:
        """The attempt of every reply."""
        return [r.attempt for r in (*self.qa, *self.points)] + [t.attempt for t in self.triples]

    def last_points(self, chunk: int) -> CallResult | None:
        replies = [r.result for r in self.points if r.chunk == chunk]
        return replies[-1] if replies else None


@dataclass(frozen=True)
class ChunkDue:
    """The calls a chunk asks on one attempt: its Q/A call; its points call, then a triple for
    each slot of the points it gives; and triples asked again."""

    chunk: Chunk
    tags: tuple[Competency, ...]
    qa: bool
    points: bool
    triples: tuple[TripleSlot, ...] = ()


def qa_request(work: PageWork, chunk: Chunk, s: Settings, attempt: int) -> CallRequest:
    user = render_qa_prompt(work.doc, chunk.document, chunk.n_pairs, s.order.prompt)
    grammar = render_qa_grammar(chunk.n_pairs, s.params.max_answer_chars)
    return build_request("qa", work.doc, user, grammar, s, (chunk.index, attempt))


def points_request(work: PageWork, chunk: Chunk, s: Settings, attempt: int) -> CallRequest:
    user = render_points_prompt(work.doc, chunk.document, chunk.n_points, s.order.prompt)
    grammar = render_points_grammar(chunk.n_points)
    return build_request("points", work.doc, user, grammar, s, (chunk.index, attempt))


def triple_request(
    work: PageWork, chunk: Chunk, slot: TripleSlot, s: Settings, attempt: int
) -> CallRequest:
    user = render_triple_prompt(
        work.doc, chunk.document, slot.point, slot.kind, slot.competency, s.order.prompt
    )
    grammar = render_triple_grammar(s.params.max_answer_chars)
    return build_request(slot.kind.value, work.doc, user, grammar, s, (chunk.index, attempt))


def support_request(work: PageWork, candidate: Candidate, s: Settings) -> CallRequest:
    doc, chunk = work.doc, work.chunks[candidate.chunk]
    answer = strip_citation(candidate.answer)
    user = render_support_prompt(doc, chunk.document, candidate.question, answer)
    messages = render_messages(s.persona, user)
    key = render_support_key(messages, s.params)
    return CallRequest(
        "judge", doc.id, messages, None, key, doc.url, chunk=chunk.index, schema=SUPPORT_SCHEMA
    )


@dataclass(frozen=True)
class Screen:
    """What the filters before the judge need of a chunk."""

    source: set[str]  # the chunk's content words
    page: str | None  # the chunk's text when literals are checked


def screen_chunk(chunk: Chunk, p: SynthParams) -> Screen:
    return Screen(
        extract_content_words(chunk.document), chunk.document if p.literal_grounding else None
    )


def list_candidates(work: PageWork, asked: ChunkAsked, p: SynthParams) -> list[Candidate]:
    """The answers of one attempt's Q/A and triple replies for a chunk that every filter but
    the judge's keeps, each once: what the judge is asked about (add_qa and add_triple filter
    the same way, so they find every verdict they need)."""
    found = qa_candidates(work, asked.qa, p) if asked.qa else []
    for triple in asked.triples:
        found += triple_candidates(work, triple, p)
    return list(dict.fromkeys(found))


def qa_candidates(work: PageWork, reply: ChunkReply, p: SynthParams) -> list[Candidate]:
    chunk, citation = work.chunks[reply.chunk], render_citation(work.doc)
    screen, found = screen_chunk(chunk, p), []
    for parsed in parse_qa(reply.result.text, reply.result.finish_reason):
        if parsed.problem is None:
            question, answer = parsed.fields[0], cite_answer(parsed.fields[1], citation)
            if check_qa(question, answer, screen.source, p.min_grounding, screen.page) is None:
                found.append(Candidate(chunk.index, question, answer))
    return found


def triple_candidates(work: PageWork, reply: TripleReply, p: SynthParams) -> list[Candidate]:
    chunk = work.chunks[reply.chunk]
    screen, found = screen_chunk(chunk, p), []
    for parsed in parse_triple(reply.result.text, reply.result.finish_reason)[:1]:
        if parsed.problem is None:
            prompt, chosen, rejected = parsed.fields
            reason = check_triple(
                prompt, chosen, rejected, screen.source, p.min_grounding, screen.page
            )
            if reason is None:
                found.append(Candidate(chunk.index, prompt, chosen))
    return found


def select_points(reply: CallResult, limit: int) -> list[str]:
    """The usable points of a reply, deduplicated, at most as many as were asked for."""
    points: list[str] = []
    for parsed in parse_points(reply.text, reply.finish_reason):
        if parsed.problem is None and parsed.fields[0] not in points:
            points.append(parsed.fields[0])
    return points[:limit]


def plan_slots(points: Sequence[str], tags: Sequence[Competency]) -> tuple[TripleSlot, ...]:
    slots = zip(list_triple_slots(points), tags, strict=False)
    return tuple(TripleSlot(i, p, k, t) for i, ((p, k), t) in enumerate(slots))


async def ask_chunk(
    client: ChatClient, work: PageWork, due: ChunkDue, attempt: int, s: Settings
) -> ChunkAsked:
    """One chunk's calls of one attempt, one after another: the points call, the Q/A call, the
    triple calls for its points, then (faithfulness_check) the verdicts on what they keep. The
    first prefills the page; each later one finds it in the server's prefix cache, where calls
    sent together would each prefill it in a slot of their own (CallOrder says why). Meanwhile
    the other chunks in flight keep the endpoint's slots busy."""
    chunk = due.chunk
    if s.order.one_at_a_time:
        # The chunk keeps its place in the gate from one call to the next: handed back after
        # each call, it would go to another chunk before this one's next call is queued.
        assert s.gate is not None
        async with s.gate.hold((s.ranks.get(work.doc.id, 0), chunk.index)):
            asked = await ask_chunk_calls(client, work, due, attempt, s)
            if s.judge is None:  # synth's endpoint judges, finding the chunk in its cache
                return await judge_chunk(client, work, asked, s)
        return await judge_chunk(client, work, asked, s)
    asked = await ask_chunk_calls(client, work, due, attempt, s)
    return await judge_chunk(client, work, asked, s)


async def ask_in_order(
    client: ChatClient, requests: list[CallRequest], s: Settings
) -> list[CallResult]:
    """One after another (CallOrder.one_at_a_time), else all at once."""
    if s.order.one_at_a_time:
        return [await fetch_completion(client, r, s) for r in requests]
    return await gather_all(*(fetch_completion(client, r, s) for r in requests))


async def judge_chunk(
    client: ChatClient, work: PageWork, asked: ChunkAsked, s: Settings
) -> ChunkAsked:
    """With synth.faithfulness_check, the verdicts on every answer the chunk's replies keep."""
    if not s.params.faithfulness_check:
        return asked
    candidates = list_candidates(work, asked, s.params)
    verdicts = await ask_in_order(client, [support_request(work, c, s) for c in candidates], s)
    judgements = tuple(Judgement(c, r) for c, r in zip(candidates, verdicts, strict=True))
    return dataclasses.replace(asked, judgements=judgements)


async def ask_chunk_calls(
    client: ChatClient, work: PageWork, due: ChunkDue, attempt: int, s: Settings
) -> ChunkAsked:
    chunk = due.chunk

    async def ask(request: CallRequest) -> CallResult:
        return await fetch_completion(client, request, s)

    async def qa() -> ChunkReply | None:
        if not due.qa:
            return None
        return ChunkReply(chunk.index, attempt, await ask(qa_request(work, chunk, s, attempt)))

    async def triples(slots: tuple[TripleSlot, ...]) -> list[TripleReply]:
        requests = [triple_request(work, chunk, slot, s, attempt) for slot in slots]
        answers = await ask_in_order(client, requests, s)
        return [
            TripleReply(chunk.index, slot, attempt, r)
            for slot, r in zip(slots, answers, strict=True)
        ]

    # Beside the points call only when the bench measures that schedule (it is started after
    # the points call has been queued: the points call unlocks the triple calls).
    qa_call = None if s.order.qa_after_points else asyncio.ensure_future(qa())
    try:
        points, slots = None, due.triples
        if due.points:
            points = ChunkReply(
                chunk.index, attempt, await ask(points_request(work, chunk, s, attempt))
            )
            slots = plan_slots(select_points(points.result, chunk.n_points), due.tags)
        if qa_call is None:
            qa_call = asyncio.ensure_future(qa())
        if s.order.one_at_a_time:
            await asyncio.wait([qa_call])
        asked = await triples(slots)
    finally:
        # Let the sibling finish (and cache its reply) even when this branch failed, and mark
        # its error seen: result() below raises it, or this branch's error supersedes it.
        if qa_call is not None:
            await asyncio.wait([qa_call])
            qa_call.exception()
    return ChunkAsked(qa_call.result(), points, asked)


def split_tags(work: PageWork, mix: CompetencyMix) -> list[tuple[Competency, ...]]:
    """Each chunk's share of the page's competency tags, fixed before any call (two triples
    per requested point), so tags never depend on what another chunk's calls returned."""
    tags = assign_competencies(work.doc.id, sum(2 * c.n_points for c in work.chunks), mix)
    bounds = list(itertools.accumulate(2 * c.n_points for c in work.chunks))
    return [
        tuple(tags[end - 2 * c.n_points : end]) for c, end in zip(work.chunks, bounds, strict=True)
    ]


def plan_first_attempt(work: PageWork, tags: list[tuple[Competency, ...]]) -> list[ChunkDue]:
    return [ChunkDue(c, t, qa=True, points=True) for c, t in zip(work.chunks, tags, strict=True)]


def plan_retries(
    outcome: PageOutcome, tags: list[tuple[Competency, ...]], params: SynthParams
) -> list[ChunkDue]:
    """The calls whose last reply kept nothing, judged within the page: per chunk, its Q/A
    call, its points call (then triples for the points it gives) and its triples' slots."""
    verdicts = assemble_outputs([outcome], params).verdicts
    dropped = {key for key, v in select_last_verdicts(verdicts).items() if not v.kept}
    page = outcome.work.doc.id
    slots = sorted({(t.chunk, t.slot) for t in outcome.triples}, key=lambda c: (c[0], c[1].index))
    dues = []
    for chunk, chunk_tags in zip(outcome.work.chunks, tags, strict=True):
        i = chunk.index
        again = tuple(s for c, s in slots if c == i and ("triple", page, i, s.index) in dropped)
        qa, points = ("qa", page, i, 0) in dropped, ("points", page, i, 0) in dropped
        if qa or points or again:
            dues.append(ChunkDue(chunk, chunk_tags, qa, points, again))
    return dues


async def synthesize_page(client: ChatClient, work: PageWork, s: Settings) -> PageOutcome:
    """All calls of one page: per chunk, Q/A and main points, then two triples per point;
    then, up to synth.max_attempts asks in all, each call whose reply kept nothing is asked
    again. A call that still fails after the client's retries marks the page failed."""
    tags = split_tags(work, s.params.competency_mix)
    outcome = PageOutcome(work)
    try:
        for attempt in range(s.params.max_attempts):
            dues = (
                plan_retries(outcome, tags, s.params) if attempt else plan_first_attempt(work, tags)
            )
            if not dues:
                break
            asked = await gather_all(*(ask_chunk(client, work, d, attempt, s) for d in dues))
            outcome = outcome.extend(asked)
    except (EndpointError, openai.APIError) as exc:
        return PageOutcome(work, error=f"{type(exc).__name__}: {exc}")
    return outcome


PageRunner = Callable[[ChatClient, PageWork, Settings], Awaitable[PageOutcome]]


class CacheMiss(Exception):
    """Raised by ReplayClient: the page needs at least one real call."""


class ReplayClient:
    """A ChatClient that answers nothing: every call must come from the cache."""

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        grammar: str | None = None,
        extra_body: dict[str, Any] | None = None,
        json_schema: dict[str, Any] | None = None,
        route: str | None = None,
    ) -> Completion:
        raise CacheMiss


async def replay_page(work: PageWork, s: Settings) -> PageOutcome | None:
    """The page's outcome when all its calls are cached, else None (nothing counted)."""
    probe = Settings(s.params, s.cache_dir, ranks=s.ranks, order=s.order)
    try:
        outcome = await synthesize_page(ReplayClient(), work, probe)
    except CacheMiss:
        return None
    s.calls.extend(probe.calls)
    return outcome


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a flow or task run (so lines show in the UI), else ours."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def render_page_line(outcome: PageOutcome, replayed: bool) -> str:
    doc = outcome.work.doc
    if outcome.error:
        return f"synth {doc.url}: FAILED {outcome.error}"
    n, source = len(outcome.work.chunks), "all from cache" if replayed else "called"
    again = sum(attempt > 0 for attempt in outcome.list_attempts())
    retried = f", {again} asked again" if again else ""
    return (
        f"synth {doc.url}: {n} chunk(s), {len(outcome.triples)} triple call(s){retried}, {source}"
    )


async def synthesize_pages(
    client: ChatClient, works: Sequence[PageWork], s: Settings, run_page: PageRunner
) -> list[PageOutcome]:
    """Every page at once; the client's semaphore bounds the calls actually in flight."""
    logger = run_logger()
    with tqdm(total=len(works), desc="synth", unit="page") as bar:

        async def one(work: PageWork) -> PageOutcome:
            # Fully cached pages are replayed inline: a Prefect task per page costs ~45 ms,
            # which only pages that call the endpoint are worth.
            replayed = await replay_page(work, s)
            outcome = replayed or await run_page(client, work, s)
            bar.update(1)
            logger.info(render_page_line(outcome, replayed is not None))
            return outcome

        # A page's endpoint failures come back as its outcome; anything raised here (a full
        # disk, a bug) stops every other page at once, so no more calls are paid for replies
        # that could not be kept.
        running = [asyncio.ensure_future(one(w)) for w in works]
        try:
            return list(await asyncio.gather(*running))
        except BaseException:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise


@dataclass
class Assembled:
    endpoint_model: str | None = None  # written into every pair's and triple's provenance
    pairs: list[QAPair] = field(default_factory=list)
    triples: list[PreferenceTriple] = field(default_factory=list)
    qa_exclusions: list[Exclusion] = field(default_factory=list)
    pref_exclusions: list[Exclusion] = field(default_factory=list)
    parse_failures: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    grounding: list[float] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # {url, error} per failed page
    verdicts: list[Verdict] = field(default_factory=list)  # one per reply
    judged: Counter[str] = field(default_factory=Counter)  # yes | no | unreadable

    @property
    def failed_pages(self) -> int:
        return len(self.failed)

    def drop(self, family: str, reason: str, parsing: bool, excl: Exclusion, n: int = 1) -> str:
        """Count `n` dropped items under <family>.<reason> and keep their exclusion."""
        key = f"{family}.{reason}"
        (self.parse_failures if parsing else self.dropped)[key] += n
        (self.qa_exclusions if family == "qa" else self.pref_exclusions).append(excl)
        return key


def exclusion(doc: MarkdownDoc, reason: str, chunk: int, text: str, attempt: int = 0) -> Exclusion:
    where = f"chunk {chunk}, attempt {attempt + 1}" if attempt else f"chunk {chunk}"
    return Exclusion(id=doc.id, url=doc.url, reason=reason, detail=f"{where}: {text[:300]}")


@dataclass(frozen=True)
class Scores:
    """What a kept answer's record says of its grounding: the word-overlap score and the
    judge's verdict (None when it was not asked)."""

    grounding: float
    faithful: bool | None = None


def judge_candidate(
    out: Assembled, judged: dict[Candidate, bool | None] | None, candidate: Candidate
) -> tuple[bool | None, str | None]:
    """The judge's verdict on an answer the other filters keep, and the reason to drop it;
    (None, None) when the check is off (`judged` None)."""
    if judged is None:
        return None, None
    # Every candidate was judged when its reply came (list_candidates). A missing verdict
    # would be a bug; it counts as unreadable, so the answer is dropped, never kept unjudged.
    supported = judged.get(candidate)
    out.judged[{True: "yes", False: "no", None: "unreadable"}[supported]] += 1
    if supported is None:
        return None, "judge_unreadable"
    return supported, None if supported else "judge_unsupported"


def add_qa(
    out: Assembled,
    work: PageWork,
    reply: ChunkReply,
    p: SynthParams,
    dups: NearDuplicates,
    judged: dict[Candidate, bool | None] | None = None,
) -> None:
    """`judged`: the page's verdicts when synth.faithfulness_check is on, else None."""
    doc, chunk, result = work.doc, work.chunks[reply.chunk], reply.result
    screen = screen_chunk(chunk, p)
    before, drops = len(out.pairs), []
    for parsed in parse_qa(result.text, result.finish_reason):
        if parsed.problem:
            excl = exclusion(doc, parsed.problem, chunk.index, parsed.raw, reply.attempt)
            drops.append(out.drop("qa", parsed.problem, True, excl))
            continue
        question, answer = parsed.fields
        answer = cite_answer(answer, render_citation(doc))
        scores = Scores(score_grounding(answer, screen.source))
        out.grounding.append(scores.grounding)
        reason = check_qa(question, answer, screen.source, p.min_grounding, screen.page)
        if reason is None:
            candidate = Candidate(chunk.index, question, answer)
            faithful, reason = judge_candidate(out, judged, candidate)
            scores = dataclasses.replace(scores, faithful=faithful)
        if reason is None and dups.add(question):
            reason = "near_duplicate"
        if reason:
            detail = describe_drop(reason, f"{question} | {answer}", answer, screen.page)
            excl = exclusion(doc, reason, chunk.index, detail, reply.attempt)
            drops.append(out.drop("qa", reason, False, excl))
            continue
        out.pairs.append(build_pair(doc, reply, (question, answer), scores, out.endpoint_model))
    kept = len(out.pairs) - before
    out.verdicts.append(Verdict("qa", doc.id, chunk.index, 0, reply.attempt, kept, tuple(drops)))


def build_pair(
    doc: MarkdownDoc,
    reply: ChunkReply,
    qa: tuple[str, str],
    scores: Scores,
    endpoint_model: str | None,
) -> QAPair:
    question, answer = qa
    return QAPair(
        id=text_id(doc.id, question, answer),
        page_id=doc.id,
        url=doc.url,
        product=doc.product,
        version=doc.version,
        chunk=reply.chunk,
        question=question,
        answer=answer,
        model=reply.result.model,
        prompt_version=PROMPT_VERSION,
        endpoint_model=endpoint_model,
        grounding=round(scores.grounding, 4),
        faithful=scores.faithful,
    )


def cite_answer(answer: str, citation: str) -> str:
    """The answer ending with its true source: whatever citation the model wrote (small
    models invent URLs) is replaced by the page's own."""
    return f"{strip_citation(answer)} {citation}"


def add_points(out: Assembled, work: PageWork, reply: ChunkReply) -> None:
    doc, chunk, result = work.doc, work.chunks[reply.chunk], reply.result
    parsed = parse_points(result.text, result.finish_reason)
    drops = []
    for block in parsed:
        if block.problem:
            excl = exclusion(doc, block.problem, chunk.index, block.raw, reply.attempt)
            drops.append(out.drop("points", block.problem, True, excl))
    usable = [b.fields[0] for b in parsed if b.problem is None]
    kept = len(select_points(result, chunk.n_points))
    repeated, extra = len(usable) - len(set(usable)), len(set(usable)) - kept
    for reason, n in (("duplicate_point", repeated), ("points_over_limit", extra)):
        if n > 0:
            excl = exclusion(doc, reason, chunk.index, f"{n} point(s) dropped", reply.attempt)
            drops += [out.drop("points", reason, True, excl, n)] * n
    verdict = Verdict("points", doc.id, chunk.index, 0, reply.attempt, kept, tuple(drops))
    out.verdicts.append(verdict)


def add_triple(
    out: Assembled,
    work: PageWork,
    reply: TripleReply,
    p: SynthParams,
    dups: NearDuplicates,
    judged: dict[Candidate, bool | None] | None = None,
) -> None:
    """`judged` as add_qa's."""
    doc, chunk, result = work.doc, work.chunks[reply.chunk], reply.result
    screen = screen_chunk(chunk, p)
    before, drops = len(out.triples), []
    for parsed in parse_triple(result.text, result.finish_reason)[:1]:
        if parsed.problem:
            excl = exclusion(doc, parsed.problem, chunk.index, parsed.raw, reply.attempt)
            drops.append(out.drop("triples", parsed.problem, True, excl))
            continue
        prompt, chosen, rejected = parsed.fields
        scores = Scores(score_grounding(chosen, screen.source))
        out.grounding.append(scores.grounding)
        reason = check_triple(prompt, chosen, rejected, screen.source, p.min_grounding, screen.page)
        if reason is None:
            candidate = Candidate(chunk.index, prompt, chosen)
            faithful, reason = judge_candidate(out, judged, candidate)
            scores = dataclasses.replace(scores, faithful=faithful)
        if reason is None and dups.add(prompt):
            reason = "near_duplicate"
        if reason:
            text = f"{reply.slot.kind.value}: {prompt} | {chosen} | {rejected}"
            detail = describe_drop(reason, text, chosen, screen.page)
            excl = exclusion(doc, reason, chunk.index, detail, reply.attempt)
            drops.append(out.drop("triples", reason, False, excl))
            continue
        out.triples.append(build_triple(work, reply, parsed, scores, out.endpoint_model))
    kept, slot = len(out.triples) - before, reply.slot.index
    out.verdicts.append(
        Verdict("triple", doc.id, chunk.index, slot, reply.attempt, kept, tuple(drops))
    )


def build_triple(
    work: PageWork, reply: TripleReply, parsed: Parsed, scores: Scores, endpoint_model: str | None
) -> PreferenceTriple:
    doc, slot = work.doc, reply.slot
    prompt, chosen, rejected = parsed.fields
    return PreferenceTriple(
        id=text_id(doc.id, slot.kind.value, prompt, chosen, rejected),
        page_id=doc.id,
        url=doc.url,
        product=doc.product,
        version=doc.version,
        chunk=reply.chunk,
        point=slot.point,
        kind=slot.kind,
        competency=slot.competency,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        model=reply.result.model,
        prompt_version=PROMPT_VERSION,
        endpoint_model=endpoint_model,
        grounding=round(scores.grounding, 4),
        faithful=scores.faithful,
    )


def assemble_outputs(
    outcomes: Sequence[PageOutcome], params: SynthParams, endpoint_model: str | None = None
) -> Assembled:
    """Parse every reply, filter, and deduplicate questions across the corpus: the first
    attempts of every page in reading order, then the second attempts, and so on (the first
    of near-duplicates is kept), so a retry never displaces what an earlier attempt kept.
    Pairs and triples come out in reading order."""
    out = Assembled(endpoint_model=endpoint_model)
    threshold = params.near_duplicate_jaccard
    dups = Duplicates(NearDuplicates(threshold), NearDuplicates(threshold))
    for attempt in range(count_attempts(outcomes)):
        for outcome in outcomes:
            if not outcome.error:
                add_attempt(out, outcome, attempt, params, dups)
            elif attempt == 0:
                out.failed.append({"url": outcome.work.doc.url, "error": outcome.error})
                for excl in (out.qa_exclusions, out.pref_exclusions):
                    excl.append(exclusion(outcome.work.doc, "endpoint_error", 0, outcome.error))
    place = {o.work.doc.id: i for i, o in enumerate(outcomes)}
    out.pairs.sort(key=lambda r: (place[r.page_id], r.chunk))
    out.triples.sort(key=lambda r: (place[r.page_id], r.chunk))
    return out


@dataclass(frozen=True)
class Duplicates:
    """The questions kept so far, Q/A and preference apart."""

    qa: NearDuplicates
    pref: NearDuplicates


def add_attempt(
    out: Assembled, outcome: PageOutcome, attempt: int, params: SynthParams, dups: Duplicates
) -> None:
    work = outcome.work
    judged = outcome.verdicts_by_candidate() if params.faithfulness_check else None
    for reply in (r for r in outcome.qa if r.attempt == attempt):
        add_qa(out, work, reply, params, dups.qa, judged)
    for reply in (r for r in outcome.points if r.attempt == attempt):
        add_points(out, work, reply)
    for triple in (t for t in outcome.triples if t.attempt == attempt):
        add_triple(out, work, triple, params, dups.pref, judged)


def count_attempts(outcomes: Sequence[PageOutcome]) -> int:
    """The attempts the replies reach, at least one (so failed pages are still seen)."""
    return max((a for o in outcomes for a in o.list_attempts()), default=0) + 1


def render_jsonl(rows: Sequence[QAPair | PreferenceTriple | Exclusion]) -> bytes:
    lines = (
        json.dumps(r.model_dump(mode="json"), sort_keys=True, ensure_ascii=False) for r in rows
    )
    return "".join(line + "\n" for line in lines).encode("utf-8")


def write_outputs(qa_dir: Path, pref_dir: Path, out: Assembled) -> None:
    """Rewritten only when their bytes change, so an unchanged rerun touches nothing."""
    write_if_changed(qa_dir / PAIRS_FILE, render_jsonl(out.pairs))
    write_if_changed(qa_dir / EXCLUSIONS_FILE, render_jsonl(out.qa_exclusions))
    write_if_changed(pref_dir / TRIPLES_FILE, render_jsonl(out.triples))
    write_if_changed(pref_dir / EXCLUSIONS_FILE, render_jsonl(out.pref_exclusions))


def prune_cache(cache_dir: Path, used: set[str], unused_days: float | None) -> dict[str, int]:
    """Mark the replies this run used as used now (their mtime), delete temp files of killed
    runs and, when `unused_days` is set, replies unused for that long; returns what the cache
    holds afterwards."""
    now = time.time()
    counts = {"entries": 0, "bytes": 0, "unused": 0, "pruned": 0}
    for path in cache_dir.glob("*/*"):
        if path.name.endswith(".tmp"):
            path.unlink()
            continue
        if path.stem in used:
            os.utime(path, (now, now))
        elif unused_days is not None and now - path.stat().st_mtime >= unused_days * 86400:
            path.unlink()
            counts["pruned"] += 1
            continue
        else:
            counts["unused"] += 1
        counts["entries"] += 1
        counts["bytes"] += path.stat().st_size
    for folder in cache_dir.glob("*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return counts


def summarize_cache_share(calls: Sequence[CallResult]) -> dict[str, dict[str, Any]]:
    """Prompt tokens and the share the server took from its prefix cache, per call kind and
    over all calls (0 cached where the server does not report it)."""
    kinds = sorted({c.kind for c in calls})
    share: dict[str, dict[str, Any]] = {}
    for kind, group in [*((k, [c for c in calls if c.kind == k]) for k in kinds), ("all", calls)]:
        prompt = sum(c.prompt_tokens for c in group)
        cached = sum(c.cached_prompt_tokens for c in group)
        share[kind] = {
            "calls": len(group),
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "cached_share": round(cached / prompt, 4) if prompt else 0.0,
        }
    return share


def summarize_calls(calls: Sequence[CallResult], failed: int, generate_s: float) -> dict[str, Any]:
    made = [c for c in calls if c.made]
    completion_made = sum(c.completion_tokens for c in made)
    return {
        "calls": {"made": len(made), "reused": len(calls) - len(made), "failed": failed},
        "tokens": {
            "prompt_made": sum(c.prompt_tokens for c in made),
            # Of those, served from the endpoint's prefix cache (when the server reports it).
            "prompt_cached_made": sum(c.cached_prompt_tokens for c in made),
            "completion_made": completion_made,
            "prompt_total": sum(c.prompt_tokens for c in calls),
            "completion_total": sum(c.completion_tokens for c in calls),
        },
        # The server's prefix cache on the calls made this run, and, apart, what it did when
        # the replies replayed from data/synth_cache/ were made (their entries keep it).
        "prefix_cache": {
            "made": summarize_cache_share(made),
            "replayed": summarize_cache_share([c for c in calls if not c.made]),
        },
        "generate_s": round(generate_s, 2),
        # Calls overlap, so throughput is tokens over the generation phase's wall time.
        "completion_tokens_per_s": round(completion_made / generate_s, 2) if made else 0.0,
    }


def summarize_cost(tokens: dict[str, int], params: SynthParams) -> dict[str, float] | None:
    prompt_price, completion_price = params.price_prompt_per_mtok, params.price_completion_per_mtok
    if prompt_price is None and completion_price is None:
        return None

    def cost(prompt: int, completion: int) -> float:
        usd = prompt * (prompt_price or 0) + completion * (completion_price or 0)
        return round(usd / 1e6, 6)

    return {
        "made_usd": cost(tokens["prompt_made"], tokens["completion_made"]),
        "total_usd": cost(tokens["prompt_total"], tokens["completion_total"]),
    }


def summarize_attempts(verdicts: Sequence[Verdict]) -> dict[str, dict[str, int]]:
    """Replies per call kind and attempt (counted from 1): {"qa": {"1": 24, "2": 3}, ...}."""
    counts = Counter((v.call, v.attempt) for v in verdicts)
    attempts: dict[str, dict[str, int]] = {}
    for (call, attempt), n in sorted(counts.items()):
        attempts.setdefault(call, {})[str(attempt + 1)] = n
    return attempts


def summarize_drops_by_attempt(verdicts: Sequence[Verdict]) -> dict[str, dict[str, int]]:
    """Dropped items per attempt (counted from 1) and <family>.<reason>."""
    drops: dict[int, Counter[str]] = {}
    for verdict in verdicts:
        drops.setdefault(verdict.attempt, Counter()).update(verdict.drops)
    return {str(a + 1): dict(sorted(drops[a].items())) for a in sorted(drops)}


def summarize_faithfulness(out: Assembled, s: Settings) -> dict[str, Any]:
    """The judge's model (None when the check is off) and, when it is
    synth.faithfulness_endpoint's, the requests sent there (else they count in the report's
    `endpoint`); its calls (made and replayed), its verdicts on the answers it was asked about
    that the assembled output saw, and the answers those verdicts dropped."""
    calls = [c for c in s.calls if c.kind == "judge"]
    made = sum(c.made for c in calls)
    dropped = sum(n for k, n in out.dropped.items() if k.split(".", 1)[1].startswith("judge_"))
    model = s.judge.model if s.judge else out.endpoint_model or s.params.endpoint.model
    return {
        "check": s.params.faithfulness_check,
        "model": model if s.params.faithfulness_check else None,
        "endpoint": s.judge_requests.summary() if s.judge else None,
        "calls": {"made": made, "reused": len(calls) - made},
        "verdicts": {v: out.judged[v] for v in ("yes", "no", "unreadable")},
        "dropped": dropped,
    }


def count_yield(works: Sequence[PageWork], out: Assembled) -> tuple[int, int]:
    """(kept, asked) as tasks/synth/yields.py defines them, over the pages that did not fail."""
    failed = {f["url"] for f in out.failed}
    chunks = [(w.doc.id, c) for w in works if w.doc.url not in failed for c in w.chunks]
    pairs = Counter((p.page_id, p.chunk) for p in out.pairs)
    kept_pairs = sum(min(pairs[(page, c.index)], c.n_pairs) for page, c in chunks)
    asked = sum(c.n_pairs + len(TripleKind) * c.n_points for _, c in chunks)
    return kept_pairs + len(out.triples), asked


def summarize(
    works: Sequence[PageWork],
    out: Assembled,
    coverage: Coverage,
    s: Settings,
    generate_s: float,
    cache: dict[str, int],
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "pages": len(works),
        "pages_failed": out.failed_pages,
        "chunks": sum(len(w.chunks) for w in works),
        "pairs_requested": sum(c.n_pairs for w in works for c in w.chunks),
        "pairs": len(out.pairs),
        "triples": len(out.triples),
        "triples_by_kind": dict(sorted(Counter(t.kind.value for t in out.triples).items())),
        "competency_mix": dict(sorted(Counter(t.competency.value for t in out.triples).items())),
        "parse_failures": dict(sorted(out.parse_failures.items())),
        "dropped_by_reason": dict(sorted(out.dropped.items())),
        "attempts": summarize_attempts(out.verdicts),
        # Parse failures and filter drops together, per attempt.
        "dropped_by_attempt": summarize_drops_by_attempt(out.verdicts),
        "coverage": coverage.summary(),
        "yield": summarize_yield(*count_yield(works, out), s.params.min_yield),
        "endpoint_model": out.endpoint_model,
        "grounding": {
            "measure": "share of answer content words found in its page/chunk",
            "threshold": s.params.min_grounding,
            "checked": len(out.grounding),
            "grounded_share": round(
                sum(g >= s.params.min_grounding for g in out.grounding) / len(out.grounding), 4
            )
            if out.grounding
            else 0.0,
            "mean_score": round(sum(out.grounding) / len(out.grounding), 4)
            if out.grounding
            else 0.0,
        },
        "faithfulness": summarize_faithfulness(out, s),
        "cache_pruned": cache["pruned"],
        "cache": cache,
        # Entries that could not be read back, so were asked again (their paths are logged).
        "cache_corrupt": len(s.corrupt_entries),
        "prompt_version": PROMPT_VERSION,
        **summarize_calls(s.calls, s.failed_calls, generate_s),
        "endpoint": s.endpoint.summary(),
        # A rerun calls for exactly these (every other page replays from the cache).
        "failed_pages": out.failed,
    }
    cost = summarize_cost(report["tokens"], s.params)
    if cost is not None:
        report["cost"] = cost
    return report


def check_failed_pages(report: dict[str, Any], max_fraction: float) -> None:
    """Raise when too many pages failed; the flow calls it after writing the report."""
    pages, failed = report["pages"], report["pages_failed"]
    if pages and failed / pages > max_fraction:
        raise TooManyFailedPages(
            f"{failed} of {pages} pages failed (synth.max_failed_fraction = {max_fraction}); "
            "they and their errors are listed in the report's failed_pages; the next run "
            "calls only for them"
        )


def plan_coverage(outcome: PageOutcome, body: str) -> PagePlan:
    """The page as coverage sees it: its sections, chunks, and the points each chunk asked
    for and those its last points reply gave."""
    chunks = outcome.work.chunks
    given = []
    for chunk in chunks:
        reply = outcome.last_points(chunk.index)
        given.append(tuple(select_points(reply, chunk.n_points)) if reply else ())
    return PagePlan(
        outcome.work.doc,
        tuple(split_sections(body)),
        tuple(c.document for c in chunks),
        tuple(c.n_points for c in chunks),
        tuple(given),
        outcome.error,
    )


def cover_outputs(out: Assembled, outcomes: Sequence[PageOutcome], bodies: list[str]) -> Coverage:
    """What the kept output covers; everything it leaves uncovered joins the exclusions."""
    plans = [plan_coverage(o, body) for o, body in zip(outcomes, bodies, strict=False)]
    coverage = measure_coverage(plans, out.pairs, out.triples, out.verdicts)
    out.qa_exclusions += coverage.qa_exclusions
    out.pref_exclusions += coverage.pref_exclusions
    return coverage


@dataclass(frozen=True)
class SynthDirs:
    markdown: Path
    qa: Path
    pref: Path
    cache: Path


async def run_synth(
    client: ChatClient,
    dirs: SynthDirs,
    params: SynthParams,
    count: TokenCounter,
    run_page: PageRunner = synthesize_page,
    endpoint_model: str | None = None,
    order: CallOrder | None = None,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """The whole stage: returns the report (without wall time). `endpoint_model` is what the
    endpoint serves (check_endpoint), written into every pair's and triple's provenance.
    `judge`: synth.faithfulness_endpoint's (open_judge), None when synth's endpoint judges. The
    cache keeps every reply unless synth.cache_prune_unused_days says otherwise, and then is
    pruned only when the run is within synth.max_failed_fraction. `order` is for the bench."""
    pages = read_pages(dirs.markdown)
    works = [plan_page(doc, body, params, count) for doc, body in pages[: params.max_pages]]
    ranks = {work.doc.id: i for i, work in enumerate(works)}
    settings = Settings(params, dirs.cache, ranks=ranks, order=order or CallOrder(), judge=judge)
    write_cache_marker(dirs.cache)
    started = time.monotonic()
    outcomes = await synthesize_pages(client, works, settings, run_page)
    generate_s = time.monotonic() - started
    for why in settings.corrupt_entries:
        run_logger().warning("synth: corrupt cache entry asked again: %s", why)
    out = assemble_outputs(outcomes, params, endpoint_model)
    coverage = cover_outputs(out, outcomes, [body for _, body in pages])
    for doc, _ in pages[len(works) :]:
        out.qa_exclusions.append(Exclusion(id=doc.id, url=doc.url, reason="over_max_pages"))
    write_outputs(dirs.qa, dirs.pref, out)
    ok = not works or out.failed_pages / len(works) <= params.max_failed_fraction
    unused_days = params.cache_prune_unused_days if ok else None
    cache = prune_cache(dirs.cache, {c.key for c in settings.calls}, unused_days)
    report = summarize(works, out, coverage, settings, generate_s, cache)
    return {**report, "pages_over_max_pages": len(pages) - len(works)}


@asynccontextmanager
async def open_judge(params: SynthParams, logger: Logger) -> AsyncIterator[Judge | None]:
    """synth.faithfulness_endpoint's pool, checked as synth's is (check_pool: one that is down
    is taken out of rotation; none left fails, naming the key and every URL), while the check
    is on and the endpoint set; else None (synth's endpoint judges, or nothing is judged)."""
    endpoint = params.faithfulness_endpoint
    if endpoint is None or not params.faithfulness_check:
        yield None
        return
    async with build_pool(endpoint, params.judge_structured, logger) as pool:
        try:
            served = await check_pool(pool)
        except EndpointError as exc:
            raise EndpointError(
                f"synth.faithfulness_endpoint: {exc}", exc.retried, exc.endpoint_fault
            ) from exc
        yield Judge(pool, served or endpoint.model)


def write_cache_marker(cache_dir: Path) -> None:
    """DVC needs the persisted cache folder to exist even before the first call."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    marker = cache_dir / "README"
    if not marker.is_file():
        write_bytes_atomic(marker, b"LLM replies of the synth stage, keyed by call hash.\n")


def read_token_counter(spec: str | None, cache_dir: Path) -> TokenCounter:
    """Token counts with the tokenizer named in params (null = SmolLM2's, as in markdown)."""
    tokenizer = load_tokenizer(resolve_tokenizer(spec, cache_dir)[0])
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
