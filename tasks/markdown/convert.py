"""HTML page -> Markdown body, and the front-matter document format of the markdown stage.

markdownify does the inline work; code blocks, tables, definition lists and admonitions
have our own rules so that code stays byte-identical and tables keep their cell grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin

import lxml.html
from bs4 import BeautifulSoup, Tag
from lxml.etree import _Element
from markdownify import ATX, MarkdownConverter

from tasks.core.params import MarkdownParams
from tasks.markdown.extract import WORD_RE, extract_content
from tasks.markdown.template import SiteTemplate

CODE_INDEX_ATTR = "data-md-code"
LANGUAGE_ATTR = "data-md-lang"
LANGUAGE_RES = (
    re.compile(r"(?:^|\s)(?:language|lang|highlight|brush:?)-?([A-Za-z0-9_+#.\-]+)"),
    re.compile(r"(?:^|\s)sourceCode\s+([A-Za-z0-9_+#.\-]+)"),
)
PLAIN_LANGUAGES = {"default", "none", "text", "plain", "plaintext", "nohighlight", "notranslate"}
ADMONITIONS = {
    "note",
    "tip",
    "warning",
    "caution",
    "important",
    "admonition",
    "attention",
    "danger",
    "error",
    "hint",
    "seealso",
    "deprecated",
    "versionadded",
    "versionchanged",
}
BLANK_RUN_RE = re.compile(r"\n{4,}")
FENCE_RE = re.compile(r"^\s*(?:>\s?)*\s*(`{3,}|~{3,})")


@dataclass
class Converted:
    """One page's Markdown body and what the extractor learned about the page."""

    markdown: str
    title: str
    product: str | None
    version: str | None
    extractor: str
    # None, or why the page has no body: unparseable, selector_not_found, empty_content
    drop_reason: str | None = None
    template_blocks: int = 0  # blocks removed as the site's template (tasks.markdown.template)


def detect_language(pre: _Element) -> str:
    """Language from a class like language-x / highlight-x / sourceCode x near the <pre>."""
    nodes = [pre, *pre.findall("code"), *list(pre.iterancestors())[:3]]
    for node in nodes:
        classes = node.get("class", "")
        for pattern in LANGUAGE_RES:
            match = pattern.search(classes)
            if match and match.group(1).lower() not in PLAIN_LANGUAGES:
                return match.group(1)
    return ""


def annotate_code(content: _Element) -> list[str]:
    """Record each <pre>'s text as parsed here, so a re-parse cannot change a byte of it."""
    codes: list[str] = []
    for pre in content.iter("pre"):
        pre.set(CODE_INDEX_ATTR, str(len(codes)))
        pre.set(LANGUAGE_ATTR, detect_language(pre))
        codes.append(pre_text(pre))
    return codes


def pre_text(pre: _Element) -> str:
    """Text content of a <pre>; HTML drops one newline right after the start tag."""
    text = pre.text_content()
    return text[1:] if text.startswith("\n") else text


def render_code_block(code: str, language: str) -> str:
    """A fenced block whose content is exactly `code`; the fence outgrows any backtick run."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    body = code if code.endswith("\n") else code + "\n"
    return f"\n\n{fence}{language}\n{body}{fence}\n\n"


def render_inline_code(code: str) -> str:
    text = " ".join(code.split())
    if not text:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    tick = "`" * (longest + 1)
    return f"{tick} {text} {tick}" if longest else f"{tick}{text}{tick}"


def table_rows(table: Tag) -> list[Tag]:
    """The table's own rows in source order, not those of nested tables."""
    rows: list[Tag] = []
    for child in table.find_all(recursive=False):
        if child.name == "tr":
            rows.append(child)
        elif child.name in ("thead", "tbody", "tfoot"):
            rows.extend(child.find_all("tr", recursive=False))
    return rows


def span_of(cell: Tag, name: str) -> int:
    value = str(cell.get(name, "1")).strip()
    return max(1, min(1000, int(value))) if value.isdigit() else 1


def expand_grid(rows: list[list[tuple[str, int, int]]]) -> list[list[str]]:
    """Rows of (text, rowspan, colspan) -> a full grid, spanned values repeated."""
    filled: dict[tuple[int, int], str] = {}
    for r, cells in enumerate(rows):
        c = 0
        for text, rowspan, colspan in cells:
            while (r, c) in filled:
                c += 1
            for dr in range(min(rowspan, len(rows) - r)):
                for dc in range(colspan):
                    filled[(r + dr, c + dc)] = text
            c += colspan
    width = max((c for _, c in filled), default=-1) + 1
    return [[filled.get((r, c), "") for c in range(width)] for r in range(len(rows))]


def render_grid(grid: list[list[str]]) -> str:
    """A GFM pipe table; the first row is the header row."""
    if not grid or not grid[0]:
        return ""
    lines = ["| " + " | ".join(row) + " |" for row in grid]
    lines.insert(1, "|" + " --- |" * len(grid[0]))
    return "\n\n" + "\n".join(lines) + "\n\n"


def tidy_markdown(text: str) -> str:
    """At most two blank lines in a row outside code blocks; one trailing newline."""
    out: list[str] = []
    fence = ""
    blank = 0
    for line in text.split("\n"):
        match = FENCE_RE.match(line)
        if match and (not fence or match.group(1).startswith(fence)):
            fence = "" if fence else match.group(1)
        elif not fence and not line.strip():
            blank += 1
            if blank > 2:
                continue
            line = ""
        if line.strip() or fence:
            blank = 0
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


