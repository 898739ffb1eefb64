"""Pages loaded in headless Chromium (crawl.render: browser): the DOM the page's scripts built.

Playwright for Python drives the system's Chromium (Debian's `chromium`, through
`executable_path`: nothing is downloaded at run time). Its async API lets one event loop keep
many pages in flight without a thread each, and `route` lets every request the page makes be
checked before it leaves. This is the one module that imports it.

One browser process serves a whole crawl from an event loop on its own thread; the crawler's
worker threads hand it one page each, so crawl.concurrency pages render at once. A crawl gets
its own browser context (its cookies) with at most crawl.concurrency tabs, each reused for page
after page and replaced after a failure or TAB_RENDERS pages, which bounds the memory.

The page's own HTML is the one the crawler fetched already (a plain GET: robots.txt, redirects,
size cap, conditional request, retries), served to the browser from memory. The browser fetches
only the page's sub-requests, each waiting for its slot under the crawl's rate limit, and only
those the crawler allows (the hosts in scope, robots.txt); every other request is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from typing import TYPE_CHECKING, Any, TypeVar

from tasks.crawl.fetch import RateLimiter
from tasks.crawl.urls import strip_fragment

if TYPE_CHECKING:
    from playwright.async_api import Browser as PlaywrightBrowser
    from playwright.async_api import BrowserContext, Page, Playwright, Request, Route

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Images, media and fonts never change a page's text; not fetching them saves most bytes.
UNNEEDED_TYPES = frozenset({"image", "media", "font"})
TAB_RENDERS = 100  # pages a tab renders before it is replaced, so no page's leaks pile up
T = TypeVar("T")


class BrowserUnavailable(RuntimeError):
    """No Chromium to start, or it would not start."""


def find_chromium() -> str | None:
    """The system Chromium's path (Debian: /usr/bin/chromium), or None."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


def build_launch_args() -> list[str]:
    # Containers give /dev/shm 64 MB, which a few pages' renderers outgrow and then crash.
    args = ["--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox on
    return args


def build_browser_cookies(jar: CookieJar) -> list[dict[str, Any]]:
    """The jar's cookies in the form Playwright's add_cookies takes."""
    return [
        {
            "name": c.name,
            "value": c.value or "",
            "domain": c.domain,
            "path": c.path or "/",
            "expires": float(c.expires) if c.expires else -1,
            "secure": c.secure,
        }
        for c in jar
    ]


@dataclass
class RenderStats:
    """What the browser did in one crawl (only its event loop thread writes here)."""

    pages: int = 0
    subrequests: int = 0  # made, each under the rate limit
    blocked: Counter[str] = field(default_factory=Counter)  # refused, by reason
    unneeded: int = 0  # images, media and fonts not fetched

    def to_report(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "subrequests": self.subrequests,
            "blocked_subrequests": dict(sorted(self.blocked.items())),
            "unneeded_subrequests": self.unneeded,
        }


@dataclass(frozen=True)
class RenderJob:
    """What one crawl asks of the browser; `refuse` says why a request (URL, Playwright's
    resource type) may not be made, or None."""

    user_agent: str
    wait_for: str | None
    timeout_s: float
    max_bytes: int
    refuse: Callable[[str, str], str | None]
    limiter: RateLimiter
    pages: int = 1  # tabs at once: crawl.concurrency
    # Secrets: kept out of repr, so no log line or traceback that prints the job shows them.
    auth_header: str | None = field(default=None, repr=False)
    cookies: list[dict[str, Any]] = field(default_factory=list, repr=False)
    stats: RenderStats = field(default_factory=RenderStats)


@dataclass(frozen=True)
class Rendered:
    """The DOM as HTML (UTF-8), or why there is none: render_timeout, render_error, too_large."""

    html: bytes = b""
    error: str | None = None
    detail: str = ""


class Browser:
    """One Chromium process and the event loop that drives it, shared by crawls' sessions."""

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or find_chromium()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="crawl-browser")
        self._thread.daemon = True
        self._playwright: Playwright | None = None
        self._browser: PlaywrightBrowser | None = None

    def start(self) -> Browser:
        if self.executable is None:
            raise BrowserUnavailable(
                f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)} on PATH); "
                "`make setup` installs Debian's chromium package"
            )
        self._thread.start()
        try:
            self.call(self._launch())
        except Exception as exc:
            self.close()
            raise BrowserUnavailable(f"{self.executable} did not start: {exc}") from exc
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self.call(self._shutdown())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_session(self, job: RenderJob) -> RenderSession:
        """A browser context for one crawl: its cookies, its pages."""
        return self.call(self._open_session(job))

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the browser's loop and wait for it (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _launch(self) -> None:
        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=self.executable, args=build_launch_args(), headless=True
        )

    async def _shutdown(self) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._playwright is not None:
            await self._playwright.stop()

    async def _open_session(self, job: RenderJob) -> RenderSession:
        assert self._browser is not None, "start() the browser first"
        context = await self._browser.new_context(
            user_agent=job.user_agent, service_workers="block"
        )
        if job.cookies:
            await context.add_cookies(job.cookies)  # type: ignore[arg-type]
        return RenderSession(self, job, context)


