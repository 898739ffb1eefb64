"""Where two tokenizations of one page first part, and the page being too short for the
positions asked names the params key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.agreement import SAMPLE_PAGE, read_sample_ids, summarize_tokenization
from tests.support.tiny_models import write_tiny_model_folder


def test_identical_tokenizations() -> None:
    assert summarize_tokenization([1, 2, 3], [1, 2, 3]) == {
        "tokens": 3,
        "llama_cpp_tokens": 3,
        "identical": True,
    }


@pytest.mark.parametrize(("theirs", "position"), [([1, 9, 3], 1), ([1, 2], 2), ([1, 2, 3, 4], 3)])
def test_the_first_difference_is_located(theirs: list[int], position: int) -> None:
    summary = summarize_tokenization([1, 2, 3], theirs)
    assert not summary["identical"]
    assert summary["first_difference"]["position"] == position


def test_too_many_positions_name_the_key(tmp_path: Path) -> None:
    folder = write_tiny_model_folder(tmp_path, "llama")
    with pytest.raises(ValueError, match=r"^export\.verify_tokens: 1000000 exceeds the \d+ tokens"):
        read_sample_ids(folder, SAMPLE_PAGE, 1_000_000, "export.verify_tokens")
