"""The default local LLM endpoint: llama.cpp's OpenAI-compatible HTTP server (embedded in the
`xllamacpp` package) serving a GGUF model, SmolLM2-135M-Instruct unless told otherwise.

It runs in a subprocess so llama.cpp's threads, logs and memory stay out of the pipeline's
process and it can be stopped cleanly. The context (`n_ctx`) is split evenly across the
`n_parallel` slots: each request gets n_ctx / n_parallel tokens for prompt plus completion.

    python -m tasks.llm.server --port 8766 [--gguf PATH] [--alias NAME] [--parallel 4]
                               [--ctx 8192] [--threads 2] [--host 127.0.0.1]

(--model PATH is the same as --gguf PATH.)
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

from tasks.core.procs import start_process, stop_process_group

DEFAULT_ALIAS = "SmolLM2-135M-Instruct"


def serve_llama(
    gguf: Path, *, host: str, port: int, alias: str, n_parallel: int, n_ctx: int, threads: int
) -> object:
    """Start llama.cpp's server in this process; it serves from its own threads for as long
    as the returned object lives."""
    import xllamacpp  # imported here: only the server subprocess needs the native library

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.model_alias = {alias}
    params.hostnames = [host]
    params.port = port
    params.n_parallel = n_parallel
    params.n_ctx = n_ctx
    params.cont_batching = True
    # Both thread pools: generation and prompt processing. More threads than free cores
    # makes llama.cpp much slower, not faster.
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    set_prefix_reuse(params)
    return xllamacpp.Server(params)


def set_prefix_reuse(params: Any) -> None:
    """How the server reuses the prompt prefix that a chunk's calls share (the system line and
    the page; the synth templates put them first). llama.cpp's own defaults, spelled out
    because the synth stage's cost depends on them.

    cache_prompt: a slot keeps the prompt it processed, so the next request that starts with
    it skips its prefill. slot_prompt_similarity: a request goes to the idle slot whose kept
    prompt shares the longest prefix with it, when that prefix is over 10% of the request
    (a chunk's follow-up shares ~80%; two different chunks share only the system line, ~3%,
    and then the least recently used slot is taken). cache_ram_mib: llama.cpp's host-memory
    cache for prompts pushed out of a slot; the server log of this xllamacpp build shows no
    prompt-cache updates, so the synth stage does not count on it and sends a chunk's calls
    one after another instead, each finding the chunk in the slot its previous call used.
    n_cache_reuse stays 0: it reuses KV chunks
    found after the common prefix by shifting their positions, which makes a reply depend on
    what happened to be cached (the shifted entries were computed after other text); the
    synth prompts need only the plain prefix."""
    params.cache_prompt = True
    params.slot_prompt_similarity = 0.1
    params.cache_ram_mib = 8192
    params.n_cache_reuse = 0


def run_server_forever(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT, then return so the server is torn down."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = serve_llama(
        args.gguf,
        host=args.host,
        port=args.port,
        alias=args.alias,
        n_parallel=args.parallel,
        n_ctx=args.ctx,
        threads=args.threads,
    )
    print(f"serving {args.alias} at http://{args.host}:{args.port}/v1", flush=True)
    while not stop.wait(1.0):
        pass
    del server


def read_tail(log: IO[bytes], max_bytes: int = 3000) -> str:
    log.flush()
    log.seek(0, 2)
    log.seek(max(0, log.tell() - max_bytes))
    return log.read().decode("utf-8", "replace")


def fetch_served_models(base_url: str) -> list[str]:
    """Model ids at GET {base_url}/models; empty while the server is not up yet."""
    try:
        reply = httpx.get(f"{base_url}/models", timeout=2.0)
        if reply.status_code != 200:
            return []
        return [str(m.get("id")) for m in reply.json().get("data", [])]
    except (httpx.HTTPError, ValueError):
        return []


def wait_until_serving(
    base_url: str, alias: str, proc: subprocess.Popen[bytes], log: IO[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"llama.cpp server for {base_url} exited with code {proc.returncode} before "
                f"serving; its output ends:\n{read_tail(log)}"
            )
        if alias in fetch_served_models(base_url):
            return
        time.sleep(0.2)
    raise TimeoutError(
        f"llama.cpp server did not serve {alias!r} at {base_url}/models within {timeout_s:.0f} s; "
        f"its output ends:\n{read_tail(log)}"
    )


def server_command(
    gguf: Path, host: str, port: int, alias: str, n_parallel: int, n_ctx: int, threads: int
) -> list[str]:
    return [
        *(sys.executable, "-m", "tasks.llm.server", "--gguf", str(gguf), "--host", host),
        *("--port", str(port), "--alias", alias, "--parallel", str(n_parallel)),
        *("--ctx", str(n_ctx), "--threads", str(threads)),
    ]


def open_log(log_file: Path | None) -> IO[bytes]:
    if log_file is None:
        return tempfile.TemporaryFile(prefix="llama-server-")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    return log_file.open("a+b")


@contextmanager
def start_llama_server(
    gguf: Path,
    *,
    host: str = "127.0.0.1",
    port: int,
    alias: str,
    n_parallel: int,
    n_ctx: int,
    threads: int,
    ready_timeout_s: float = 60.0,
    log_file: Path | None = None,
) -> Iterator[str]:
    """Run the server in a subprocess until the block ends; yields http://host:port/v1 once
    GET /v1/models lists `alias`. Its output goes to a temporary file (a pipe nobody reads
    would fill up and stall llama.cpp) or appended to `log_file`; its tail is in the error if
    the server fails to start."""
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF model {gguf} does not exist")
    base_url = f"http://{host}:{port}/v1"
    cmd = server_command(gguf, host, port, alias, n_parallel, n_ctx, threads)
    with open_log(log_file) as log:
        proc = start_process(cmd, stdout=log)
        try:
            wait_until_serving(base_url, alias, proc, log, ready_timeout_s)
            yield base_url
        finally:
            stop_process_group(proc, grace_s=10)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--gguf", "--model", type=Path, default=None, help="default: packaged SmolLM2"
    )
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help="model name clients ask for")
    parser.add_argument("--parallel", type=int, default=4, help="slots (concurrent requests)")
    parser.add_argument("--ctx", type=int, default=8192, help="total context, split over slots")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.gguf is None:
        from tasks.core.tokens import find_smollm2_gguf

        args.gguf = find_smollm2_gguf()
    return args


def main(argv: list[str] | None = None) -> None:
    run_server_forever(parse_args(argv))


if __name__ == "__main__":
    main()
