"""The synth bench's bookkeeping: the sides it compares and the sections it keeps (the runs
themselves need a real server and minutes: `python -m tasks.bench.synth`)."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.bench.synth import ORDERS, read_sections
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
