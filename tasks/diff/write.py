"""The diff's three files: reports/diff/<A>..<B>.md, .html and .json (the JSON holds every list
whole; the other two cap them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tasks.core.io import write_json_atomic, write_text_atomic
from tasks.diff.chart import render_chart
from tasks.diff.render import MAX_ROWS, layout, render_html, render_markdown


def render_stem(a: str, b: str) -> str:
    """A file name from two revision names (a branch like feature/x has a slash)."""
    return f"{re.sub(r'[^A-Za-z0-9._+-]', '_', a)}..{re.sub(r'[^A-Za-z0-9._+-]', '_', b)}"


def write_diff_files(diff: dict[str, Any], out_dir: Path, limit: int = MAX_ROWS) -> dict[str, Path]:
    blocks = layout(diff, limit)
    stem = out_dir / render_stem(diff["a"], diff["b"])
    paths = {kind: stem.with_name(f"{stem.name}.{kind}") for kind in ("md", "html", "json")}
    write_text_atomic(paths["md"], render_markdown(blocks))
    write_text_atomic(paths["html"], render_html(blocks, render_chart(diff)))
    write_json_atomic(paths["json"], diff)
    return paths
