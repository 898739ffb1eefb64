"""Telling JavaScript shells from pages (tasks/crawl/shells.py)."""

from __future__ import annotations

import pytest

from tasks.crawl.shells import is_js_shell
from tasks.services.jssite import build_js_site, build_routed_site, build_static_twin
from tests.support.fixture_site import FIXTURE_SITE

REACT_SHELL = (
    b"<!doctype html><html><head><title>Docs</title><script src='/main.js'></script></head>"
    b"<body><noscript>You need to enable JavaScript to run this app.</noscript>"
    b'<div id="root"></div></body></html>'
)


@pytest.mark.parametrize(
    "body",
    [
        REACT_SHELL,
        build_js_site(2)["docs/index.html"],
        build_routed_site()[0],  # the routes' text sits inside the script
        b"<html><body><app-root></app-root><script src=a.js></script></body></html>",
    ],
)
def test_shells_are_recognised(body: bytes) -> None:
    assert is_js_shell(body, "utf-8")


def test_pages_are_not_shells() -> None:
    pages = [*build_static_twin(3).values()]
    pages += [p.read_bytes() for p in sorted(FIXTURE_SITE.glob("*.html"))]
    assert pages and not any(is_js_shell(page, "utf-8") for page in pages)
    # Short, with a script, but its text is its own: no empty root, more than a stub.
    short = b"<html><body><h1>Moved</h1><p>This page moved to the new guide: follow the link.</p>"
    short += b"<script></script>"
    assert not is_js_shell(short, "utf-8")
