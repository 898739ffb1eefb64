"""The synth bench's bookkeeping: the sides it compares, the sections it keeps, and the fake
endpoint it kills (the runs themselves take minutes: `python -m tasks.bench.synth`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tasks.bench.fake_endpoint import start_fake_endpoint
from tasks.bench.synth import ORDERS, SECTIONS, read_sections
from tasks.synth.generate import CallOrder


def test_the_sides_are_the_old_order_and_the_stages_own() -> None:
    assert ORDERS["page_first"] == CallOrder()
    assert ORDERS["page_last"] == CallOrder("page_last", qa_after_points=False, one_at_a_time=False)


def test_sections_not_measured_are_kept_and_an_old_flat_file_is_its_throughput(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench_synth.json"
    assert read_sections(out) == {}
    out.write_text(json.dumps({"ratio": 1.0, "stage_runs": []}))
    assert read_sections(out) == {"throughput": {"ratio": 1.0, "stage_runs": []}}
    out.write_text(json.dumps({"prompt_order": {"sides": {}}}))
    assert read_sections(out) == {"prompt_order": {"sides": {}}}


def test_the_endpoints_section_is_measured_by_default() -> None:
    assert set(SECTIONS) == {"endpoints", "prompt_order", "prompt_order_all_pages", "throughput"}


def test_the_fake_endpoint_serves_the_model_until_killed() -> None:
    with start_fake_endpoint("fake-model", delay_s=0.1) as (base_url, proc):
        models = requests.get(f"{base_url}/models", timeout=5).json()["data"]
        assert [m["id"] for m in models] == ["fake-model"]
        proc.kill()
        proc.wait(timeout=10)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base_url}/models", timeout=5)