@dataclass
class Tab:
    """A page kept open between renders (a new one costs a renderer process: 0.3 s and more
    here, against 0.1 s for a navigation), and the shell its next navigation is served."""

    page: Page
    shell: bytes = b""
    content_type: str | None = None
    served: bool = True
    renders: int = 0


class RenderSession:
    """One crawl's context and its pool of at most job.pages tabs; `render` is thread-safe."""

    def __init__(self, browser: Browser, job: RenderJob, context: BrowserContext) -> None:
        self.browser, self.job, self.context = browser, job, context
        self._idle: list[Tab] = []
        self._open = 0
        self._freed: asyncio.Condition | None = None

    def render(self, url: str, shell: bytes, content_type: str | None) -> Rendered:
        """Load `url` from the already-fetched `shell` and return the DOM once it is ready."""
        return self.browser.call(self._render(url, shell, content_type))

    def close(self) -> None:
        self.browser.call(self.context.close())

    async def _take_tab(self) -> Tab:
        self._freed = self._freed or asyncio.Condition()
        async with self._freed:
            await self._freed.wait_for(lambda: bool(self._idle) or self._open < self.job.pages)
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            tab = Tab(await self.context.new_page())
        except Exception:
            await self._give_back(None)
            raise
        await tab.page.route("**/*", build_router(self.job, tab))
        return tab

    async def _give_back(self, tab: Tab | None) -> None:
        """Return a tab to the pool; None (a tab closed for good) frees its place."""
        assert self._freed is not None
        async with self._freed:
            if tab is None:
                self._open -= 1
            else:
                self._idle.append(tab)
            self._freed.notify()

    async def _render(self, url: str, shell: bytes, content_type: str | None) -> Rendered:
        from playwright.async_api import Error, TimeoutError

        tab = await self._take_tab()
        tab.shell, tab.content_type, tab.served = shell, content_type, False
        keep = False
        try:
            html = await load_page(tab.page, url, self.job)
            tab.renders += 1
            keep = tab.renders < TAB_RENDERS
        except TimeoutError as exc:
            return Rendered(error="render_timeout", detail=describe_timeout(self.job, exc))
        except Error as exc:
            return Rendered(error="render_error", detail=str(exc).splitlines()[0])
        finally:
            # A tab that failed may still be busy with its page: a fresh one is cheaper than
            # finding out. So is one that has rendered TAB_RENDERS pages (memory).
            if not keep:
                await close_quietly(tab.page)
            await self._give_back(tab if keep else None)
        self.job.stats.pages += 1
        data = html.encode("utf-8")
        if len(data) > self.job.max_bytes:
            return Rendered(error="too_large", detail=f"rendered DOM of {len(data)} bytes")
        return Rendered(html=data)


async def close_quietly(page: Page) -> None:
    from playwright.async_api import Error

    with contextlib.suppress(Error):
        await page.close()


async def load_page(page: Page, url: str, job: RenderJob) -> str:
    """Navigate, wait until ready (the selector, else network idle), all within the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + job.timeout_s

    def left_ms() -> float:
        return max(1.0, (deadline - loop.time()) * 1000)

    if strip_fragment(page.url) == strip_fragment(url):
        # Only the fragment differs (another hash route): that would not load the page anew.
        await page.goto("about:blank", timeout=left_ms())
    await page.goto(url, wait_until="domcontentloaded", timeout=left_ms())
    if job.wait_for:
        await page.wait_for_selector(job.wait_for, state="attached", timeout=left_ms())
    else:
        await page.wait_for_load_state("networkidle", timeout=left_ms())
    return await page.content()


def describe_timeout(job: RenderJob, exc: Exception) -> str:
    waited = f"within crawl.render_timeout_s ({job.timeout_s:g} s)"
    if job.wait_for:
        return f"no element matched crawl.render_wait_for {job.wait_for!r} {waited}"
    first = str(exc).splitlines()[0]
    return (
        f"the page never went network-idle (500 ms without requests) {waited}: {first}; "
        "set crawl.render_wait_for to a selector of its content"
    )


def build_router(job: RenderJob, tab: Tab) -> Callable[[Route, Request], Coroutine[Any, Any, None]]:
    """The tab's request handler: its navigation gets the fetched HTML, the rest are refused,
    skipped or made under the rate limit (with the auth header, to hosts in scope)."""

    async def route_request(route: Route, request: Request) -> None:
        if not tab.served and request.is_navigation_request():
            tab.served = True
            headers = {"Content-Type": tab.content_type or "text/html"}
            await route.fulfill(status=200, body=tab.shell, headers=headers)
            return
        if request.resource_type in UNNEEDED_TYPES:
            job.stats.unneeded += 1
            await route.abort("blockedbyclient")
            return
        if reason := job.refuse(request.url, request.resource_type):
            job.stats.blocked[reason] += 1
            await route.abort("blockedbyclient")
            return
        if (delay := job.limiter.reserve()) > 0:
            await asyncio.sleep(delay)
        job.stats.subrequests += 1
        extra = {"authorization": job.auth_header} if job.auth_header else {}
        await route.continue_(headers={**request.headers, **extra} if extra else None)

    return route_request
