"""Measure the markdown stage on a local copy of a documentation site.

Every page is converted on the generic path (no content selector unless --selector), with the
template learned from all of the site's pages as the markdown stage does (unless --no-template),
and compared with a reference built independently from the original HTML with a site-specific
reference selector: code blocks, table grids, headings, word recall/precision, chrome left,
navigation leaks (the site's own chrome blocks, --reference-chrome, found whole in the output)
and speed against stock markdownify.

    python -m tasks.bench.markdown_quality --site DIR --base-url URL --reference-selector CSS \
        [--reference-drop CSS] [--reference-chrome CSS] [--selector CSS] [--no-template] \
        --out reports/markdown_quality_<name>.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lxml.html
import markdownify
from lxml import etree
from lxml.etree import _Element

from tasks.core.params import MarkdownParams
from tasks.markdown.convert import convert_page
from tasks.markdown.extract import profile_page
from tasks.markdown.template import SiteTemplate, learn_template

WORD_RE = re.compile(r"\w+")
IMAGE_RE = re.compile(r"!\[([^\]]*)\]\((?:[^()\s]|\([^()]*\))*(?:\s+\"[^\"]*\")?\)")
LINK_RE = re.compile(
    r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\((?:[^()\s]|\([^()]*\))*(?:\s+\"[^\"]*\")?\)"
)
ESCAPE_RE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")
AUTOLINK_RE = re.compile(r"<((?:https?|mailto|ftp):[^>\s]+)>")
HEADING_RE = re.compile(r"^[ >]*(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
FENCE_OPEN_RE = re.compile(r"^((?:[ ]*>[ ]?)*[ ]*)(`{3,}|~{3,})[^`]*$")
FENCE_INFO_RE = re.compile(r"^([ >]*(?:`{3,}|~{3,}))[^`\n]*$", re.MULTILINE)
CODE_SPAN_RE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
LIST_MARK_RE = re.compile(r"^([ >]*)\d+\.(?= )", re.MULTILINE)
CONTAINER_RE = re.compile(r"^[\s>]*")
CELL_SPLIT_RE = re.compile(r"(?<!\\)\|")
NAV_BAR_RE = re.compile(r"^(?:\W*\b(?:Prev|Previous|Next|Up|Home)\b\W*){2,}$")
CHROME_MARKERS = (
    "¶",
    "Table of Contents",
    "Previous topic",
    "Next topic",
    "This Page",
    "Navigation",
    "Quick search",
    "Show Source",
    "Skip to",
)
BLOCK_TAGS = (
    "p",
    "div",
    "pre",
    "li",
    "dt",
    "dd",
    "td",
    "th",
    "tr",
    "table",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "br",
    "section",
    "ul",
    "ol",
    "dl",
    "caption",
    "hr",
)


@dataclass
class Totals:
    pages: int = 0
    dropped: dict[str, str] = field(default_factory=dict)
    extractors: Counter[str] = field(default_factory=Counter)
    code: list[int] = field(default_factory=lambda: [0, 0])
    tables: list[int] = field(default_factory=lambda: [0, 0])
    span_tables: list[int] = field(default_factory=lambda: [0, 0])
    headings: list[int] = field(default_factory=lambda: [0, 0])
    recall: dict[str, float] = field(default_factory=dict)
    precision: dict[str, float] = field(default_factory=dict)
    chrome_pages: dict[str, list[str]] = field(default_factory=dict)
    nav_leaks: dict[str, list[str]] = field(default_factory=dict)
    chrome_blocks: int = 0
    template_blocks: int = 0
    misses: dict[str, list[str]] = field(default_factory=dict)
    ours_s: float = 0.0  # template learning included
    template_s: float = 0.0
    stock_s: float = 0.0


def words(text: str) -> Counter[str]:
    return Counter(w.lower() for w in WORD_RE.findall(text))


def norm_tokens(text: str) -> str:
    return " ".join(w.lower() for w in WORD_RE.findall(text))


def markdown_plain(text: str) -> str:
    """Markdown minus link targets and image URLs: the visible text."""
    text = IMAGE_RE.sub(lambda m: m.group(1), text)
    text = LINK_RE.sub(lambda m: m.group(1), text)
    return AUTOLINK_RE.sub(lambda m: m.group(1), text)


def markdown_words(text: str) -> Counter[str]:
    """Words of the visible text, without fence info strings and ordered-list numbers."""
    text = LIST_MARK_RE.sub(r"\1", FENCE_INFO_RE.sub(r"\1", text))
    return words(markdown_plain(text))


def inline_plain(text: str) -> str:
    """Visible text of one line of Markdown: code spans verbatim, emphasis and escapes gone."""
    parts = CODE_SPAN_RE.split(markdown_plain(text))
    out = []
    for i, part in enumerate(parts):
        if i % 3 == 2:
            out.append(part.strip() if part.strip() else part)
        elif i % 3 == 0:
            part = ESCAPE_RE.sub(lambda m: chr(0xE000 + ord(m.group(1))), part)
            part = part.replace("*", "")
            out.append(re.sub("[\ue000-\ue0ff]", lambda m: chr(ord(m.group(0)) - 0xE000), part))
    return " ".join("".join(out).split())


def fenced_blocks(markdown: str) -> list[str]:
    """Contents of fenced code blocks, with list indentation and '>' prefixes removed."""
    blocks: list[str] = []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        match = FENCE_OPEN_RE.match(lines[i])
        if not match:
            i += 1
            continue
        prefix, fence = match.group(1), match.group(2)
        body: list[str] = []
        i += 1
        while i < len(lines):
            line = lines[i]
            line = line[len(prefix) :] if line.startswith(prefix) else line.lstrip(" >")
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip(fence[0] + " "):
                break
            body.append(line + "\n")
            i += 1
        blocks.append("".join(body))
        i += 1
    return blocks


def markdown_tables(markdown: str) -> list[tuple[tuple[str, ...], ...]]:
    """Cell grids (normalised tokens) of the GFM pipe tables in the output."""
    lines = [CONTAINER_RE.sub("", line) for line in markdown.split("\n")]
    tables = []
    i = 0
    while i + 1 < len(lines):
        if lines[i].startswith("|") and re.fullmatch(r"\|(?: *:?-{3,}:? *\|)+", lines[i + 1]):
            rows = [lines[i]]
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            tables.append(tuple(parse_row(row) for row in rows))
        else:
            i += 1
    return tables


def parse_row(row: str) -> tuple[str, ...]:
    cells = CELL_SPLIT_RE.split(row.strip())[1:-1]
    return tuple(norm_tokens(inline_plain(cell.replace("\\|", "|"))) for cell in cells)


def reference_grid(table: _Element) -> tuple[tuple[str, ...], ...]:
    """Expanded grid of a reference table: spans repeated, cell texts as tokens."""
    rows = [tr for tr in table.iter("tr") if next(tr.iterancestors("table")) is table]
    taken: dict[tuple[int, int], str] = {}
    for r, tr in enumerate(rows):
        c = 0
        for cell in tr:
            if cell.tag not in ("td", "th"):
                continue
            while (r, c) in taken:
                c += 1
            rs, cs = span(cell, "rowspan"), span(cell, "colspan")
            text = norm_tokens(block_text(cell))
            for dr in range(min(rs, len(rows) - r)):
                for dc in range(cs):
                    taken[(r + dr, c + dc)] = text
            c += cs
    width = max((c for _, c in taken), default=-1) + 1
    return tuple(tuple(taken.get((r, c), "") for c in range(width)) for r in range(len(rows)))


def span(cell: _Element, name: str) -> int:
    value = cell.get(name, "1").strip()
    return max(1, min(1000, int(value))) if value.isdigit() else 1


def reference_pre(pre: _Element) -> str:
    # the HTML parsing rules ignore one newline right after <pre>
    text = pre.text_content()
    return text[1:] if text.startswith("\n") else text


def reference_root(html: bytes, selector: str, drop: str | None) -> _Element | None:
    doc = lxml.html.document_fromstring(html)
    found = doc.cssselect(selector)
    if not found:
        return None
    root = found[0]
    for el in root.cssselect(drop) if drop else []:
        el.drop_tree()
    for el in root.xpath(".//script | .//style"):
        el.drop_tree()
    return root


def block_text(el: _Element) -> str:
    """Text content with a space at block boundaries, as a browser lays it out."""
    parts: list[str] = []
    for event, node in etree.iterwalk(el, events=("start", "end")):
        if not isinstance(node.tag, str):
            if event == "end" and node is not el:
                parts.append(node.tail or "")
            continue
        block = node.tag in BLOCK_TAGS
        if event == "start":
            parts.append((" " if block else "") + (node.text or ""))
        elif node is not el:
            parts.append((" " if block else "") + (node.tail or ""))
    return "".join(parts)


def reference_text(root: _Element) -> str:
    return block_text(root)


def check_code(ref: _Element, markdown: str, t: Totals, name: str) -> None:
    joined = "\x00".join(fenced_blocks(markdown))
    for pre in ref.iter("pre"):
        code = reference_pre(pre)
        if not code.strip():
            continue
        t.code[1] += 1
        if code in joined:
            t.code[0] += 1
        else:
            t.misses.setdefault("code", []).append(name)


def check_tables(ref: _Element, markdown: str, t: Totals, name: str) -> None:
    grids = Counter(markdown_tables(markdown))
    for table in ref.iter("table"):
        if next(table.iterancestors("table"), None) is not None:
            continue
        grid = reference_grid(table)
        if not grid or not grid[0]:
            continue
        spanned = bool(table.xpath(".//*[@rowspan>1 or @colspan>1]"))
        ok = grids[grid] > 0
        grids[grid] -= ok
        t.tables[0] += ok
        t.tables[1] += 1
        if spanned:
            t.span_tables[0] += ok
            t.span_tables[1] += 1
        if not ok:
            t.misses.setdefault("tables", []).append(name)


def check_headings(ref: _Element, markdown: str, t: Totals, name: str) -> None:
    found: Counter[str] = Counter()
    for line in markdown.split("\n"):
        match = HEADING_RE.match(line)
        if match:
            found[inline_plain(match.group(2))] += 1
    for h in ref.iter("h1", "h2", "h3", "h4", "h5", "h6"):
        text = " ".join(h.text_content().replace("¶", " ").split())
        if not text:
            continue
        t.headings[1] += 1
        if found[text] > 0:
            found[text] -= 1
            t.headings[0] += 1
        else:
            t.misses.setdefault("headings", []).append(f"{name}: {text}")


def chrome_left(markdown: str, ref_text: str) -> list[str]:
    plain = markdown_plain(markdown)
    left = [m for m in CHROME_MARKERS if m in plain and m not in ref_text]
    for line in plain.split("\n"):
        if NAV_BAR_RE.match(inline_plain(line)) and inline_plain(line) not in ref_text:
            left.append(line.strip()[:80])
    return left


def chrome_leaks(html: bytes, selector: str, markdown: str, ref_text: str) -> tuple[int, list[str]]:
    """The page's chrome blocks (per-site selector), and those whose whole text is in the
    output: a navigation panel kept on the page."""
    doc = lxml.html.document_fromstring(html)
    out, ref = f" {norm_tokens(markdown_plain(markdown))} ", f" {norm_tokens(ref_text)} "
    blocks = [norm_tokens(block_text(el)) for el in doc.cssselect(selector)]
    # a block whose text the main content also holds cannot be told apart from that content
    blocks = [b for b in blocks if b and f" {b} " not in ref]
    return len(blocks), [b[:80] for b in blocks if f" {b} " in out]


def learn_site_template(pages: list[Path], args: argparse.Namespace) -> tuple[SiteTemplate, float]:
    """The site's template, learned from every page as the markdown stage does, and the time."""
    if args.no_template or args.selector:
        return SiteTemplate(), 0.0  # the template serves the generic path only
    params = MarkdownParams()
    start = time.perf_counter()
    profiles = [profile_page(path.read_bytes(), params) for path in pages]
    return learn_template(profiles, params.template_min_share), time.perf_counter() - start


