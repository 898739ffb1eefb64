"""HTTP for the crawler: a shared rate limit, one GET with a size cap and a deadline, retries
with backoff."""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, MozillaCookieJar
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from requests.utils import (
    DEFAULT_CA_BUNDLE_PATH,
    default_headers,
    get_auth_from_url,
    get_environ_proxies,
    requote_uri,
    select_proxy,
)
from urllib3.exceptions import (
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout

HTML_TYPES = ("text/html", "application/xhtml+xml")
RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
CHUNK_BYTES = 64 * 1024


class RateLimiter:
    """Spaces request starts at least 1/rate apart across all threads; rate None = no limit."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._last = float("-inf")
        self._lock = threading.Lock()

    def set_rate(self, rate: float | None) -> None:
        """Change the rate; the spacing also holds against requests made before the change."""
        with self._lock:
            self.interval = 1.0 / rate if rate else 0.0

    def reserve(self) -> float:
        """Take the next free slot; the seconds to wait for it (the browser's requests wait
        in its event loop, not in a thread)."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._last + self.interval)
            self._last = slot
        return slot - now

    def wait(self) -> None:
        # Sleep outside the lock: each thread owns its reserved slot already.
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    backoff_s: float
    backoff_max_s: float


@dataclass
class Fetched:
    """The outcome of one GET: a response (status set) or a failure (`error` set)."""

    url: str
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=urllib3.HTTPHeaderDict)
    body: bytes = b""
    error: str | None = None  # a reason key: timeout, deadline, too_large, not_html ...
    detail: str = ""
    attempts: int = 1
    truncated: bool = False  # a partial read (`fetch(keep_partial=True)`): body is the first bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")


