"""The diff as a reader sees it: one list of blocks (headings, paragraphs, tables) rendered to
Markdown for a pull request and to a self-contained HTML page with an inline SVG chart of the
page and token deltas. Long lists are capped here; the JSON keeps them whole."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_ROWS = 25
NUMBER_RE = re.compile(r"[+-]?[\d,.]+(e[+-]?\d+)?%?")


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    total: int | None = None  # rows before the cap, when capped


@dataclass(frozen=True)
class Link:
    text: str
    url: str


@dataclass(frozen=True)
class Chart:
    """Where the HTML puts its chart; Markdown has none."""


Block = Heading | Para | Table | Chart


def show(value: Any) -> str:
    if isinstance(value, Link):
        return f"[{value.text}]({value.url})" if value.url else value.text
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def signed(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return "+" + show(value)
    return show(value)


def capped(headers: Sequence[str], rows: Sequence[Sequence[Any]], limit: int) -> Table:
    return Table(headers, list(rows[:limit]), len(rows) if len(rows) > limit else None)


def summary_rows(summary: dict[str, Any]) -> list[list[Any]]:
    pages, qa, triples = summary["pages"], summary["qa"], summary["triples"]
    return [
        [
            "pages",
            pages["before"],
            pages["after"],
            signed(pages["after"] - pages["before"]),
            f"{pages['added']} added, {pages['removed']} removed, {pages['changed']} changed, "
            f"{pages['moved']} moved, {pages['unchanged']} unchanged",
        ],
        [
            "Q/A pairs",
            qa["before"],
            qa["after"],
            signed(qa["after"] - qa["before"]),
            f"{qa['added']} added, {qa['removed']} removed, {qa['kept']} kept",
        ],
        [
            "preference triples",
            triples["before"],
            triples["after"],
            signed(triples["after"] - triples["before"]),
            f"{triples['added']} added, {triples['removed']} removed, {triples['kept']} kept",
        ],
    ]


def describe_health(health: dict[str, int]) -> str:
    names = {
        "newly_failing": "newly failing",
        "newly_excluded": "newly excluded",
        "newly_readability": "newly on the readability fallback",
        "shrunk": "with shrunk Markdown",
    }
    found = [f"{n} page{'s' if n != 1 else ''} {names[k]}" for k, n in health.items() if n]
    return (
        "Crawl health: "
        + ("; ".join(found) if found else "nothing new failing, excluded or shrunk")
        + "."
    )


def page_link(title: str, url: str) -> Link:
    return Link(title or url, url)


def list_sections(sections: Sequence[tuple[str, Table]]) -> list[Block]:
    """A heading and table per non-empty section; the empty ones named in one line."""
    blocks: list[Block] = []
    for title, table in sections:
        if table.rows:
            blocks += [Heading(f"{title} ({table.total or len(table.rows)})", 3), table]
    empty = [title for title, table in sections if not table.rows]
    if empty:
        blocks.append(Para("None: " + "; ".join(t[0].lower() + t[1:] for t in empty) + "."))
    return blocks


def health_blocks(diff: dict[str, Any], limit: int) -> list[Block]:
    h = diff["health"]
    pct = round(diff["shrink_threshold"] * 100)
    shrunk = [
        [page_link(p["title"], p["url"]), p["words_before"], p["words_after"], f"-{p['lost']:.0%}"]
        for p in h["shrunk"]
    ]
    sections = [
        (
            f"Markdown shrank by more than {pct}%",
            capped(["page", "words before", "words after", "lost"], shrunk, limit),
        )
    ]
    for key, title in (
        ("newly_failing", "Newly failing"),
        ("newly_excluded", "Newly excluded"),
        ("newly_readability", "Newly on the readability fallback"),
    ):
        rows = [[i["url"], i["stage"], i["reason"], (i.get("detail") or "")[:120]] for i in h[key]]
        sections.append((title, capped(["URL", "stage", "reason", "detail"], rows, limit)))
    return [Heading("Crawl health"), *list_sections(sections)]


def page_blocks(diff: dict[str, Any], limit: int) -> list[Block]:
    p = diff["pages"]
    changed = [
        [
            page_link(c["title"], c["url"]),
            f"+{c['words_added']} / -{c['words_removed']}",
            f"{c['change']:.0%}" if c["change"] >= 0.01 else f"{c['change']:.1%}",
            "; ".join(c["headings_added"]),
            "; ".join(c["headings_removed"]),
        ]
        for c in sorted(p["changed"], key=lambda c: -c["change"])
    ]
    headers = ["page", "words", "change", "headings added", "headings removed"]
    sections = [("Changed", capped(headers, changed, limit))]
    for key, title in (("added", "Added"), ("removed", "Removed")):
        rows = [[page_link(r["title"], r["url"]), r["id"]] for r in p[key]]
        sections.append((title, capped(["page", "id"], rows, limit)))
    moved = [[m["title"], m["old_url"], m["new_url"]] for m in p["moved"]]
    sections.append(
        ("Moved: same text, new URL", capped(["page", "old URL", "new URL"], moved, limit))
    )
    return [Heading("Pages"), *list_sections(sections)]


def merge_by_page(diff: dict[str, Any]) -> list[list[Any]]:
    titles = diff["pages"]["titles"]
    merged: dict[str, dict[str, Any]] = {}
    for kind in ("qa", "triples"):
        for rec in diff[kind]["by_page"]:
            row = merged.setdefault(rec["page_id"], {"rec": rec, "qa": (0, 0), "triples": (0, 0)})
            row[kind] = (len(rec["added"]), len(rec["removed"]))
    return [
        [
            page_link(titles.get(pid, pid), r["rec"]["url"]),
            r["rec"]["page"],
            f"+{r['qa'][0]} / -{r['qa'][1]}",
            f"+{r['triples'][0]} / -{r['triples'][1]}",
        ]
        for pid, r in merged.items()
    ]


def source_rows(diff: dict[str, Any]) -> list[list[Any]]:
    buckets = ("new_pages", "changed_pages", "unchanged_pages", "removed_pages")
    rows = []
    for kind, label in (("qa", "Q/A pairs"), ("triples", "triples")):
        s = diff[kind]
        for what in ("added", "removed", "kept"):
            counts = s[f"{what}_by_source"]
            rows.append([label, what, *[counts.get(b, 0) for b in buckets]])
    return rows


def training_blocks(diff: dict[str, Any], limit: int) -> list[Block]:
    blocks: list[Block] = [Heading("Training data")]
    blocks.append(
        Para(
            "Records by the state of their source page. Added on a changed page: regenerated "
            "because the page changed; added on an unchanged page: regenerated for another reason "
            "(prompt, model or params)."
        )
    )
    headers = ["set", "records", "new pages", "changed pages", "unchanged pages", "removed pages"]
    blocks.append(Table(headers, source_rows(diff)))
    blocks.append(Heading("Per page", 3))
    blocks.append(
        capped(["page", "page state", "Q/A pairs", "triples"], merge_by_page(diff), limit)
    )
    blocks.append(Heading("Tokens and rows per set", 3))
    rows = [[t["set"], t["before"], t["after"], signed(t["delta"])] for t in diff["tokens"]]
    blocks.append(Table(["set", "before", "after", "Δ"], rows))
    return blocks


def synth_blocks(diff: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Synth cost")]
    blocks.append(
        Para(
            "As each version's synth run reported it: calls made are what the release cost, "
            "calls reused came from the reply cache."
        )
    )
    rows = [[s["figure"], s["before"], s["after"]] for s in diff["synth"]]
    blocks.append(Table(["", diff["a"], diff["b"]], rows))
    return blocks


def is_timing(key: str) -> bool:
    return key.endswith("_s") or key.endswith("_per_second")


def arrow(row: dict[str, Any]) -> str:
    mark = {"lower": "lower is better", "higher": "higher is better"}.get(row["better"] or "", "")
    verdict = {"better": "▲ better", "worse": "▼ worse"}.get(row["verdict"], "")
    return f"{verdict} ({mark})" if verdict else mark


def settings_blocks(diff: dict[str, Any], limit: int) -> list[Block]:
    blocks: list[Block] = [Heading(f"Params changed ({len(diff['params'])})")]
    rows = [[p["key"], p["before"], p["after"]] for p in diff["params"]]
    blocks.append(capped(["key", diff["a"], diff["b"]], rows, limit))
    metrics = diff["metrics"]
    worse = sum(1 for m in metrics if m["verdict"] == "worse")
    blocks.append(Heading(f"Metrics changed ({len(metrics)}, {worse} worse)"))
    # Worse first, then better, then the unjudged, timings last (they differ on every run):
    # what a reviewer must look at leads.
    order = {"worse": 0, "better": 1, "": 2}
    ranked = sorted(metrics, key=lambda m: (is_timing(m["key"]), order[m["verdict"]]))
    rows = [
        [m["report"], m["key"], m["before"], m["after"], signed(m["delta"]), arrow(m)]
        for m in ranked
    ]
    blocks.append(capped(["report", "metric", diff["a"], diff["b"], "Δ", ""], rows, limit))
    return blocks


def layout(diff: dict[str, Any], limit: int = MAX_ROWS) -> list[Block]:
    title = f"Release diff: {diff['a']} → {diff['b']}"
    return [
        Heading(title, 1),
        Table(["", diff["a"], diff["b"], "Δ", ""], summary_rows(diff["summary"])),
        Para(describe_health(diff["summary"]["health"])),
        Chart(),
        *health_blocks(diff, limit),
        *page_blocks(diff, limit),
        *training_blocks(diff, limit),
        *synth_blocks(diff),
        *settings_blocks(diff, limit),
    ]


def md_cell(value: Any) -> str:
    if isinstance(value, Link):
        text = value.text.replace("[", "\\[").replace("]", "\\]")
        value = Link(text, value.url.replace(" ", "%20"))
    return show(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            out += [block.text, ""]
        elif isinstance(block, Table):
            if not block.rows:
                out += ["None.", ""]
                continue
            out.append("| " + " | ".join(block.headers) + " |")
            out.append("|" + "---|" * len(block.headers))
            out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in block.rows]
            if block.total is not None:
                out += ["", f"… and {block.total - len(block.rows)} more in the JSON report."]
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.3em 0 .8em;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td{max-width:420px;overflow-wrap:anywhere}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
p.none{color:#777;margin:.2em 0}p.more{color:#555;font-style:italic}
.worse{color:#c53030}.better{color:#2f855a}
"""


def html_cell(value: Any) -> str:
    if isinstance(value, Link):
        text = html.escape(value.text)
        return (
            f'<td><a href="{html.escape(value.url)}">{text}</a></td>'
            if value.url
            else f"<td>{text}</td>"
        )
    text = show(value)
    classes = []
    if isinstance(value, int | float) or NUMBER_RE.fullmatch(text):
        classes.append("n")
    if "worse" in text or "better" in text:
        classes.append("worse" if "worse" in text else "better")
    cls = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def render_html_table(table: Table) -> str:
    if not table.rows:
        return '<p class="none">None.</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(html_cell(c) for c in row) + "</tr>" for row in table.rows)
    more = ""
    if table.total is not None:
        more = f'<p class="more">… and {table.total - len(table.rows)} more in the JSON report.</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def render_html(blocks: Sequence[Block], chart_svg: str) -> str:
    out: list[str] = []
    title = ""
    for block in blocks:
        if isinstance(block, Heading):
            title = title or block.text
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            out.append(render_html_table(block))
        else:
            out.append(f"<figure>{chart_svg}</figure>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(out)
        + "\n</body></html>\n"
    )
