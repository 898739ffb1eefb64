"""The endpoint's own throughput, measured with plain openai.AsyncOpenAI and nothing of ours in
between: the ceiling the synth stage's tokens/s is compared against in the same run.

    python -m tasks.bench.llm [--threads 1] [--parallel 4] [--ctx 4096] [--requests 16]
                              [--max-tokens 96] [--concurrency 1 4] [--grammar]
                              [--base-url URL --model NAME]   # an already running server

Without --base-url it starts the packaged SmolLM2 on a free 127.0.0.1 port for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import openai

BENCH_PROMPTS = [
    "Explain in two sentences what a virtual environment is for.",
    "Write one question a new user might ask about configuring a web server.",
    "Summarise what an HTTP 429 status code means and how a client should react.",
    "Give a short answer: how do you pin a dependency version in a requirements file?",
    "Describe what a command-line flag is, with one example.",
    "What does it mean for a function to be idempotent? Answer briefly.",
    "Write a question and answer about reading a configuration file in Python.",
    "In one paragraph, explain what a cache is and when to clear it.",
]
QA_GRAMMAR = r"""
root ::= "<QUE> " line " <ANS> " line " <END>"
line ::= [A-Za-z0-9 ,.?'()-]{1,200}
"""


async def fetch_one(
    client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int, grammar: str | None
) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) of one chat completion."""
    reply = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0.7,
        seed=1234,
        extra_body={"grammar": grammar} if grammar else None,
    )
    usage = reply.usage
    return (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)


async def run_prompts(
    base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
    grammar: str | None,
) -> list[tuple[int, int]]:  # fmt: skip
    slots = asyncio.Semaphore(concurrency)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="no-key", max_retries=0, timeout=600)

    async def one(prompt: str) -> tuple[int, int]:
        async with slots:
            return await fetch_one(client, model, prompt, max_tokens, grammar)

    try:
        return await asyncio.gather(*(one(p) for p in prompts))
    finally:
        await client.close()


def run_direct_benchmark(
    base_url: str,
    model: str,
    prompts: list[str],
    concurrency: int,
    max_tokens: int,
    grammar: str | None,
) -> dict[str, Any]:
    """Fire `prompts` at the server, `concurrency` at a time; throughput over the wall time."""
    started = time.perf_counter()
    usages = asyncio.run(run_prompts(base_url, model, prompts, concurrency, max_tokens, grammar))
    wall_s = time.perf_counter() - started
    completion_tokens = sum(c for _, c in usages)
    return {
        "requests": len(prompts),
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "grammar": grammar is not None,
        "wall_s": round(wall_s, 3),
        "prompt_tokens": sum(p for p, _ in usages),
        "completion_tokens": completion_tokens,
        "completion_tokens_per_s": round(completion_tokens / wall_s, 1),
        "requests_per_s": round(len(prompts) / wall_s, 3),
    }


def run_benchmarks(base_url: str, model: str, args: argparse.Namespace) -> None:
    prompts = [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(args.requests)]
    grammar = QA_GRAMMAR if args.grammar else None
    # One request first so model load and first-use costs stay out of the numbers.
    run_direct_benchmark(base_url, model, prompts[:1], 1, 8, grammar)
    for concurrency in args.concurrency:
        result = run_direct_benchmark(
            base_url, model, prompts, concurrency, args.max_tokens, grammar
        )
        print(json.dumps({**result, "threads": args.threads, "parallel": args.parallel}))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base-url", help="benchmark this server instead of starting SmolLM2")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (own server)")
    parser.add_argument("--parallel", type=int, default=4, help="llama.cpp slots (own server)")
    parser.add_argument("--ctx", type=int, default=4096, help="llama.cpp total context")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--grammar", action="store_true", help="constrain to <QUE>/<ANS>/<END>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.base_url:
        run_benchmarks(args.base_url, args.model, args)
        return
    from tasks.core.procs import free_port
    from tasks.core.tokens import find_smollm2_gguf
    from tasks.llm.server import start_llama_server

    with start_llama_server(
        find_smollm2_gguf(),
        port=free_port(),
        alias=args.model,
        n_parallel=args.parallel,
        n_ctx=args.ctx,
        threads=args.threads,
    ) as base_url:
        run_benchmarks(base_url, args.model, args)


if __name__ == "__main__":
    main()
