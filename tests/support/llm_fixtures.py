"""Pytest fixtures for code that talks to an LLM endpoint; tests/conftest.py imports them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_openai import FakeOpenAI, serve_fake_openai


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fresh fake OpenAI-compatible server on 127.0.0.1 serving model "fake-model"."""
    with serve_fake_openai() as fake:
        yield fake
