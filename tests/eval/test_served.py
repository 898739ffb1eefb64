"""A served model as an eval entry. Against the real llama.cpp server serving the GGUF export
of a tiny model, the choice likelihoods and perplexities match the transformers path on the
same model (same prompts, same tokens, same rule); the echo scoring of vLLM's API and the
answers-only entry against a fake server that speaks their wire format; the report marks
what a server cannot give."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.core.params import EvalParams, ServedModelParams
from tasks.core.procs import free_port
from tasks.core.records import EvalPage
from tasks.eval.cache import ResultCache
from tasks.eval.inputs import EvalInputs, Question
from tasks.eval.measure import LazyModel, measure_choices, measure_nll
from tasks.eval.report import render_table
from tasks.eval.run import describe_models, measure_models, resolve_models, summarize
from tasks.eval.served import (
    EchoLM,
    LlamaCppLM,
    ServedScoringError,
    align_logprobs,
    fetch_served_identity,
    measure_served,
    measure_served_choices,
    measure_served_nll,
)
from tasks.export.gguf import write_gguf
from tasks.llm.client import build_client
from tasks.llm.server import start_llama_server
from tests.support.fake_openai import FakeOpenAI, ok, serve_fake_openai
from tests.support.lf_inputs import write_tiny_model

SYSTEM = "You are an expert PostgreSQL database administrator."
PARAMS = EvalParams(judge=None, max_new_tokens=8, bootstrap_samples=200, batch_size=4)
TRIPLES = [
    ("How do I reclaim space?", "Run VACUUM FULL on the table.", "Restart the server twice."),
    ("Which port does it use?", "5432 by default.", "It uses port 80 for HTTP."),
    ("How is a tablespace made?", "CREATE TABLESPACE fast LOCATION '/ssd';", "Copy the files."),
    ("Can a role own a database?", "Yes, with CREATE DATABASE ... OWNER.", "No, never."),
    ("What does ANALYZE do?", "It collects statistics for the planner.", "It deletes rows."),
    ("Is VACUUM locking?", "Plain VACUUM runs beside reads and writes.", "It stops the cluster."),
]
TEXTS = [
    "PostgreSQL stores each database in its own directory under the data directory.",
    "The autovacuum daemon runs VACUUM and ANALYZE commands automatically. " * 6,
]


SOURCE = EvalPage(id="p", url="http://x/p", title="p", text="VACUUM reclaims storage. " * 4)


def make_questions() -> list[Question]:
    return [
        Question(f"q{i}", "probes", "good", "p", "http://x/p", None, q, right, wrong)
        for i, (q, right, wrong) in enumerate(TRIPLES)
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama with SmolLM2's tokenizer and chat template, and its f16 GGUF export."""
    root = tmp_path_factory.mktemp("served")
    folder = write_tiny_model(root / "model")
    gguf = root / "model.gguf"
    write_gguf(folder, gguf, "f16", "tiny")
    return {"folder": folder, "gguf": gguf}


@pytest.fixture(scope="module")
def llama_cpp(tiny: dict[str, Path]) -> Iterator[ServedModelParams]:
    with start_llama_server(
        tiny["gguf"], port=free_port(), alias="tiny", n_parallel=2, n_ctx=2048, threads=1
    ) as base_url:
        yield ServedModelParams(name="tiny-gguf", base_url=base_url, model="tiny", file=None)


def test_llama_cpp_renders_the_prompt_the_transformers_path_scores(
    tiny: dict[str, Path], llama_cpp: ServedModelParams
) -> None:
    from tasks.eval.lm import encode, render_chat_ids

    lm = LazyModel(tiny["folder"]).get()

    async def served() -> tuple[list[int], list[int]]:
        async with build_client(llama_cpp) as client:
            served = LlamaCppLM(client)
            return await served.render_chat_ids(SYSTEM, TRIPLES[2][0]), await served.encode(
                TRIPLES[2][1]
            )

    prompt, answer = asyncio.run(served())
    assert prompt == render_chat_ids(lm, SYSTEM, TRIPLES[2][0])
    assert answer == encode(lm, TRIPLES[2][1])


