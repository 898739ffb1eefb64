"""The synth stage's rerun marker, reports/synth_retry.yaml: what makes `dvc repro` run the stage
again while pages remain failed, and leaves it skipped once none do.

DVC cannot depend on a stage's own output, and `always_changed: true` would run the stage on
every `dvc repro` (a fully successful pipeline would never be "up to date"). So dvc.yaml loads
this file as template vars and puts `round` into the synth stage's cmd (as a shell comment).
DVC compares the cmd it resolves at the start of a repro with the one in dvc.lock, which was
resolved at the start of the last run: a run that ends with failed pages writes the next
round, so the next repro sees a new cmd and reruns the stage (which calls only for the failed
pages: the rest replay from the cache); a run without failures leaves the round as it found
it, so the next repro skips the stage. The failed pages are listed beside the round for
people; only the round is in the cmd.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tasks.core.io import write_if_changed

RETRY_FILE = "synth_retry.yaml"
HEADER = (
    "# Written by the synth stage (tasks/synth/rerun.py). dvc.yaml puts `round` into the synth\n"
    "# stage's cmd: it goes up after each run that ended with failed pages, so the next\n"
    "# `dvc repro` reruns synth for them; it stays put once none fail. Do not edit by hand.\n"
)


def read_retry_round(path: Path) -> int:
    """The round in the file; 0 when there is no file yet."""
    if not path.is_file():
        return 0
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
        value = data["synth_retry"]["round"]
    except (yaml.YAMLError, TypeError, KeyError) as exc:
        raise ValueError(
            f"{path}: not a synth retry marker ({type(exc).__name__}: {exc}); restore it with "
            f"`git checkout -- {path}` (DVC needs it to load dvc.yaml)"
        ) from None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{path}: synth_retry.round is {value!r}, expected a whole number >= 0")
    return value


def render_retry_state(round_: int, failed: list[dict[str, str]]) -> str:
    state: dict[str, Any] = {"synth_retry": {"round": round_, "failed_pages": failed}}
    return HEADER + yaml.safe_dump(state, sort_keys=False, allow_unicode=True, width=10_000)


def write_retry_state(path: Path, failed: list[dict[str, str]]) -> int:
    """Record this run's failed pages (url, error); the round goes up only when some failed.
    Returns the round written. Unchanged bytes are not rewritten."""
    round_ = read_retry_round(path) + (1 if failed else 0)
    write_if_changed(path, render_retry_state(round_, failed).encode("utf-8"))
    return round_
