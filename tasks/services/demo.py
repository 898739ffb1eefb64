"""Run the pipeline on its built-in default: `python -m tasks.services.demo [dvc repro args]`.

Starts what params point at on this machine — the default docs site (the PostgreSQL 15 manual
unpacked by `make site`) on the port of `crawl.start_urls`, and llama.cpp serving SmolLM2 on the
port of each URL of `synth.endpoint.base_url` (and of each URL of `eval.judge.base_url` that is
not one of them) — plus one Prefect server for every stage (instead of a slow ephemeral one per
stage), runs `dvc repro`, and stops them all. Params that point elsewhere (your own site, a vLLM
endpoint) start nothing for that part, and an exported `PREFECT_API_URL` (a team's server) is
used instead of a local one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import flows  # noqa: F401  (sets the Prefect home and offline variables)
from tasks.core.params import SynthParams, load_stage_params
from tasks.core.tokens import find_smollm2_gguf
from tasks.llm.server import start_llama_server
from tasks.services.local import check_prefect_server, run_prefect_server, serve_directory


def local_port(url: str) -> int | None:
    """The port to serve on, when `url` points at this machine."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost"):
        return parts.port or 80
    return None


def start_local_llm(
    stack: ExitStack, synth: SynthParams, log_file: Path, port: int | None, alias: str
) -> None:
    if port is None:
        return
    server = synth.local_server
    gguf = Path(server.gguf) if server.gguf else find_smollm2_gguf()
    url = stack.enter_context(
        start_llama_server(
            gguf,
            port=port,
            alias=alias,
            n_parallel=server.parallel,
            n_ctx=server.parallel * server.ctx_per_slot,
            threads=server.threads,
            log_file=log_file,
        )
    )
    print(f"serving {gguf.name} at {url} (log: {log_file})", flush=True)


def main(argv: list[str]) -> int:
    params = load_stage_params()
    crawl, synth = params.require_crawl(), params.synth
    site = params.paths.cache / "sites/postgresql-15/html"
    llm_log = params.paths.cache / "llama-server.log"
    with ExitStack() as stack:
        port = local_port(crawl.start_urls[0])
        if port is not None:
            url = stack.enter_context(serve_directory(site, port=port))
            print(f"serving {site} at {url}", flush=True)
        # One llama.cpp per local URL of synth.endpoint (several spread synth's calls).
        synth_ports = [local_port(url) for url in synth.endpoint.urls]
        for i, synth_port in enumerate(synth_ports):
            log = llm_log if i == 0 else llm_log.with_name(f"llama-server-{i}.log")
            start_local_llm(stack, synth, log, synth_port, synth.endpoint.model)
        # The eval judge's URLs: the same server where one points there, else one of its own.
        judge = params.eval.judge
        if judge is not None:
            own = [p for p in map(local_port, judge.urls) if p not in synth_ports]
            for i, judge_port in enumerate(own):
                name = "llama-server-judge.log" if i == 0 else f"llama-server-judge-{i}.log"
                start_local_llm(stack, synth, params.paths.cache / name, judge_port, judge.model)
        team_api = os.environ.get("PREFECT_API_URL")
        api = (
            check_prefect_server(team_api)
            if team_api
            else stack.enter_context(run_prefect_server(int(os.environ.get("PREFECT_PORT", 4200))))
        )
        print(f"prefect server at {api} (run history: make ui)", flush=True)
        # Stage commands say `python`: make it this environment's, wherever the caller is.
        path = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
        env = {**os.environ, "PREFECT_API_URL": api, "PATH": path}
        return subprocess.call(["dvc", "repro", *argv], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
