"""The synth stage's rerun marker (tasks/synth/rerun.py): its round goes up only after a run
with failed pages, and real DVC, given the stage wiring dvc.yaml uses, reruns the stage while
pages keep failing and skips it once none do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.synth.rerun import read_retry_round, write_retry_state

REPO = Path(__file__).resolve().parents[2]
FAILED = [{"url": "https://example.org/backup-dump.html", "error": "EndpointError: HTTP 500"}]


def test_the_round_goes_up_only_when_pages_failed(tmp_path: Path) -> None:
    marker = tmp_path / "reports" / "synth_retry.yaml"
    assert read_retry_round(marker) == 0 and write_retry_state(marker, []) == 0
    assert write_retry_state(marker, FAILED) == 1
    state = yaml.safe_load(marker.read_text())["synth_retry"]
    assert state == {"round": 1, "failed_pages": FAILED}
    assert write_retry_state(marker, FAILED) == 2  # failed again: the next repro retries again
    assert write_retry_state(marker, []) == 2
    assert yaml.safe_load(marker.read_text())["synth_retry"]["failed_pages"] == []
    before = marker.stat().st_mtime_ns
    write_retry_state(marker, [])
    assert marker.stat().st_mtime_ns == before  # an unchanged marker is not rewritten


@pytest.mark.parametrize("text", ["synth_retry: [", "synth_retry:\n  round: -1\n", "other: 1\n"])
def test_a_broken_marker_names_its_file(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "synth_retry.yaml"
    marker.write_text(text)
    with pytest.raises(ValueError, match=str(marker)):
        write_retry_state(marker, [])


# The synth stage's wiring in dvc.yaml, with a stand-in command: it reports the pages that
# failed.json says are failing, as the flow reports the pages its endpoint failed.
DVC_YAML = """\
stages:
  synth:
    vars:
      - reports/synth_retry.yaml
    cmd: "python stage.py  # retry round ${synth_retry.round}"
    deps:
      - stage.py
    outs:
      - reports/synth_retry.yaml:
          cache: false
          persist: true
"""
STAGE = """\
import json, pathlib
from tasks.synth.rerun import write_retry_state
failed = json.loads(pathlib.Path("failed.json").read_text())
write_retry_state(pathlib.Path("reports/synth_retry.yaml"), failed)
print("SYNTH RAN")
"""


def test_dvc_reruns_synth_while_pages_fail_and_skips_it_once_none_do(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(sys.executable).parent / "dvc")

    def repro() -> bool:
        done = subprocess.run(
            [dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return "SYNTH RAN" in done.stdout

    def endpoint_fails(pages: list[dict[str, str]]) -> None:
        (tmp_path / "failed.json").write_text(json.dumps(pages))

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, env=env, check=True)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "stage.py").write_text(STAGE)
    write_retry_state(tmp_path / "reports" / "synth_retry.yaml", [])
    subprocess.run(["git", "add", "reports"], cwd=tmp_path, check=True)  # it is kept in git
    endpoint_fails([])
    assert repro() and not repro()  # a fully successful run leaves nothing to do

    (tmp_path / "stage.py").write_text(STAGE + "# changed\n")  # something makes it run...
    endpoint_fails(FAILED)  # ...while the endpoint fails a page
    assert repro() and repro()  # the page failed again, so the next repro retries again
    endpoint_fails([])
    assert repro()  # the retry succeeds
    assert not repro()
    marker = yaml.safe_load((tmp_path / "reports" / "synth_retry.yaml").read_text())
    assert marker == {"synth_retry": {"round": 2, "failed_pages": []}}
