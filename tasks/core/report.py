"""Stage reports: reports/<stage>.json for `dvc metrics`, and the same numbers in the Prefect UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core.io import write_json_atomic


def write_report(reports_dir: Path, stage: str, report: dict[str, Any]) -> Path:
    path = reports_dir / f"{stage}.json"
    write_json_atomic(path, report)
    return path


def render_report_table(stage: str, report: dict[str, Any]) -> str:
    """A Markdown table of the report's scalar numbers, nested maps flattened to dotted keys."""
    rows = [f"| {key} | {value} |" for key, value in _flatten(report)]
    return "\n".join([f"### {stage}", "", "| metric | value |", "|---|---|", *rows])


def publish_report(stage: str, report: dict[str, Any]) -> None:
    """Attach the report to the current Prefect flow run so the UI shows it beside the run."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key=f"{stage}-report", markdown=render_report_table(stage, report), description=stage
    )


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
