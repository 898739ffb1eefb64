"""A model measured through the server that serves it (the exported GGUF under llama.cpp, a
folder under vLLM): what ships is what is measured. The prompts are rendered by the served
model's own chat template and split by its own tokenizer, and the scoring rule is that of
tasks/eval/lm.py (mean log-probability of the answer's tokens after the prompt; summed
negative log-likelihood over windows for perplexity), so the figures sit beside the
transformers ones.

Log-likelihoods of given tokens, per `scoring`:
- llama-cpp: llama.cpp's server has no prompt log-probabilities (it ignores `echo`), so its
  native /completion is made to generate exactly the scored tokens, forced by a grammar of
  token ids (`<[id]>`), and reports each one's log-probability from the raw logits (before
  the grammar and the samplers: `post_sampling_probs` false). One request per answer or window.
  A token that ends inside a UTF-8 character gets no probability from llama.cpp: an answer with
  one is left unscored, and a perplexity window leaves that token out; both are counted.
- echo: OpenAI /v1/completions with `echo` and `logprobs` returns the prompt's log-probabilities
  (vLLM); its /tokenize renders the chat template and splits the text.
- none: answers only; perplexity and choice accuracy are marked not available.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tasks.core.hashing import hash_file
from tasks.core.params import EvalParams, ServedModelParams
from tasks.core.perplexity import split_windows
from tasks.core.records import text_id
from tasks.eval.cache import ResultCache, result_key
from tasks.eval.inputs import EvalInputs, Question
from tasks.eval.lm import MAX_WINDOW
from tasks.eval.measure import ModelResults, cached_map, measure_answers
from tasks.llm.client import (
    EndpointError,
    OpenAIChatClient,
    build_client,
    check_endpoint,
    list_model_names,
)

log = logging.getLogger(__name__)

Logprobs = list[float | None]  # per scored token; None where the server gave none
# Fields of a GET /models entry that change from one start of the same server to the next.
VOLATILE_MODEL_FIELDS = ("created",)


class ServedScoringError(RuntimeError):
    """The server does not score tokens the way `scoring` says it does."""


class ServedLM(Protocol):
    async def render_chat_ids(self, system: str, user: str) -> list[int]: ...

    async def encode(self, text: str) -> list[int]: ...

    async def score(self, context: list[int], continuation: list[int]) -> Logprobs: ...


def render_token_grammar(ids: Sequence[int]) -> str:
    """A GBNF grammar that accepts exactly these tokens, one after another."""
    return "root ::= " + " ".join(f"<[{i}]>" for i in ids)


def align_logprobs(tokens: Sequence[int], probs: Sequence[dict[str, Any]]) -> Logprobs:
    """Each token's log-probability from llama.cpp's completion_probabilities, which leaves
    out the tokens that end inside a UTF-8 character."""
    out: Logprobs = []
    j = 0
    for token in tokens:
        if j < len(probs) and probs[j].get("id") == token:
            out.append(float(probs[j]["logprob"]))
            j += 1
        else:
            out.append(None)
    return out


class LlamaCppLM:
    """Prompts, tokens and forced-token log-likelihoods from llama.cpp's server."""

    def __init__(self, client: OpenAIChatClient) -> None:
        self.client = client
        self.root = client.server_root

    async def render_chat_ids(self, system: str, user: str) -> list[int]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        reply = await self.client.post_json(f"{self.root}/apply-template", {"messages": messages})
        return await self.encode(str(reply["prompt"]))

    async def encode(self, text: str) -> list[int]:
        reply = await self.client.post_json(
            f"{self.root}/tokenize", {"content": text, "add_special": False}
        )
        return [int(t) for t in reply["tokens"]]

    async def score(self, context: list[int], continuation: list[int]) -> Logprobs:
        if not continuation:
            return []
        body = {
            "prompt": context,
            "n_predict": len(continuation),
            "grammar": render_token_grammar(continuation),
            "n_probs": 1,
            "post_sampling_probs": False,
            "temperature": 0,
            "return_tokens": True,
            "cache_prompt": True,
        }
        try:
            reply = await self.client.post_json(f"{self.root}/completion", body)
        except EndpointError as exc:
            # llama.cpp's grammar loses its place on some tokens that split a UTF-8
            # character; those tokens would have no probability anyway.
            if "grammar" not in str(exc):
                raise
            log.warning("llama.cpp could not force %d tokens: %s", len(continuation), exc)
            return [None] * len(continuation)
        got = reply.get("tokens")
        if got != continuation:
            raise ServedScoringError(
                f"{self.root}/completion did not generate the {len(continuation)} tokens asked "
                f"for after {len(context)} (got {len(got or [])}: {str(got)[:60]}): either a "
                "slot's context (--ctx / --parallel) is too small for them, or the server has "
                "no token-id grammars (<[id]>), in which case set scoring: none"
            )
        return align_logprobs(continuation, reply.get("completion_probabilities") or [])


