"""The demo's use of a team's Prefect server named by PREFECT_API_URL."""

import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.services.local import check_prefect_server


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_running_server_is_used_as_given(api: str) -> None:
    assert check_prefect_server(api) == api
    assert check_prefect_server(api + "/") == api + "/"


def test_a_server_that_does_not_answer_fails_naming_the_url_and_the_fix() -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    with pytest.raises(RuntimeError, match=re.escape(f"PREFECT_API_URL={dead} ") + ".*unset"):
        check_prefect_server(dead)
