"""What importing `flows` sets up for every stage: the project's own Prefect home for all of
Prefect's files, telemetry off, the Hugging Face hub offline unless the user said otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHOW = (
    "import json, os, flows; from prefect.settings import get_current_settings as s; "
    "print(json.dumps({'storage': str(s().results.local_storage_path), "
    "'env': {k: os.environ.get(k) for k in ('HF_HUB_OFFLINE', 'DO_NOT_TRACK')}}))"
)


def show(tmp_path: Path, **env: str) -> dict:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", SHOW],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def test_prefect_keeps_run_results_under_the_projects_prefect_home(tmp_path: Path) -> None:
    shown = show(tmp_path, PREFECT_HOME=str(tmp_path / "project" / ".prefect"))
    assert shown["storage"] == str(tmp_path / "project" / ".prefect" / "storage")
    assert show(tmp_path)["storage"] == str(tmp_path / ".prefect" / "storage")  # cwd's


def test_stages_start_offline_and_quiet_unless_the_user_set_otherwise(tmp_path: Path) -> None:
    assert show(tmp_path)["env"] == {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    assert show(tmp_path, HF_HUB_OFFLINE="0")["env"]["HF_HUB_OFFLINE"] == "0"
