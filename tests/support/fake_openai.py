"""A fake OpenAI-compatible chat server on 127.0.0.1 for tests of anything that calls an LLM.

It speaks the real wire format (`GET /v1/models`, `POST /v1/chat/completions`, and any other
POST path a test gives a reply function for in `routes`), so the real
openai SDK runs against it with its own retries and timeouts. Each chat request takes the next
scripted behaviour from a queue; when the queue is empty, `responder` (if set) decides from the
request body, else the reply is `ok("ok")`. Every request is recorded.

    with serve_fake_openai() as fake:
        fake.script(status(429, retry_after=1), ok("<QUE> q <ANS> a <END>"))
        ...  # point EndpointParams(base_url=fake.base_url, model=fake.model) at it
        assert fake.chat_bodies[-1]["temperature"] == 0.7
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

AUTO: Literal["auto"] = "auto"
Malformation = Literal["not_json", "no_choices", "null_content", "empty_body"]


@dataclass(frozen=True)
class Behaviour:
    """One scripted reply; build it with ok(), status(), sleep(), malformed() or drop()."""

    kind: Literal["ok", "status", "malformed", "drop"]
    text: str = "ok"
    finish_reason: str = "stop"
    usage: tuple[int, int] | Literal["auto"] | None = AUTO
    code: int = 200
    retry_after: float | None = None
    malformation: Malformation = "not_json"
    delay_s: float = 0.0  # waited before answering: timeouts, and holding requests in flight
    model: str | None = None


def ok(
    text: str = "ok",
    finish_reason: str = "stop",
    usage: tuple[int, int] | Literal["auto"] | None = AUTO,
    *,
    delay_s: float = 0.0,
    model: str | None = None,
) -> Behaviour:
    """A 200 chat completion; usage is (prompt_tokens, completion_tokens), "auto" counts words,
    None omits the usage object (as some servers do)."""
    return Behaviour("ok", text, finish_reason, usage, delay_s=delay_s, model=model)


def status(code: int, *, retry_after: float | None = None, delay_s: float = 0.0) -> Behaviour:
    """An error status with an OpenAI-style error body and an optional Retry-After header."""
    return Behaviour("status", code=code, retry_after=retry_after, delay_s=delay_s)


def sleep(seconds: float, then: Behaviour | None = None) -> Behaviour:
    """Wait `seconds` before answering (a client with a shorter timeout gives up first)."""
    return replace(then or ok(), delay_s=seconds)


def malformed(what: Malformation = "not_json") -> Behaviour:
    """A 200 whose body is broken: not JSON, no choices, null message content, or empty."""
    return Behaviour("malformed", malformation=what)


def drop() -> Behaviour:
    """Close the connection without answering (a proxy or server that died mid-request)."""
    return Behaviour("drop")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when it was not JSON
    at: float  # time.monotonic() on arrival


@dataclass
class FakeOpenAI:
    """State shared by the handler threads; tests script it and read what it recorded."""

    base_url: str = ""
    model: str = "fake-model"
    models: list[str] = field(default_factory=lambda: ["fake-model"])
    models_status: int = 200  # another status makes GET /v1/models answer it, with no list
    responder: Callable[[dict[str, Any]], Behaviour] | None = None
    # Other POST paths (e.g. /tokenize, /v1/completions): path -> the JSON reply to a body.
    routes: dict[str, Callable[[dict[str, Any]], Any]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    max_in_flight: int = 0
    _queue: deque[Behaviour] = field(default_factory=deque)
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: _FakeHTTPServer | None = None

    def stop(self) -> None:
        """Shut the server down as a killed one goes: the port refuses new connections and
        every open one is closed, requests in flight unanswered. Safe from a responder."""
        server = self._server
        if server is None:
            return
        self._server = None
        # From a handler thread too: shutdown() waits for serve_forever, which runs elsewhere.
        server.kill()

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next chat requests, one each, in order."""
        with self._lock:
            self._queue.extend(behaviours)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def chat_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every chat request, retries included, in arrival order."""
        return [r.body for r in self.chat_requests]

    @property
    def pending(self) -> int:
        """Scripted behaviours not yet used (a test can assert its script was consumed)."""
        with self._lock:
            return len(self._queue)

    def next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.responder(body) if self.responder else ok()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _count_words(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))


def render_completion(behaviour: Behaviour, body: dict[str, Any], fallback_model: str) -> str:
    """The JSON text of a chat.completion object, as OpenAI and llama.cpp send it."""
    reply: dict[str, Any] = {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": behaviour.model or body.get("model") or fallback_model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": behaviour.text},
                "finish_reason": behaviour.finish_reason,
            }
        ],
    }
    usage = behaviour.usage
    if usage == AUTO:
        usage = (_count_words(body), len(behaviour.text.split()))
    if usage is not None:
        prompt, completion = usage
        reply["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return json.dumps(reply)


def render_malformed(behaviour: Behaviour, body: dict[str, Any]) -> tuple[str, str]:
    """(content type, body text) of a broken 200 reply."""
    if behaviour.malformation == "not_json":
        return "text/html", "<html><body>502 Bad Gateway (proxy)</body></html>"
    if behaviour.malformation == "empty_body":
        return "application/json", ""
    reply = json.loads(render_completion(ok("x"), body, "fake"))
    if behaviour.malformation == "no_choices":
        del reply["choices"]
    else:
        reply["choices"][0]["message"]["content"] = None
    return "application/json", json.dumps(reply)


class _Handler(BaseHTTPRequestHandler):
    server: _FakeHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers; the SDK pools connections

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> Any:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return raw

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections.add(self.connection)
        try:
            super().handle()
        except OSError:
            pass  # the server was killed under this connection
        finally:
            with self.server.lock:
                self.server.connections.discard(self.connection)

    def _send(self, code: int, content_type: str, text: str, headers: dict[str, str]) -> None:
        data = text.encode("utf-8")
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client hung up (timeout tests), or the server was killed meanwhile

    def _record(self, body: Any) -> None:
        fake = self.server.fake
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake.record(RecordedRequest(self.command, self.path, headers, body, time.monotonic()))

    def do_GET(self) -> None:
        self._record(None)
        fake = self.server.fake
        if self.path.rstrip("/") == "/v1/models" and fake.models_status != 200:
            message = _error_json(fake.models_status, "scripted status")
            self._send(fake.models_status, "application/json", message, {})
        elif self.path.rstrip("/") == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in fake.models
            ]
            self._send(200, "application/json", json.dumps({"object": "list", "data": data}), {})
        elif self.path == "/health":
            self._send(200, "application/json", '{"status":"ok"}', {})
        else:
            self._send(404, "application/json", _error_json(404, "not found"), {})

    def do_POST(self) -> None:
        body = self._read_body()
        self._record(body)
        route = self.server.fake.routes.get(self.path.rstrip("/"))
        if route is not None:
            reply = route(body if isinstance(body, dict) else {})
            self._send(200, "application/json", json.dumps(reply), {})
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, "application/json", _error_json(404, "not found"), {})
            return
        fake = self.server.fake
        fake.enter()
        try:
            self._answer(fake, body if isinstance(body, dict) else {})
        finally:
            fake.leave()

    def _answer(self, fake: FakeOpenAI, body: dict[str, Any]) -> None:
        behaviour = fake.next_behaviour(body)
        if behaviour.delay_s:
            time.sleep(behaviour.delay_s)
        if behaviour.kind == "drop" or fake._server is None:
            self.close_connection = True  # the handler closes the socket; nothing is sent
        elif behaviour.kind == "ok":
            self._send(200, "application/json", render_completion(behaviour, body, fake.model), {})
        elif behaviour.kind == "malformed":
            self._send(200, *render_malformed(behaviour, body), {})
        else:
            headers = {}
            if behaviour.retry_after is not None:
                headers["Retry-After"] = f"{behaviour.retry_after:g}"
            # An explicit header would override the SDK's own status-code rules; real servers
            # (vLLM, llama.cpp) do not send it, so neither does the fake.
            message = _error_json(behaviour.code, f"scripted status {behaviour.code}")
            self._send(behaviour.code, "application/json", message, headers)


def _error_json(code: int, message: str) -> str:
    return json.dumps({"error": {"message": message, "type": "fake_error", "code": code}})


class _FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeOpenAI

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()

    def kill(self) -> None:
        """Stop listening, then close every open connection."""
        self.shutdown()
        self.server_close()
        with self.lock:
            open_now = list(self.connections)
        for connection in open_now:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def serve_fake_openai(models: list[str] | None = None) -> Iterator[FakeOpenAI]:
    """Run a fake server on a free 127.0.0.1 port; yields its state with base_url set
    (http://127.0.0.1:PORT/v1, as EndpointParams.base_url expects)."""
    fake = FakeOpenAI(models=models or ["fake-model"])
    fake.model = fake.models[0]
    server = _FakeHTTPServer(("127.0.0.1", 0))
    server.fake = fake
    fake._server = server
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    # A short poll interval makes shutdown (once per test) take ~50 ms instead of 0.5 s.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        if fake._server is not None:
            server.shutdown()
            server.server_close()