class EchoLM:
    """Prompts, tokens and prompt log-likelihoods from vLLM's API (/tokenize, and
    /v1/completions with echo and logprobs)."""

    def __init__(self, client: OpenAIChatClient) -> None:
        self.client = client
        self.root = client.server_root
        self.model = client.params.model

    async def render_chat_ids(self, system: str, user: str) -> list[int]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        body = {"model": self.model, "messages": messages, "add_generation_prompt": True}
        reply = await self.client.post_json(f"{self.root}/tokenize", body)
        return [int(t) for t in reply["tokens"]]

    async def encode(self, text: str) -> list[int]:
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        reply = await self.client.post_json(f"{self.root}/tokenize", body)
        return [int(t) for t in reply["tokens"]]

    async def score(self, context: list[int], continuation: list[int]) -> Logprobs:
        body = {
            "model": self.model,
            "prompt": context + continuation,
            "max_tokens": 1,
            "temperature": 0,
            "echo": True,
            "logprobs": 1,
        }
        reply = await self.client.post_json("/completions", body)
        try:
            values = reply["choices"][0]["logprobs"]["token_logprobs"]
        except (KeyError, IndexError, TypeError):
            values = None
        end = len(context) + len(continuation)
        if not isinstance(values, list) or len(values) < end:
            raise ServedScoringError(
                f"{self.client.base_url}/completions returned no log-probabilities for the "
                f"echoed prompt ({str(reply)[:200]}): the server does not support echo with "
                "logprobs (vLLM does); set scoring: llama-cpp for llama.cpp, or none"
            )
        return [None if v is None else float(v) for v in values[len(context) : end]]


def build_served_lm(client: OpenAIChatClient, scoring: str) -> ServedLM:
    return LlamaCppLM(client) if scoring == "llama-cpp" else EchoLM(client)


@dataclass(frozen=True)
class ServedIdentity:
    hash: str  # the key of every cached result of this model
    window: int  # tokens per perplexity window: the local rule, capped by the served context


def read_context_length(entry: dict[str, Any]) -> int | None:
    """The model's trained context from a GET /models entry: llama.cpp's meta.n_ctx_train,
    vLLM's max_model_len."""
    meta = entry.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    for value in (meta.get("n_ctx_train"), entry.get("max_model_len")):
        if isinstance(value, int) and value > 1:
            return value
    return None


async def fetch_served_identity(served: ServedModelParams) -> ServedIdentity:
    """What the server says it serves under the name (and the hash of `file` when given),
    hashed: another model behind the same URL is measured anew. Fails naming the URL when the
    server is down or does not serve the name."""
    async with build_client(served) as client:
        await check_endpoint(client)
        try:
            entries = await client.fetch_models()
        except EndpointError:
            entries = []  # a server without a model list: the name and file must do
    entry = next((e for e in entries if served.model in list_model_names(e)), {})
    stable = {k: v for k, v in entry.items() if k not in VOLATILE_MODEL_FIELDS}
    file_hash = hash_file(served.file) if served.file is not None else None
    described = json.dumps([served.model, served.scoring, stable, file_hash], sort_keys=True)
    window = min(MAX_WINDOW, read_context_length(entry) or MAX_WINDOW)
    return ServedIdentity(text_id("served", described), window)


async def score_choices_async(
    served: ServedModelParams, triples: Sequence[Question], system: str
) -> list[dict[str, Any]]:
    async with build_client(served) as client:
        lm = build_served_lm(client, served.scoring)

        async def score_one(q: Question) -> dict[str, Any]:
            prompt = await lm.render_chat_ids(system, q.question)
            right, wrong = await lm.encode(q.reference), await lm.encode(str(q.wrong))
            scores = await asyncio.gather(lm.score(prompt, right), lm.score(prompt, wrong))
            return {"right": mean_or_none(scores[0]), "wrong": mean_or_none(scores[1])}

        return list(await asyncio.gather(*(score_one(q) for q in triples)))


