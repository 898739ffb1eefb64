"""Run the pipeline on its built-in default: `python -m tasks.demo [dvc repro args]`.

Serves the default docs site (the PostgreSQL 15 manual unpacked by `make site`) on the
127.0.0.1 port named in params `crawl.start_urls`, starts one Prefect server for every stage
(instead of a slow ephemeral one per stage), runs `dvc repro`, and stops both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import flows  # noqa: F401  (sets the Prefect home and offline variables)
from tasks.params import CrawlParams, load_stage_params
from tasks.services import run_prefect_server, serve_directory

DEFAULT_SITE = Path(".cache/sites/postgresql-15/html")


def local_site_port(start_urls: list[str]) -> int | None:
    """The port to serve the default site on, when params point at this machine."""
    parts = urlsplit(start_urls[0])
    if parts.hostname in ("127.0.0.1", "localhost"):
        return parts.port or 80
    return None


def main(argv: list[str]) -> int:
    _, crawl = load_stage_params("crawl", CrawlParams)
    with ExitStack() as stack:
        port = local_site_port(crawl.start_urls)
        if port is not None:
            url = stack.enter_context(serve_directory(DEFAULT_SITE, port=port))
            print(f"serving {DEFAULT_SITE} at {url}", flush=True)
        api = stack.enter_context(run_prefect_server(int(os.environ.get("PREFECT_PORT", 4200))))
        print(f"prefect server at {api} (run history: make ui)", flush=True)
        # Stage commands say `python`: make it this environment's, wherever the caller is.
        bin_dir = str(Path(sys.executable).parent)
        path = bin_dir + os.pathsep + os.environ["PATH"]
        env = {**os.environ, "PREFECT_API_URL": api, "PATH": path}
        return subprocess.call(["dvc", "repro", *argv], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
