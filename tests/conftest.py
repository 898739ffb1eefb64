"""Shared pytest fixtures and options."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.docsite import DocSite, serve_site

pytest_plugins = ["tests.support.llm_fixtures", "tests.support.cluster"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`browser` tests run by default and skip, saying why, only where no Chromium exists."""
    from tasks.crawl.render import find_chromium

    if find_chromium() is not None:
        return
    skip = pytest.mark.skip(reason="no Chromium on PATH (`make setup` installs Debian's chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite tests/golden/<case>.md from the converter instead of failing on a diff",
    )


@pytest.fixture
def docsite() -> Iterator[DocSite]:
    """A fresh local documentation site on 127.0.0.1 for crawler tests."""
    yield from serve_site()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server (a temporary database) for every flow test of the session: a
    start costs 15 s or more on a busy 2-core machine."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