def measure_page(
    path: Path, url: str, args: argparse.Namespace, template: SiteTemplate, t: Totals
) -> None:
    html = path.read_bytes()
    params = MarkdownParams(content_selector=args.selector)
    start = time.perf_counter()
    result = convert_page(html, url, params, template=template)
    t.ours_s += time.perf_counter() - start
    t.template_blocks += result.template_blocks
    start = time.perf_counter()
    markdownify.markdownify(html.decode("utf-8", errors="replace"))
    t.stock_s += time.perf_counter() - start
    t.pages += 1
    t.extractors[result.extractor] += 1
    name = str(path.relative_to(args.site))
    if result.drop_reason:
        t.dropped[name] = result.drop_reason
    ref = reference_root(html, args.reference_selector, args.reference_drop)
    if ref is None:
        t.misses.setdefault("no_reference", []).append(name)
        return
    md = result.markdown
    check_code(ref, md, t, name)
    check_tables(ref, md, t, name)
    check_headings(ref, md, t, name)
    ref_words, out_words = words(reference_text(ref)), markdown_words(md)
    common = sum((ref_words & out_words).values())
    t.recall[name] = common / max(1, sum(ref_words.values()))
    t.precision[name] = common / max(1, sum(out_words.values())) if out_words else 0.0
    chrome = chrome_left(md, " ".join(ref.text_content().replace("¶", " ").split()))
    if chrome:
        t.chrome_pages[name] = chrome
    if args.reference_chrome:
        blocks, leaks = chrome_leaks(html, args.reference_chrome, md, reference_text(ref))
        t.chrome_blocks += blocks
        if leaks:
            t.nav_leaks[name] = leaks