def mean_or_none(logprobs: Logprobs) -> float | None:
    """The mean log-probability per token (lm.score_answers' rule); None when the server left
    a token unscored, as the mean of the others is not the same figure."""
    if not logprobs:
        return float("-inf")
    if any(v is None for v in logprobs):
        return None
    return sum(v for v in logprobs if v is not None) / len(logprobs)


def measure_served_choices(
    served: ServedModelParams,
    identity: ServedIdentity,
    questions: Sequence[Question],
    system: str,
    cache: ResultCache,
) -> tuple[dict[str, tuple[float, float]], int]:
    """Length-normalised log-likelihoods of each triple's right and wrong answer, and the
    number of triples the server could not score (left out)."""
    triples = [q for q in questions if q.wrong is not None]
    keys = [
        result_key("choice", identity.hash, system, q.question, q.reference, q.wrong)
        for q in triples
    ]

    def compute(todo: list[int]) -> list[dict[str, Any]]:
        return asyncio.run(score_choices_async(served, [triples[i] for i in todo], system))

    results = cached_map(cache, keys, compute)
    choices = {
        q.id: (r["right"], r["wrong"])
        for q, r in zip(triples, results, strict=True)
        if r["right"] is not None and r["wrong"] is not None
    }
    return choices, len(triples) - len(choices)


async def score_texts_async(
    served: ServedModelParams, texts: Sequence[str], max_tokens: int, window: int
) -> list[dict[str, Any]]:
    async with build_client(served) as client:
        lm = build_served_lm(client, served.scoring)

        async def score_one(text: str) -> dict[str, Any]:
            ids = (await lm.encode(text))[:max_tokens]
            # A window's first token has no context in it (tasks/core/perplexity.py).
            windows = split_windows(ids, window)
            scored = await asyncio.gather(*(lm.score(w[:1], w[1:]) for w in windows))
            values = [v for s in scored for v in s if v is not None]
            missing = sum(len(s) for s in scored) - len(values)
            return {"nll": -sum(values), "tokens": len(values), "unscored": missing}

        return list(await asyncio.gather(*(score_one(t) for t in texts)))


def measure_served_nll(
    served: ServedModelParams,
    identity: ServedIdentity,
    texts: Sequence[str],
    max_tokens: int,
    cache: ResultCache,
) -> tuple[list[tuple[float, int]], int]:
    """Summed NLL and tokens per text, and the tokens the server left unscored."""
    keys = [result_key("nll", identity.hash, t, max_tokens, identity.window) for t in texts]

    def compute(todo: list[int]) -> list[dict[str, Any]]:
        todo_texts = [texts[i] for i in todo]
        return asyncio.run(score_texts_async(served, todo_texts, max_tokens, identity.window))

    results = cached_map(cache, keys, compute)
    return [(r["nll"], r["tokens"]) for r in results], sum(r["unscored"] for r in results)


def measure_served(
    served: ServedModelParams,
    inputs: EvalInputs,
    general_paragraphs: Sequence[str],
    system: str,
    params: EvalParams,
    cache: ResultCache,
) -> ModelResults:
    """measure_model for a served model: its answers through chat completions, and (unless
    scoring is none) perplexities and choice likelihoods through the server."""
    identity = asyncio.run(fetch_served_identity(served))
    results = ModelResults(served.name, identity.hash, scoring=served.scoring)
    if served.scoring != "none":
        limit = params.max_perplexity_tokens
        pages = [p.text for p in inputs.held_out_pages]
        results.held_out_nll, missed_pages = measure_served_nll(
            served, identity, pages, limit, cache
        )
        results.general_nll, missed_general = measure_served_nll(
            served, identity, general_paragraphs, limit, cache
        )
        results.choices, missed_choices = measure_served_choices(
            served, identity, inputs.questions, system, cache
        )
        results.unscored = {
            "perplexity_tokens": missed_pages + missed_general,
            "choices": missed_choices,
        }
    started = time.monotonic()
    questions = inputs.questions
    prompts = [q.question for q in questions]
    answers, generated = measure_answers(
        None, identity.hash, prompts, system, params, cache, served
    )
    results.answers = {q.id: a for q, a in zip(questions, answers, strict=True)}
    results.generated = generated
    results.generate_s = round(time.monotonic() - started, 2)
    return results
