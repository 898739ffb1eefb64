"""One Prefect flow per pipeline stage, each run as `python -m flows.NAME` by its dvc.yaml stage.

Importing this package fixes the process environment every stage needs before Prefect or any
ML library is imported: run history in the project's own Prefect home, nothing phoning home,
the Hugging Face hub offline unless a stage's params need it (tasks.core.env). Values already
set by the user win.
"""

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tasks.core.env import set_stage_defaults

os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
# Prefect 3.7 derives the results folder from ~/.prefect, not from PREFECT_HOME, so a failed
# run's pickled exception would land outside the project: name it under the same home.
os.environ.setdefault(
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(Path(os.environ["PREFECT_HOME"]) / "storage")
)
# The ephemeral server needs well over the default 20 s to start on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
set_stage_defaults(os.environ)


def git_revision() -> str:
    """The checkout's short commit, `+changes` when tracked code or params differ from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        # Stages rewrite the tracked reports and dvc.lock as they run: not a code change.
        paths = [".", ":(exclude)reports", ":(exclude)dvc.lock"]
        diff = ["git", "diff", "--quiet", "HEAD", "--", *paths]
        dirty = subprocess.run(diff, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return "no-git"
    return rev + ("+changes" if dirty.returncode else "")


def run_name(stage: str, key: str | None = None) -> Callable[[], str]:
    """A flow run name a person can find in the Prefect history: the stage (with the value of
    parameter `key`, e.g. cpt@short), the git revision and the start time."""

    def name() -> str:
        from prefect.runtime import flow_run

        label = f"{stage}@{flow_run.parameters[key]}" if key else stage
        return f"{label} {git_revision()} {time.strftime('%Y-%m-%d %H:%M:%S')}"

    return name
