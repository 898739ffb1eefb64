"""The synth stage's throughput against the endpoint's own, in one run:
`python -m tasks.bench_synth [--markdown data/markdown] [--max-pages 2]`.

Starts llama.cpp as params `synth.local_server` describe, runs the stage with an empty cache
(every call made) while recording each request, and replays exactly those requests (same
messages, grammar and body) with plain `openai.AsyncOpenAI` at the same concurrency, once before
a second stage run and once after it (llama.cpp reuses a slot's prompt prefix, so order matters).
Reports completion tokens/s of the measured stage run, of the direct replays, and the ratio
stage / direct (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import openai

from tasks.io import write_json_atomic
from tasks.llm import ChatClient, Completion, OpenAIChatClient, grammar_body
from tasks.llm_server import start_llama_server
from tasks.params import SynthParams, load_params
from tasks.services import free_port
from tasks.synth import SynthDirs, read_token_counter, run_synth
from tasks.tokens import find_smollm2_gguf

Request = tuple[list[dict[str, str]], str | None, dict[str, Any] | None]


class RecordingClient:
    """Passes calls through and keeps what was asked, for the direct replay."""

    def __init__(self, inner: ChatClient) -> None:
        self.inner = inner
        self.requests: list[Request] = []

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        grammar: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> Completion:
        self.requests.append((messages, grammar, extra_body))
        return await self.inner.complete(messages, grammar=grammar, extra_body=extra_body)


async def run_stage(params: SynthParams, md_dir: Path, work: Path) -> tuple[dict, RecordingClient]:
    count = read_token_counter(params.tokenizer, Path(".cache/tokenizers"))
    dirs = SynthDirs(md_dir, work / "qa", work / "pref", work / "cache")
    async with OpenAIChatClient(params.endpoint, structured=params.structured) as client:
        recorder = RecordingClient(client)
        report = await run_synth(recorder, dirs, params, count)
    return report, recorder


async def replay_direct(params: SynthParams, requests: list[Request]) -> dict[str, Any]:
    endpoint = params.endpoint
    client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key="no-key", timeout=600)
    sampling = OpenAIChatClient(endpoint).sampling_body()
    slots = asyncio.Semaphore(endpoint.concurrency)

    async def one(messages: list[dict[str, str]], grammar: str | None, extra: Any) -> int:
        body = {**sampling, **(grammar_body(params.structured, grammar) if grammar else {})}
        body.update(extra or {})
        async with slots:
            reply = await client.chat.completions.create(
                model=endpoint.model,
                messages=cast(Any, messages),  # plain role/content dicts, as the stage sends
                extra_body=body,
            )
        return reply.usage.completion_tokens if reply.usage else 0

    started = time.perf_counter()
    try:
        tokens = sum(await asyncio.gather(*(one(m, g, e) for m, g, e in requests)))
    finally:
        await client.close()
    wall = time.perf_counter() - started
    return {"completion_tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": tokens / wall}


def run_benchmark(params: SynthParams, md_dir: Path) -> dict[str, Any]:
    server = params.local_server
    port = free_port()
    with (
        start_llama_server(
            Path(server.gguf) if server.gguf else find_smollm2_gguf(),
            port=port,
            alias=params.endpoint.model,
            n_parallel=server.parallel,
            n_ctx=server.parallel * server.ctx_per_slot,
            threads=server.threads,
        ) as base_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        endpoint = params.endpoint.model_copy(update={"base_url": base_url})
        params = params.model_copy(update={"endpoint": endpoint})
        _, recorder = asyncio.run(run_stage(params, md_dir, Path(tmp) / "warm"))
        before = asyncio.run(replay_direct(params, recorder.requests))
        report, _ = asyncio.run(run_stage(params, md_dir, Path(tmp) / "measured"))
        after = asyncio.run(replay_direct(params, recorder.requests))
    direct = (before["tokens_per_s"] + after["tokens_per_s"]) / 2
    stage = report["completion_tokens_per_s"]
    return {
        "pages": report["pages"],
        "calls": report["calls"]["made"],
        "concurrency": params.endpoint.concurrency,
        "llama_threads": server.threads,
        "stage_completion_tokens_per_s": stage,
        "direct_completion_tokens_per_s": round(direct, 2),
        "direct_runs": [before, after],
        "ratio": round(stage / direct, 3) if direct else 0.0,
        "parsed_pairs": report["pairs"],
        "parse_failures": report["parse_failures"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--markdown", type=Path, default=Path("data/markdown"))
    parser.add_argument("--max-pages", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("reports/bench_synth.json"))
    args = parser.parse_args(argv)
    params = load_params("synth", SynthParams)
    params = params.model_copy(update={"max_pages": args.max_pages})
    result = run_benchmark(params, args.markdown)
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