class Fetcher:
    """GETs through thread-local urllib3 pools, under one shared rate limit.

    urllib3 is the transport requests itself uses; calling it directly halves the CPU of a
    loopback GET (0.45 instead of 0.95 ms: requests' hooks, cookie jar, header merging and
    re-preparing the URL), and the GIL time the other threads wait for. What requests did for
    us is kept: its default headers (Accept-Encoding: gzip, deflate; bodies are decoded), its
    URL quoting, its CA bundle variables and certifi default, proxies from the environment
    (read once per origin, with user:password from the proxy URL). Dropped: the per-thread
    cookie jar (a thread's cookies never reached the other threads' requests anyway).
    """

    def __init__(
        self,
        *,
        user_agent: str,
        timeout_s: float,
        deadline_s: float,
        max_bytes: int,
        policy: RetryPolicy,
        rate: float | None,
        auth_header: str | None = None,
        cookies: CookieJar | None = None,
    ) -> None:
        self.headers = {**default_headers(), "User-Agent": user_agent}
        if auth_header:
            self.headers["Authorization"] = auth_header
        self.cookies = cookies
        # requests uses one timeout for connecting and for each read; so do we.
        self.timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.max_bytes = max_bytes
        self.policy = policy
        self.limiter = RateLimiter(rate)
        self.bytes_downloaded = 0
        self._local = threading.local()
        self._managers: list[urllib3.PoolManager] = []
        self._proxies: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def set_rate(self, rate: float | None) -> None:
        self.limiter.set_rate(rate)

    def manager_for(self, url: str) -> urllib3.PoolManager:
        """This thread's pool manager for the proxy (or none) that `url` goes through."""
        proxy = select_proxy(url, self.proxies_for(url))
        managers: dict[str | None, urllib3.PoolManager] | None = getattr(
            self._local, "managers", None
        )
        if managers is None:
            managers = self._local.managers = {}
        if proxy not in managers:
            managers[proxy] = build_manager(proxy)
            with self._lock:
                self._managers.append(managers[proxy])
        return managers[proxy]

    def proxies_for(self, url: str) -> dict[str, str]:
        # The proxy variables of os.environ, read once per origin (no_proxy is per host).
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._proxies:
            self._proxies[origin] = get_environ_proxies(url)
        return self._proxies[origin]

    def close(self) -> None:
        with self._lock:
            for manager in self._managers:
                manager.clear()
            self._managers.clear()

    def fetch(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        html_only: bool = False,
        *,
        max_bytes: int | None = None,
        keep_partial: bool = False,
    ) -> Fetched:
        """GET with retries on timeouts, deadlines, connection errors, 429 and 5xx; never follows
        redirects. A body over `max_bytes` (default: the page cap) is too_large, or with
        `keep_partial` cut at the cap and flagged `truncated`."""
        read = Read(max_bytes or self.max_bytes, keep_partial, html_only)
        result = Fetched(url)
        for attempt in range(self.policy.retries + 1):
            self.limiter.wait()
            result = self.fetch_once(url, headers or {}, read)
            result.attempts = attempt + 1
            if not is_retryable(result) or attempt == self.policy.retries:
                break
            time.sleep(compute_backoff(attempt, self.policy, result.headers.get("Retry-After")))
        return result

    def fetch_once(self, url: str, headers: dict[str, str], read: Read) -> Fetched:
        # Measured from here, not from the rate limiter's slot: waiting our turn is not slowness.
        deadline = time.monotonic() + self.deadline_s
        try:
            response = self.manager_for(url).urlopen(
                "GET",
                requote_uri(url),
                headers={**self.headers, **self.build_cookie_header(url), **headers},
                timeout=self.timeout,
                redirect=False,
                retries=False,
                preload_content=False,
            )
            try:
                return self.read_response(url, response, read, deadline)
            finally:
                release(response)
        except (HTTPError, OSError, ValueError) as exc:
            if time.monotonic() >= deadline:
                return Fetched(url, error="deadline", detail=self.describe_deadline(exc))
            return Fetched(url, error=classify_error(exc), detail=str(exc))

    def describe_deadline(self, exc: Exception) -> str:
        return (
            f"no complete response within crawl.request_deadline_s ({self.deadline_s} s), "
            f"though each read came within crawl.timeout_s ({self.timeout_s} s): {exc}"
        )

    def read_response(
        self, url: str, response: urllib3.BaseHTTPResponse, read: Read, deadline: float
    ) -> Fetched:
        result = Fetched(url, status=response.status, headers=response.headers)
        if time.monotonic() >= deadline:
            # The headers came too slowly; they are only checked once they are all in.
            raise DeadlineExceeded("the response headers arrived after the deadline")
        if response.status != 200:
            # Drain small bodies (redirects, 304, errors) so the connection is reused.
            read_capped(response, CHUNK_BYTES, deadline, self.timeout_s)
            return result
        if read.html_only and not is_html_type(result.content_type):
            result.error, result.detail = "not_html", str(result.content_type)
            return result
        declared = parse_content_length(response.headers)
        if declared is not None and declared > read.max_bytes and not read.keep_partial:
            result.error, result.detail = "too_large", f"Content-Length {declared}"
            return result
        body, complete = read_capped(response, read.max_bytes, deadline, self.timeout_s)
        self.count_bytes(len(body))
        if complete:
            result.body = body
        elif read.keep_partial:
            result.body, result.truncated = body[: read.max_bytes], True
        else:
            result.error, result.detail = "too_large", f"more than {read.max_bytes} bytes"
        return result

    def build_cookie_header(self, url: str) -> dict[str, str]:
        """The jar's cookies for this URL (domain, path, secure and expiry rules applied)."""
        if self.cookies is None:
            return {}
        request = urllib.request.Request(url)
        self.cookies.add_cookie_header(request)
        cookie = request.get_header("Cookie")
        return {"Cookie": cookie} if cookie else {}

    def count_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_downloaded += n


@dataclass(frozen=True)
class Read:
    """How much of a body to read, and what to do with more."""

    max_bytes: int
    keep_partial: bool = False
    html_only: bool = False


class DeadlineExceeded(HTTPError):
    """The request ran past crawl.request_deadline_s (raised between reads)."""