class PageConverter(MarkdownConverter):
    """markdownify with our code, table, definition-list, admonition and link rules."""

    class Options(MarkdownConverter.DefaultOptions):
        heading_style = ATX
        escape_underscores = False  # intraword underscores are literal in CommonMark
        bullets = "-"

    def __init__(self, base_url: str, codes: list[str]) -> None:
        super().__init__()
        self.base_url = base_url
        self.codes = codes

    def process_tag(self, node: Tag, parent_tags: set[str] | None = None) -> str:
        parent_tags = parent_tags or set()
        if node.name == "pre":
            return self.render_pre(node, parent_tags)
        if node.name == "table":
            return self.render_table(node, parent_tags)
        return super().process_tag(node, parent_tags)

    def process_text(self, el: object, parent_tags: set[str] | None = None) -> str:
        # no-break spaces are layout, not content: plain spaces read better as training text
        return super().process_text(el, parent_tags).replace("\xa0", " ")

    def render_pre(self, pre: Tag, parent_tags: set[str]) -> str:
        index = pre.get(CODE_INDEX_ATTR)
        code = self.codes[int(str(index))] if index is not None else pre.get_text()
        if "_inline" in parent_tags:
            return " " + render_inline_code(code) + " "
        if not code.strip("\n"):
            return ""
        return render_code_block(code, str(pre.get(LANGUAGE_ATTR, "")))

    def render_cell(self, cell: Tag, parent_tags: set[str]) -> str:
        tags = parent_tags | {"td", "_inline"}
        text = "".join(self.process_element(child, tags) for child in cell.children)
        return " ".join(text.split()).replace("|", "\\|")

    def render_table(self, table: Tag, parent_tags: set[str]) -> str:
        rows = [
            [
                (
                    self.render_cell(cell, parent_tags),
                    span_of(cell, "rowspan"),
                    span_of(cell, "colspan"),
                )
                for cell in row.find_all(("td", "th"), recursive=False)
            ]
            for row in table_rows(table)
        ]
        grid = expand_grid(rows)
        if "_inline" in parent_tags:
            return " " + " ".join(text for row in grid for text in row if text) + " "
        caption = table.find("caption", recursive=False)
        title = f"\n\n**{' '.join(caption.get_text().split())}**" if caption else ""
        return title + render_grid(grid)

    def convert_code(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        code = super().convert_code(el, text, parent_tags)
        previous = el.previous_sibling
        if isinstance(previous, Tag) and previous.name in ("code", "kbd", "samp") and code:
            return " " + code  # `a``b` would read as one broken span
        return code

    convert_kbd = convert_code
    convert_samp = convert_code

    def convert_a(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        if el.find("a", href=True):
            return text  # invalid nested links (DocBook glossterms): the inner one is kept
        href = el.get("href")
        if href and not str(href).lower().startswith("javascript:"):
            el["href"] = urljoin(self.base_url, str(href).strip())
        elif href:
            del el["href"]
        if el.get("title") is not None:
            del el["title"]  # link titles repeat the target's title: noise in training text
        return super().convert_a(el, text, parent_tags)

    def convert_img(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        if el.get("src"):
            el["src"] = urljoin(self.base_url, str(el["src"]).strip())
        return super().convert_img(el, text, parent_tags)

    def convert_div(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        if "_inline" not in parent_tags and class_tokens_of(el) & ADMONITIONS:
            return self.convert_blockquote(el, text, parent_tags)
        return super().convert_div(el, text, parent_tags)

    def convert_p(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        if "admonition-title" in class_tokens_of(el) and text.strip():
            text = f"**{text.strip()}**"
        return super().convert_p(el, text, parent_tags)

    def convert_dt(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        text = " ".join(text.split())
        if "_inline" in parent_tags or not text:
            return f" {text} "
        return f"\n\n**{text}**\n\n"

    def convert_dd(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        text = text.strip()
        if "_inline" in parent_tags or not text:
            return f" {text} "
        return f"\n\n{text}\n\n"

    def convert_li(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        if "_inline" in parent_tags:
            return f" {text.strip()} "
        return super().convert_li(el, text, parent_tags)

    def convert_list(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        if "_inline" in parent_tags:
            return f" {text.strip()} "
        return super().convert_list(el, text, parent_tags)

    convert_ul = convert_list
    convert_ol = convert_list


def class_tokens_of(el: Tag) -> set[str]:
    classes = el.get("class")
    names = classes if isinstance(classes, list) else [classes or ""]
    return {str(c).lower() for c in names}


def convert_content(content: _Element, url: str) -> str:
    """Markdown of an extracted content element."""
    codes = annotate_code(content)
    fragment = lxml.html.tostring(content, encoding="unicode")
    soup = BeautifulSoup(fragment, "lxml")
    return tidy_markdown(PageConverter(url, codes).convert_soup(soup))


def convert_page(
    html: bytes,
    url: str,
    params: MarkdownParams,
    encoding: str | None = None,
    template: SiteTemplate | None = None,
) -> Converted:
    """Extract the main content of one page and convert it to a Markdown body; `template` is
    the site's learned template, when the whole site was profiled first."""
    extracted = extract_content(html, params, encoding, template)
    meta = (extracted.title, extracted.product, extracted.version, extracted.extractor)
    if extracted.content is None:
        reason = "selector_not_found" if extracted.extractor == "selector" else "unparseable"
        return Converted("", *meta, drop_reason=reason)
    markdown = convert_content(extracted.content, url)
    if not WORD_RE.search(markdown):
        return Converted("", *meta, drop_reason="empty_content")
    return Converted(markdown, *meta, template_blocks=extracted.template_blocks)
