"""The synth stage's yield, and the stop when it is too low: a wrong or too small model behind
the endpoint writes mostly what the filters drop, and that is cheaper to notice here than after
training on the few replies that survived.

Yield = kept / asked, over the pages that did not fail (failed pages are judged by
synth.max_failed_fraction): the kept Q/A pairs (per chunk, at most as many as it asked for) plus
the kept preference triples, over the Q/A pairs plus the triples (two per main point) asked for.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class TooLowYield(RuntimeError):
    """The stage kept too little of what it asked for; raised once its outputs are written."""


def summarize_yield(kept: int, asked: int, min_yield: float) -> dict[str, Any]:
    share = round(kept / asked, 4) if asked else None
    return {"kept": kept, "asked": asked, "share": share, "min_yield": min_yield}


def list_top_drops(report: dict[str, Any], n: int = 3) -> list[tuple[str, int]]:
    """The commonest reasons anything was dropped, over every attempt (ties by name)."""
    drops = Counter(report["dropped_by_reason"]) + Counter(report["parse_failures"])
    return sorted(drops.items(), key=lambda item: (-item[1], item[0]))[:n]


def check_yield(report: dict[str, Any], min_yield: float) -> None:
    """Raise TooLowYield when the yield is under min_yield; the flow calls it after writing."""
    share = report["yield"]["share"]
    if share is not None and share < min_yield:
        raise TooLowYield(render_low_yield(report, min_yield))


def render_low_yield(report: dict[str, Any], min_yield: float) -> str:
    kept, asked, share = (report["yield"][k] for k in ("kept", "asked", "share"))
    drops = ", ".join(f"{reason} ({n})" for reason, n in list_top_drops(report)) or "none"
    model = report["endpoint_model"]
    serves = f"serves {model!r}" if model else "did not name its model (no list at GET /models)"
    return (
        f"synth kept {kept} of the {asked} Q/A pairs and triples it asked for, a yield of "
        f"{share:.3f}, under synth.min_yield = {min_yield}. The commonest drops: {drops}. "
        f"The endpoint {serves}. Output this poor usually comes from the wrong model or one "
        "too small for the task: check the model behind synth.endpoint (each drop is in the "
        "exclusions.jsonl files beside the pairs and triples, with its text), or lower "
        "synth.min_yield to accept it. The report and outputs are written."
    )
