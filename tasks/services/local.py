"""Local services the demo and the tests run for the duration of a pipeline run: a static
docs site on 127.0.0.1 and one Prefect server shared by every stage."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from tasks.core.procs import start_process, stop_process_group


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_directory(root: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `root` over HTTP in a background thread; yields the base URL."""
    if not root.is_dir():
        raise FileNotFoundError(f"site folder {root} does not exist (run `make site`)")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def wait_until_healthy(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode} before {url}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy at {url} after {timeout_s:.0f} s")


def check_prefect_server(api: str) -> str:
    """A running server's API URL, as given (e.g. a team's, from PREFECT_API_URL); fails naming
    it when it does not answer, since every stage would otherwise fail the same way."""
    try:
        ok = requests.get(f"{api.rstrip('/')}/health", timeout=10).ok
    except requests.RequestException:
        ok = False
    if not ok:
        raise RuntimeError(
            f"PREFECT_API_URL={api} does not answer at /health: start that server, "
            "or unset PREFECT_API_URL to run a local one"
        )
    return api


@contextmanager
def run_prefect_server(port: int = 4200, timeout_s: float = 180) -> Iterator[str]:
    """Start `prefect server start` on 127.0.0.1; yields its API URL and stops it after."""
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = start_process(cmd, env, stdout=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_healthy(f"{api}/health", timeout_s, proc)
        yield api
    finally:
        stop_process_group(proc)
