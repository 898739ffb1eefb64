"""A small diverging bar chart as inline SVG (no script, no fonts or files fetched): one bar per
delta, growth to the right in green, loss to the left in red. Each panel has its own scale, as
token counts dwarf page counts."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

WIDTH = 720
LABEL_W = 250
VALUE_W = 90
ROW_H = 22
TITLE_H = 26
GROW, SHRINK, NEUTRAL = "#2f855a", "#c53030", "#3b6fb6"
Bar = tuple[str, float, bool]  # label, value, whether its sign means growth or loss


def render_panel(title: str, bars: Sequence[Bar], top: int) -> tuple[list[str], int]:
    """SVG elements of one panel drawn from y=`top`, and the panel's height."""
    half = (WIDTH - LABEL_W - 2 * VALUE_W) / 2
    axis = LABEL_W + VALUE_W + half
    scale = max((abs(v) for _, v, _ in bars), default=0) or 1
    parts = [f'<text x="0" y="{top + 16}" class="t">{escape(title)}</text>']
    y = top + TITLE_H
    for label, value, signed in bars:
        length = abs(value) / scale * half
        x = axis if value >= 0 else axis - length
        color = (GROW if value >= 0 else SHRINK) if signed else NEUTRAL
        text_x = axis + length + 4 if value >= 0 else axis - length - 4
        anchor = "start" if value >= 0 else "end"
        shown = f"{value:+,.0f}" if value else "0"
        parts.append(
            f'<text x="{LABEL_W - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
        )
        if length:
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{length:.1f}" height="{ROW_H - 8}" '
                f'fill="{color}"/>'
            )
        parts.append(f'<text x="{text_x:.1f}" y="{y + 15}" text-anchor="{anchor}">{shown}</text>')
        y += ROW_H
    parts.append(f'<line x1="{axis}" y1="{top + TITLE_H}" x2="{axis}" y2="{y}" class="axis"/>')
    return parts, y - top + 10


def list_count_bars(diff: dict[str, Any]) -> list[Bar]:
    s = diff["summary"]
    return [
        ("pages added", s["pages"]["added"], True),
        ("pages removed", -s["pages"]["removed"], True),
        ("pages changed", s["pages"]["changed"], False),
        ("pages moved", s["pages"]["moved"], False),
        ("Q/A pairs added", s["qa"]["added"], True),
        ("Q/A pairs removed", -s["qa"]["removed"], True),
        ("triples added", s["triples"]["added"], True),
        ("triples removed", -s["triples"]["removed"], True),
    ]


def list_token_bars(diff: dict[str, Any]) -> list[Bar]:
    return [
        (row["set"].removesuffix(" (tokens)"), row["delta"], True)
        for row in diff["tokens"]
        if row["set"].endswith("(tokens)") and row["delta"] is not None
    ]


def render_chart(diff: dict[str, Any]) -> str:
    parts, height = render_panel("Pages and records", list_count_bars(diff), 0)
    tokens = list_token_bars(diff)
    if tokens:
        more, extra = render_panel("Tokens (change)", tokens, height + 8)
        parts, height = parts + more, height + 8 + extra
    style = (
        "<style>text{font:13px sans-serif;fill:#222}.t{font-weight:bold}"
        ".axis{stroke:#888;stroke-width:1}</style>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="page and token deltas">'
        + style
        + "".join(parts)
        + "</svg>"
    )
