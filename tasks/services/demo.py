"""Run the pipeline on its built-in default: `python -m tasks.services.demo [dvc repro args]`.

Starts what params point at on this machine — the default docs site (the PostgreSQL 15 manual
unpacked by `make site`) on the port of `crawl.start_urls`, and llama.cpp serving SmolLM2 on the
port of each URL of `synth.endpoint.base_url` (and of each URL of the judges'
`synth.faithfulness_endpoint.base_url`, while synth.faithfulness_check is on, and
`eval.judge.base_url` that is not one of them) — plus one Prefect server for every stage
(instead of a slow ephemeral one per stage), runs `dvc repro`, and stops them all. Params that
point elsewhere (your own site, a vLLM endpoint) start nothing for that part, and an exported
`PREFECT_API_URL` (a team's server) is used instead of a local one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import flows  # noqa: F401  (sets the Prefect home and offline variables)
from tasks.core.params import EndpointParams, Params, SynthParams, load_stage_params
from tasks.core.tokens import find_smollm2_gguf
from tasks.llm.server import start_llama_server
from tasks.services.local import check_prefect_server, run_prefect_server, serve_directory


def local_port(url: str) -> int | None:
    """The port to serve on, when `url` points at this machine."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost"):
        return parts.port or 80
    return None


def plan_local_llms(params: Params) -> list[tuple[int, str, str]]:
    """(port, model alias, log file name) of each llama.cpp to start: one per URL on this
    machine of synth.endpoint (several spread synth's calls), then of the endpoints that judge
    (synth.faithfulness_endpoint while the check is on, eval.judge) on a port none before it
    serves: a judge pointed at another's port is answered by that server."""
    synth = params.synth
    judges: list[tuple[str, EndpointParams | None]] = [
        ("faithfulness", synth.faithfulness_endpoint if synth.faithfulness_check else None),
        ("judge", params.eval.judge),
    ]
    planned: list[tuple[int, str, str]] = []
    for name, endpoint in [("", synth.endpoint), *judges]:
        if endpoint is None:
            continue
        ports = [local_port(url) for url in endpoint.urls]
        own = [p for p in ports if p is not None and p not in {q for q, _, _ in planned}]
        for i, port in enumerate(own):
            stem = "-".join(filter(None, ["llama-server", name, str(i) if i else ""]))
            planned.append((port, endpoint.model, f"{stem}.log"))
    return planned


def start_local_llm(
    stack: ExitStack, synth: SynthParams, log_file: Path, port: int, alias: str
) -> None:
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
    with ExitStack() as stack:
        port = local_port(crawl.start_urls[0])
        if port is not None:
            url = stack.enter_context(serve_directory(site, port=port))
            print(f"serving {site} at {url}", flush=True)
        for llm_port, alias, log_name in plan_local_llms(params):
            start_local_llm(stack, synth, params.paths.cache / log_name, llm_port, alias)
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