def share(pair: list[int]) -> float:
    return pair[0] / pair[1] if pair[1] else 1.0


def summarize(t: Totals) -> dict[str, object]:
    below = sorted(
        (n for n in t.recall if t.recall[n] < 0.98 or t.precision[n] < 0.98),
        key=lambda n: min(t.recall[n], t.precision[n]),
    )
    return {
        "pages": t.pages,
        "extractors": dict(t.extractors),
        "dropped": t.dropped,
        "code_blocks_verbatim": {"share": share(t.code), "ok": t.code[0], "total": t.code[1]},
        "tables_grid": {"share": share(t.tables), "ok": t.tables[0], "total": t.tables[1]},
        "span_tables_grid": {
            "share": share(t.span_tables),
            "ok": t.span_tables[0],
            "total": t.span_tables[1],
        },
        "headings": {"share": share(t.headings), "ok": t.headings[0], "total": t.headings[1]},
        "word_recall_macro": statistics.fmean(t.recall.values()) if t.recall else 0.0,
        "word_precision_macro": statistics.fmean(t.precision.values()) if t.precision else 0.0,
        "pages_below_0.98": {
            n: {"recall": round(t.recall[n], 4), "precision": round(t.precision[n], 4)}
            for n in below
        },
        "pages_with_chrome": len(t.chrome_pages),
        "chrome_examples": dict(list(t.chrome_pages.items())[:20]),
        # None: no --reference-chrome, or it found no navigation block to look for
        "nav_leaks": {
            "chrome_blocks": t.chrome_blocks,
            "blocks_leaked": sum(len(v) for v in t.nav_leaks.values()),
            "pages": len(t.nav_leaks),
            "examples": dict(list(t.nav_leaks.items())[:20]),
        }
        if t.chrome_blocks
        else None,
        "template_blocks_removed": t.template_blocks,
        "speed": {
            "ours_pages_per_s": t.pages / t.ours_s if t.ours_s else 0.0,
            "stock_markdownify_pages_per_s": t.pages / t.stock_s if t.stock_s else 0.0,
            "ratio": t.stock_s / t.ours_s if t.ours_s else 0.0,
            "ours_total_s": t.ours_s,
            "ours_template_learning_s": t.template_s,
            "stock_total_s": t.stock_s,
        },
        "misses": {k: v[:30] for k, v in t.misses.items()},
    }