def test_served_gguf_choices_match_transformers(
    tiny: dict[str, Path], llama_cpp: ServedModelParams, tmp_path: Path
) -> None:
    questions = make_questions()
    cache = ResultCache(tmp_path / "cache")
    local = measure_choices(LazyModel(tiny["folder"]), "local", questions, SYSTEM, PARAMS, cache)
    identity = asyncio.run(fetch_served_identity(llama_cpp))
    served, unscored = measure_served_choices(llama_cpp, identity, questions, SYSTEM, cache)
    assert unscored == 0 and served.keys() == local.keys()
    for qid, (right, wrong) in local.items():
        # f16 weights: the per-token log-probabilities differ in the third decimal at most
        assert served[qid][0] == pytest.approx(right, abs=0.01)
        assert served[qid][1] == pytest.approx(wrong, abs=0.01)
        assert (served[qid][0] > served[qid][1]) == (right > wrong), qid


def test_served_gguf_perplexity_matches_transformers(
    tiny: dict[str, Path], llama_cpp: ServedModelParams, tmp_path: Path
) -> None:
    cache = ResultCache(tmp_path / "cache")
    local = measure_nll(LazyModel(tiny["folder"]), "local", TEXTS, 4096, cache)
    identity = asyncio.run(fetch_served_identity(llama_cpp))
    assert identity.window == 512  # the model's own context, as the transformers path uses
    served, unscored = measure_served_nll(llama_cpp, identity, TEXTS, 4096, cache)
    assert unscored == 0
    for (nll, tokens), (their_nll, their_tokens) in zip(local, served, strict=True):
        assert their_tokens == tokens
        assert their_nll / tokens == pytest.approx(nll / tokens, abs=0.01)


def test_a_token_llama_cpp_leaves_without_probability_is_counted_not_guessed() -> None:
    probs = [{"id": 5, "logprob": -1.0}, {"id": 9, "logprob": -2.0}]
    assert align_logprobs([5, 7, 9], probs) == [-1.0, None, -2.0]


def test_served_entry_runs_through_the_eval_and_a_new_model_is_measured_anew(
    tiny: dict[str, Path], llama_cpp: ServedModelParams, tmp_path: Path
) -> None:
    questions = make_questions()
    inputs = EvalInputs([], {"p": SOURCE}, questions)
    refs = resolve_models({"base": tiny["folder"]}, ["base", llama_cpp])
    results = measure_models(refs, inputs, "", SYSTEM, PARAMS, tmp_path / "cache")
    base, served = results
    assert served.name == "tiny-gguf" and served.scoring == "llama-cpp"
    assert served.answers.keys() == base.answers.keys()
    metrics, _ = summarize(results, inputs, {}, PARAMS)
    assert metrics["tiny-gguf"]["choice_good.probes"] == metrics["base"]["choice_good.probes"]
    models = describe_models(refs, results)
    assert models["tiny-gguf"]["served"]["model"] == "tiny"
    assert models["tiny-gguf"]["unscored"] == {"perplexity_tokens": 0, "choices": 0}
    # naming the served file changes the key: its results are computed again, not reused
    named = llama_cpp.model_copy(update={"file": tiny["gguf"]})
    first = asyncio.run(fetch_served_identity(llama_cpp))
    assert asyncio.run(fetch_served_identity(named)).hash != first.hash
    assert asyncio.run(fetch_served_identity(llama_cpp)).hash == first.hash


def fake_vllm(fake: FakeOpenAI, prompt_logprobs: bool = True) -> None:
    """vLLM's /tokenize (one token per word, the chat template as role words) and
    /v1/completions with echo: token t scores -t/100."""

    def tokenize(body: dict[str, Any]) -> dict[str, Any]:
        if "messages" in body:
            text = " ".join(f"{m['role']} {m['content']}" for m in body["messages"]) + " assistant"
        else:
            text = body["prompt"]
        return {"tokens": [len(w) for w in text.split()], "count": 0, "max_model_len": 4096}

    def complete(body: dict[str, Any]) -> dict[str, Any]:
        ids = body["prompt"]
        values = [None] + [-t / 100 for t in ids[1:]] + [-0.5]
        logprobs = {"tokens": [], "token_logprobs": values} if prompt_logprobs else None
        return {"choices": [{"text": "x", "index": 0, "logprobs": logprobs}]}

    fake.routes = {"/tokenize": tokenize, "/v1/completions": complete}


