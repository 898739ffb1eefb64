"""Stage reports: the file is the record; the Prefect UI's copy is best effort."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from tasks.core.report import publish_report, render_report_table, write_report


def test_the_report_file_holds_every_number_and_the_table_flattens_them(tmp_path: Path) -> None:
    report = {"pages": 3, "calls": {"made": 2, "reused": 1}}
    path = write_report(tmp_path, "synth", report)
    assert json.loads(path.read_text()) == report and path.read_text().endswith("}\n")
    table = render_report_table("synth", report)
    assert "| calls.made | 2 |" in table and "| pages | 3 |" in table


def test_a_dead_prefect_api_costs_a_warning_not_the_stage(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (
        "import sys; from tasks.core.report import publish_report; "
        "ok = publish_report('crawl', {'pages': 1}, timeout_s=20); print('published', ok)"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "published False" in proc.stdout
    assert "not published to the Prefect UI" in proc.stderr
    assert time.monotonic() - started < 90


def test_the_report_is_attached_to_the_stages_flow_run(prefect_harness: None) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    @flow(name="report-test")
    def stage() -> bool:
        return publish_report("report_test", {"pages": 2})  # as cpt_short: an underscore

    state = stage(return_state=True)
    assert state.result() is True
    where = ArtifactFilter(key=ArtifactFilterKey(any_=["report-test-report"]))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=where)
    assert [a.flow_run_id for a in artifacts] == [state.state_details.flow_run_id]
    assert "| pages | 2 |" in str(artifacts[0].data)