def print_table(report: dict[str, object]) -> None:
    leaks = report["nav_leaks"]
    rows = [
        ("pages", report["pages"]),
        ("code blocks verbatim", fmt(report["code_blocks_verbatim"])),
        ("tables grid", fmt(report["tables_grid"])),
        ("span tables grid", fmt(report["span_tables_grid"])),
        ("headings", fmt(report["headings"])),
        ("word recall (macro)", f"{report['word_recall_macro']:.4f}"),
        ("word precision (macro)", f"{report['word_precision_macro']:.4f}"),
        ("pages below 0.98", len(report["pages_below_0.98"])),  # type: ignore[arg-type]
        ("pages with chrome", report["pages_with_chrome"]),
        ("pages with nav leaks", leaks["pages"] if isinstance(leaks, dict) else "-"),
        ("template blocks removed", report["template_blocks_removed"]),
        ("speed ratio ours/stock", f"{report['speed']['ratio']:.2f}"),  # type: ignore[index]
        ("ours total s", f"{report['speed']['ours_total_s']:.1f}"),  # type: ignore[index]
    ]
    for label, value in rows:
        print(f"{label:<26} {value}")


def fmt(metric: object) -> str:
    m = metric if isinstance(metric, dict) else {}
    return f"{m['share']:.4f} ({m['ok']}/{m['total']})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", type=Path, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--selector", default=None, help="content_selector for the converter")
    parser.add_argument("--reference-selector", default="body")
    parser.add_argument("--reference-drop", default=None, help="CSS removed from the reference")
    parser.add_argument(
        "--reference-chrome", default=None, help="CSS of the site's navigation blocks (leak check)"
    )
    parser.add_argument(
        "--no-template", action="store_true", help="convert without learning the site's template"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    totals = Totals()
    pages = sorted(args.site.rglob("*.html"))[: args.limit]
    template, totals.template_s = learn_site_template(pages, args)
    totals.ours_s = totals.template_s
    for path in pages:
        url = args.base_url.rstrip("/") + "/" + path.relative_to(args.site).as_posix()
        measure_page(path, url, args, template, totals)
    report = summarize(totals)
    report["template"] = template.to_json()
    report["command"] = vars(args) | {"site": str(args.site), "out": str(args.out)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_table(report)


if __name__ == "__main__":
    main()
