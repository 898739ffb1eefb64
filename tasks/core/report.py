"""Stage reports: reports/<stage>.json for `dvc metrics`, and the same numbers in the Prefect UI."""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tasks.core.io import write_json_atomic

LOG = logging.getLogger(__name__)


def write_report(reports_dir: Path, stage: str, report: dict[str, Any]) -> Path:
    path = reports_dir / f"{stage}.json"
    write_json_atomic(path, report)
    return path


def finish_report(
    reports_dir: Path, stage: str, report: dict[str, Any], started: float
) -> dict[str, Any]:
    """A stage's last step: its wall time (since the monotonic `started`) added, then
    reports/<stage>.json written and its copy published to the Prefect UI."""
    report["wall_s"] = round(time.monotonic() - started, 2)
    write_report(reports_dir, stage, report)
    publish_report(stage, report)
    return report


def render_report_table(stage: str, report: dict[str, Any]) -> str:
    """A Markdown table of the report's scalar numbers, nested maps flattened to dotted keys."""
    rows = [f"| {key} | {value} |" for key, value in _flatten(report)]
    return "\n".join([f"### {stage}", "", "| metric | value |", "|---|---|", *rows])


def publish_report(stage: str, report: dict[str, Any], timeout_s: float = 30.0) -> bool:
    """Attach the report to the current Prefect flow run so the UI shows it beside the run.

    Best effort: the report file is already written, so a Prefect API that is down or slow
    costs a warning, not the stage (its client would otherwise retry for minutes, then fail
    a run whose work is done). Returns whether the artifact was published."""
    from prefect.artifacts import create_markdown_artifact

    def publish() -> None:
        create_markdown_artifact(
            key=render_artifact_key(stage),
            markdown=render_report_table(stage, report),
            description=stage,
        )

    # A daemon thread: a hung call must not keep the finished stage's process alive. It runs in
    # a copy of this context, where Prefect keeps the flow run the artifact belongs to.
    done: Future[None] = Future()
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run_into, publish, done), daemon=True).start()
    try:
        done.result(timeout=timeout_s)
        return True
    except Exception as exc:  # any failure of the UI's copy leaves the stage's outputs as they are
        why = "no answer" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        LOG.warning(
            "%s: report written to reports/, but not published to the Prefect UI (%s)",
            stage,
            str(why)[:300],
        )
        return False


def render_artifact_key(stage: str) -> str:
    """The report's artifact key: Prefect takes only lowercase letters, digits and dashes, and
    report names such as cpt_short have an underscore."""
    return re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-") + "-report"


def run_into(call: Callable[[], None], done: Future[None]) -> None:
    try:
        call()
        done.set_result(None)
    except BaseException as exc:
        done.set_exception(exc)


def _flatten(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key in sorted(obj):
        value = obj[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(_flatten(value, name + "."))
        else:
            items.append((name, value))
    return items
