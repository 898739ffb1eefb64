"""HTTP for the crawler: a shared rate limit, one GET with a size cap, retries with backoff."""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies

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

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._last + self.interval)
            self._last = slot
        # Sleep outside the lock: each thread owns its reserved slot already.
        if slot > now:
            time.sleep(slot - now)


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
    headers: CaseInsensitiveDict[str] = field(default_factory=CaseInsensitiveDict)
    body: bytes = b""
    error: str | None = None  # a reason key: timeout, connection_error, too_large, not_html ...
    detail: str = ""
    attempts: int = 1

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")


class Fetcher:
    """GETs through a thread-local requests.Session, under one shared rate limit."""

    def __init__(
        self,
        *,
        user_agent: str,
        timeout_s: float,
        max_bytes: int,
        policy: RetryPolicy,
        rate: float | None,
        auth_header: str | None = None,
    ) -> None:
        self.headers = {"User-Agent": user_agent}
        if auth_header:
            self.headers["Authorization"] = auth_header
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.policy = policy
        self.limiter = RateLimiter(rate)
        self.bytes_downloaded = 0
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._proxies: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def set_rate(self, rate: float | None) -> None:
        self.limiter.set_rate(rate)

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # requests re-reads the proxy and CA variables of os.environ on every request
            # (about half of its per-request CPU); read them once per origin instead.
            session.trust_env = False
            session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get(
                "CURL_CA_BUNDLE", True
            )
            session.headers.update(self.headers)
            session.mount("http://", HTTPAdapter(pool_maxsize=2, max_retries=0))
            session.mount("https://", HTTPAdapter(pool_maxsize=2, max_retries=0))
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def proxies_for(self, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._proxies:
            self._proxies[origin] = get_environ_proxies(url)
        return self._proxies[origin]

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def fetch(
        self, url: str, headers: dict[str, str] | None = None, html_only: bool = False
    ) -> Fetched:
        """GET with retries on timeouts, connection errors, 429 and 5xx; never follows redirects."""
        result = Fetched(url)
        for attempt in range(self.policy.retries + 1):
            self.limiter.wait()
            result = self.fetch_once(url, headers or {}, html_only)
            result.attempts = attempt + 1
            if not is_retryable(result) or attempt == self.policy.retries:
                break
            time.sleep(compute_backoff(attempt, self.policy, result.headers.get("Retry-After")))
        return result

    def fetch_once(self, url: str, headers: dict[str, str], html_only: bool) -> Fetched:
        try:
            with self.session().get(
                url,
                headers=headers,
                timeout=self.timeout_s,
                allow_redirects=False,
                stream=True,
                proxies=self.proxies_for(url),
            ) as response:
                return self.read_response(url, response, html_only)
        except requests.Timeout as exc:
            return Fetched(url, error="timeout", detail=str(exc))
        except requests.ConnectionError as exc:
            return Fetched(url, error="connection_error", detail=str(exc))
        except requests.RequestException as exc:
            return Fetched(url, error="request_error", detail=str(exc))

    def read_response(self, url: str, response: requests.Response, html_only: bool) -> Fetched:
        result = Fetched(url, status=response.status_code, headers=response.headers)
        if response.status_code != 200:
            # Drain small bodies (redirects, 304, errors) so the connection is reused.
            read_capped(response, CHUNK_BYTES)
            return result
        if html_only and not is_html_type(result.content_type):
            result.error, result.detail = "not_html", str(result.content_type)
            return result
        declared = parse_content_length(response.headers)
        if declared is not None and declared > self.max_bytes:
            result.error, result.detail = "too_large", f"Content-Length {declared}"
            return result
        body, complete = read_capped(response, self.max_bytes)
        self.count_bytes(len(body))
        if not complete:
            result.error, result.detail = "too_large", f"more than {self.max_bytes} bytes"
            return result
        result.body = body
        return result

    def count_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_downloaded += n


def read_capped(response: requests.Response, max_bytes: int) -> tuple[bytes, bool]:
    """The body, stopping once it passes max_bytes; (bytes, whether it was read completely)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(CHUNK_BYTES):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks), False
    return b"".join(chunks), True


def parse_content_length(headers: Any) -> int | None:
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
    if result.error in ("timeout", "connection_error"):
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
