"""A configurable documentation site on 127.0.0.1 for crawler tests.

Tests add routes (static bodies, scripted failures, delays, redirects, generated trap
pages), then read the request log the server keeps. Every 200 carries an ETag and a
Last-Modified and answers conditional requests with 304, like a real static server.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DEFAULT_LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str | None = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    conditional: bool = True  # send ETag/Last-Modified and answer 304 when they match
    last_modified: str = DEFAULT_LAST_MODIFIED
    omit_length: bool = False  # no Content-Length: the body ends when the connection closes
    drip_s: float = 0.0  # send the body one byte at a time, this many seconds apart
    # Answers served before the normal one, one per request: (status, extra headers).
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)


@dataclass(frozen=True)
class Hit:
    t: float  # time.monotonic() when the request line arrived
    path: str  # path with query
    headers: dict[str, str]


def render_page(title: str, links: list[str] = (), extra_head: str = "", text: str = "") -> bytes:  # type: ignore[assignment]
    anchors = "".join(f'<p><a href="{href}">{href}</a></p>' for href in links)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{extra_head}"
        f"</head><body><h1>{title}</h1><p>{text or title}</p>{anchors}</body></html>"
    ).encode()


class DocSite:
    """Routes by exact path (with query); `generators` answer whole path prefixes."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.generators: dict[str, Callable[[str], Route | None]] = {}
        self.hits: list[Hit] = []
        # (path, request headers with lower-case names) -> a status to refuse the request
        # with, or None to serve it
        self.guard: Callable[[str, dict[str, str]], int | None] | None = None
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, body: bytes | str = b"", **kw: object) -> Route:
        data = body.encode() if isinstance(body, str) else body
        route = Route(body=data, **kw)  # type: ignore[arg-type]
        self.routes[path] = route
        return route

    def page(self, path: str, links: list[str] = (), **kw: object) -> Route:  # type: ignore[assignment]
        return self.add(path, render_page(path, list(links)), **kw)

    def redirect(self, path: str, location: str, status: int = 301) -> Route:
        return self.add(path, status=status, headers={"Location": location}, content_type=None)

    def add_files(self, files: dict[str, bytes]) -> None:
        """Serve {relative path: bytes} (e.g. a site from tasks.services.jssite) at /path."""
        types = {
            ".html": "text/html; charset=utf-8",
            ".js": "text/javascript",
            ".json": "application/json",
        }
        for path, body in files.items():
            suffix = path[path.rfind(".") :]
            self.add("/" + path, body, content_type=types.get(suffix, "application/octet-stream"))

    def remove(self, path: str) -> None:
        self.routes.pop(path, None)

    def requests_for(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def page_hits(self) -> list[Hit]:
        """Requests other than robots.txt and sitemaps."""
        with self._lock:
            return [h for h in self.hits if not h.path.endswith(("robots.txt", "sitemap.xml"))]

    def log(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def resolve(self, path: str) -> Route | None:
        route = self.routes.get(path)
        if route is not None:
            return route
        for prefix, generate in self.generators.items():
            if path.startswith(prefix):
                return generate(path)
        return None

    def start(self) -> DocSite:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_handler(site: DocSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            headers = dict(self.headers.items())
            site.log(Hit(time.monotonic(), self.path, headers))
            lowered = {k.lower(): v for k, v in headers.items()}
            if site.guard is not None and (refused := site.guard(self.path, lowered)):
                return self.answer(refused, b"log in first", {"Content-Type": "text/plain"})
            route = site.resolve(urlsplit(self.path).path + query_of(self.path))
            if route is None:
                return self.answer(404, b"not found", {"Content-Type": "text/plain"})
            if route.delay_s:
                time.sleep(route.delay_s)
            if route.failures:
                status, headers = route.failures.pop(0)
                return self.answer(status, b"try again", headers)
            self.answer_route(route)

        def answer_route(self, route: Route) -> None:
            headers = dict(route.headers)
            if route.content_type:
                headers["Content-Type"] = route.content_type
            if route.status == 200 and route.conditional:
                etag = '"' + hashlib.sha1(route.body).hexdigest()[:16] + '"'
                headers["ETag"], headers["Last-Modified"] = etag, route.last_modified
                if self.is_fresh(etag, route.last_modified):
                    return self.answer(304, b"", {"ETag": etag})
            self.answer(route.status, route.body, headers, route.omit_length, route.drip_s)

        def is_fresh(self, etag: str, last_modified: str) -> bool:
            if_none_match = self.headers.get("If-None-Match")
            if if_none_match is not None:
                return etag in [t.strip() for t in if_none_match.split(",")]
            return self.headers.get("If-Modified-Since") == last_modified

        def answer(
            self,
            status: int,
            body: bytes,
            headers: dict[str, str],
            omit_length: bool = False,
            drip_s: float = 0.0,
        ) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if omit_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            elif status != 304:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 304:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.write_body(body, drip_s)

        def write_body(self, body: bytes, drip_s: float) -> None:
            if not drip_s:
                self.wfile.write(body)
                return
            # Each byte arrives well within any read timeout, so only a deadline on the whole
            # response stops a client from waiting for all of them.
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(drip_s)

    return Handler


def query_of(path: str) -> str:
    query = urlsplit(path).query
    return f"?{query}" if query else ""


def serve_site() -> Iterator[DocSite]:
    site = DocSite().start()
    try:
        yield site
    finally:
        site.stop()