def test_echo_scoring_reads_prompt_logprobs_as_vllm_sends_them(tmp_path: Path) -> None:
    with serve_fake_openai(["served"]) as fake:
        fake_vllm(fake)
        entry = ServedModelParams(
            name="vllm", base_url=fake.base_url, model="served", scoring="echo"
        )
        identity = asyncio.run(fetch_served_identity(entry))
        assert identity.window == 2048
        choices, unscored = measure_served_choices(
            entry, identity, make_questions()[:1], SYSTEM, ResultCache(tmp_path)
        )
        sent = [r.body for r in fake.requests if r.path == "/v1/completions"]
    # "Run VACUUM FULL on the table." is words of 3, 6, 4, 2, 3, 6 letters
    assert choices["q0"][0] == pytest.approx(-sum([3, 6, 4, 2, 3, 6]) / 100 / 6)
    assert unscored == 0
    assert all(b["echo"] is True and b["logprobs"] == 1 for b in sent)


def test_echo_without_prompt_logprobs_says_to_change_scoring() -> None:
    with serve_fake_openai(["served"]) as fake:
        fake_vllm(fake, prompt_logprobs=False)
        entry = ServedModelParams(
            name="vllm", base_url=fake.base_url, model="served", scoring="echo"
        )

        async def score() -> object:
            async with build_client(entry) as client:
                return await EchoLM(client).score([1, 2], [3])

        with pytest.raises(ServedScoringError, match="scoring: llama-cpp"):
            asyncio.run(score())


def test_an_answers_only_entry_is_marked_not_available(tmp_path: Path) -> None:
    with serve_fake_openai(["served"]) as fake:
        fake.responder = lambda body: ok("Run VACUUM FULL on the table.")
        entry = ServedModelParams(
            name="ollama", base_url=fake.base_url, model="served", scoring="none"
        )
        inputs = EvalInputs([], {"p": SOURCE}, make_questions())
        cache = ResultCache(tmp_path / "cache")
        result = measure_served(entry, inputs, ["General text."], SYSTEM, PARAMS, cache)
        paths = {r.path for r in fake.requests}
    assert paths == {"/v1/models", "/v1/chat/completions"}  # nothing asked for likelihoods
    assert len(result.answers) == len(TRIPLES)
    metrics, _ = summarize([result], inputs, {}, PARAMS)
    choice = metrics["ollama"]["choice_good.probes"]
    assert choice["value"] is None and "scoring: none" in choice["not_available"]
    assert metrics["ollama"]["ppl_general"]["not_available"]
    assert metrics["ollama"]["literal_recall.probes"]["value"] is not None
    table = render_table(["ollama"], metrics, None)
    assert "n/a" in table and "n/a for ollama" in table


def test_served_entries_come_after_the_pipeline_and_may_not_take_its_names(
    tiny: dict[str, Path],
) -> None:
    entry = ServedModelParams(name="gguf", base_url="http://127.0.0.1:1/v1", model="m")
    available = {"base": tiny["folder"], "orpo": tiny["folder"]}
    refs = resolve_models(available, [entry, "orpo", "base"])
    assert [(r.name, r.served is not None) for r in refs] == [
        ("base", False),
        ("orpo", False),
        ("gguf", True),
    ]
    with pytest.raises(ValueError, match=r"\['orpo'\] are the pipeline's own"):
        resolve_models(available, ["base", entry.model_copy(update={"name": "orpo"})])
    with pytest.raises(ValueError, match="base model"):
        resolve_models(available, [entry])


def test_an_unreachable_server_fails_naming_its_url() -> None:
    entry = ServedModelParams(
        name="gguf", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", retries=0
    )
    with pytest.raises(Exception, match=r"127\.0\.0\.1:\d+/v1/models"):
        asyncio.run(fetch_served_identity(entry))