def read_cookie_jar(path: Path) -> MozillaCookieJar:
    """A Netscape cookies.txt (the format browsers' cookie exporters and curl write), with
    session cookies kept: exporters write them with expiry 0, which would read as expired."""
    jar = MozillaCookieJar()
    jar.load(str(path), ignore_discard=True, ignore_expires=True)
    for cookie in jar:
        if cookie.expires == 0:
            cookie.expires, cookie.discard = None, True
    jar.clear_expired_cookies()
    return jar


def build_manager(proxy: str | None) -> urllib3.PoolManager:
    """Pools of at most two connections per host, no retries or redirects of urllib3's own,
    certificates checked against the bundle requests would use."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    bundle = bundle or DEFAULT_CA_BUNDLE_PATH
    where = "ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"
    options: dict[str, Any] = {
        "maxsize": 2,
        "retries": False,
        "cert_reqs": "CERT_REQUIRED",
        where: bundle,
    }
    if proxy is None:
        return urllib3.PoolManager(**options)
    if proxy.lower().startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as in requests

        return SOCKSProxyManager(proxy, **options)
    username, password = get_auth_from_url(proxy)
    auth = urllib3.make_headers(proxy_basic_auth=f"{username}:{password}") if username else {}
    return urllib3.ProxyManager(proxy, proxy_headers=auth, **options)


def release(response: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back; one with an unread body (too large, not HTML) is closed
    first, since the next request on it would read that body as its response."""
    if not response.closed:
        response.close()
    response.release_conn()


def classify_error(exc: Exception) -> str:
    """The reason key of a transport failure, the way requests' exception classes mapped it."""
    if isinstance(exc, Urllib3Timeout) and not isinstance(exc, NewConnectionError):
        return "timeout"
    if isinstance(exc, (NewConnectionError, ProtocolError, ProxyError, SSLError, OSError)):
        return "connection_error"
    return "request_error"


def read_capped(
    response: urllib3.BaseHTTPResponse, max_bytes: int, deadline: float, timeout_s: float
) -> tuple[bytes, bool]:
    """The body, stopping once it passes max_bytes; (bytes, whether it was read completely).

    read1 returns whatever one read of the socket brings, where read() and stream() wait for a
    whole chunk: a server dripping a byte at a time would hold them until the body ends, and
    the deadline could only be checked after that. Gzip bodies are inflated a chunk at a time
    (urllib3 >= 2.6 caps what one read may inflate), so a small bomb stays small in memory."""
    chunks: list[bytes] = []
    size = 0
    while True:
        wait_for_read(response, deadline, timeout_s)
        chunk = response.read1(CHUNK_BYTES, decode_content=True)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks), False


def wait_for_read(response: urllib3.BaseHTTPResponse, deadline: float, timeout_s: float) -> None:
    """Shorten the next read's wait to what is left before the deadline. Only near the deadline:
    the socket already waits timeout_s per read, so most reads cost no system call here."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"the deadline passed during the body ({left:.3f} s left)")
    if left < timeout_s:
        sock = getattr(response.connection, "sock", None)
        if sock is not None:
            sock.settimeout(left)  # urllib3 resets it before the connection's next request


def parse_content_length(headers: Mapping[str, str]) -> int | None:
    try:
        return int(headers.get("Content-Length", ""))
    except ValueError:
        return None


def is_html_type(content_type: str | None) -> bool:
    """Missing Content-Type counts as HTML: the URL already passed the extension check."""
    if not content_type:
        return True
    return content_type.split(";", 1)[0].strip().lower() in HTML_TYPES


def is_retryable(result: Fetched) -> bool:
    if result.error in ("timeout", "deadline", "connection_error"):
        return True
    return result.status in RETRY_STATUSES


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def compute_backoff(attempt: int, policy: RetryPolicy, retry_after: str | None) -> float:
    """Exponential backoff with jitter, at least Retry-After, never above backoff_max_s."""
    base = policy.backoff_s * (2**attempt)
    delay = base * random.uniform(0.5, 1.0)
    wanted = parse_retry_after(retry_after)
    if wanted is not None:
        delay = max(delay, wanted)
    return min(delay, policy.backoff_max_s)
