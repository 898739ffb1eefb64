"""Golden and property tests of the HTML -> Markdown converter on real documentation pages."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from tasks.core.documents import parse_document, render_document
from tasks.core.encoding import detect_encoding
from tasks.core.params import MarkdownParams
from tasks.core.records import MarkdownDoc
from tasks.markdown.convert import (
    Converted,
    convert_page,
    expand_grid,
    render_code_block,
    tidy_markdown,
)

GOLDEN = Path(__file__).parents[1] / "golden"
SITE = Path(__file__).parents[1] / "fixtures" / "sites" / "postgresql-15"
BASES = {"pg": "https://www.postgresql.org/docs/15/", "py": "https://docs.python.org/3.11/library/"}
PARAMS = MarkdownParams(
    product_pattern=r"(PostgreSQL|Python) [\d.]+ [Dd]ocumentation",
    version_pattern=r"(?:PostgreSQL|Python) ([\d.]+) [Dd]ocumentation",
)
CASES = sorted(p.stem for p in GOLDEN.glob("*.html"))
CHROME = ("¶", "Previous topic", "Next topic", "This Page", "Quick search", "Navigation")


def case_url(case: str) -> str:
    prefix, name = case.split("_", 1)
    return BASES[prefix] + name + ".html"


def convert_case(case: str) -> Converted:
    return convert_page((GOLDEN / f"{case}.html").read_bytes(), case_url(case), PARAMS)


def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    got = convert_case(case).markdown
    golden = GOLDEN / f"{case}.md"
    if update_goldens(request) or not golden.exists():
        golden.write_text(got, encoding="utf-8")
        if not update_goldens(request):
            pytest.fail(f"{golden.name} was missing and has been written; check and rerun")
        return
    want = golden.read_text(encoding="utf-8")
    if got != want:
        diff = difflib.unified_diff(
            want.splitlines(), got.splitlines(), "golden", "output", lineterm="", n=2
        )
        pytest.fail("output differs from golden (pytest --update-goldens):\n" + "\n".join(diff))


@pytest.mark.parametrize("case", CASES)
def test_no_chrome_and_code_verbatim(case: str) -> None:
    import lxml.html

    result = convert_case(case)
    for marker in CHROME:
        assert marker not in result.markdown
    assert not re.search(
        r"^\W*(Prev|Up|Home|Next)(\W+(Prev|Up|Home|Next))+\W*$", result.markdown, re.M
    )
    doc = lxml.html.document_fromstring((GOLDEN / f"{case}.html").read_bytes())
    for pre in doc.iter("pre"):
        if next(pre.iterancestors("table"), None) is not None:
            continue  # a table cell holds one line: code there is flattened
        text = pre.text_content()
        text = text[1:] if text.startswith("\n") else text
        assert text in result.markdown
    assert result.drop_reason is None


@pytest.mark.parametrize(
    ("case", "present", "absent"),
    [
        (
            "pg_sql-createtable",
            [
                "## CREATE TABLE",
                "```\nCREATE [ [ GLOBAL | LOCAL ] { TEMPORARY | TEMP } | UNLOGGED ]",
            ],
            ["Prev", "Home", "Next", "Up](", "Submit correction"],
        ),
        (
            "pg_explicit-locking",
            ["## 13.3. Explicit Locking", "| Requested Lock Mode | Existing Lock Mode |"],
            ["Prev", "Home"],
        ),
        ("pg_plperl-trusted", ["> ### Note", "> ### Warning"], ["Prev", "Next"]),
        (
            "py_functools",
            ["# [`functools`](", "```python3\n@cache\ndef factorial(n):", "> **Note**"],
            ["Table of Contents", "Previous topic", "Next topic", "This Page", "Show Source"],
        ),
        ("py_colorsys", ["```python3\n>>> import colorsys"], ["Quick search", "Navigation"]),
    ],
)
def test_contains(case: str, present: list[str], absent: list[str]) -> None:
    markdown = convert_case(case).markdown
    for text in present:
        assert text in markdown
    for text in absent:
        assert text not in markdown


def test_span_table_grid_is_expanded() -> None:
    markdown = convert_case("pg_explicit-locking").markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| Requested"))
    assert header.count("Existing Lock Mode") == 8  # colspan=8 repeated into every cell
    rows = [line for line in markdown.splitlines() if line.startswith("| `ACCESS SHARE`")]
    assert rows and rows[0].count("|") == 10


def test_metadata_from_title_and_header() -> None:
    pg = convert_case("pg_sql-createtable")
    assert (pg.title, pg.product, pg.version, pg.extractor) == (
        "CREATE TABLE",
        "PostgreSQL",
        "15.20",
        "generic",
    )
    py = convert_case("py_colorsys")
    assert (py.product, py.version) == ("Python", "3.11.2")


def test_links_and_images_absolute() -> None:
    html = b'<main><p><a href="../x.html#a">x</a> <img src="i/p.png" alt="pic"></p></main>'
    md = convert_page(html, "https://d.org/docs/a/b.html", MarkdownParams()).markdown
    assert "[x](https://d.org/docs/x.html#a)" in md
    assert "![pic](https://d.org/docs/a/i/p.png)" in md


def test_content_selector_path() -> None:
    html = b"<body><div id=side>menu words</div><div id=doc><h1>T</h1><p>body</p></div></body>"
    got = convert_page(html, "https://d.org/", MarkdownParams(content_selector="#doc"))
    assert got.extractor == "selector"
    assert got.markdown == "# T\n\nbody\n"


def test_empty_page_dropped() -> None:
    html = b"<html><body><nav><a href='/'>Home</a></nav></body></html>"
    got = convert_page(html, "https://d.org/", MarkdownParams())
    assert got.drop_reason == "empty_content"
    assert convert_page(b"", "https://d.org/", MarkdownParams()).drop_reason == "unparseable"


def test_code_fence_outgrows_backticks() -> None:
    block = render_code_block("a ``` b\n````\n", "")
    assert block.strip().startswith("`````\n") and block.strip().endswith("\n`````")


def test_expand_grid_repeats_spans() -> None:
    grid = expand_grid([[("a", 2, 1), ("b", 1, 2)], [("c", 1, 1), ("d", 1, 1)]])
    assert grid == [["a", "b", "b"], ["a", "c", "d"]]


def test_tidy_keeps_blank_lines_in_code() -> None:
    text = "a\n\n\n\n\nb\n```\nx\n\n\n\n\ny\n```\n"
    assert tidy_markdown(text) == "a\n\n\nb\n```\nx\n\n\n\n\ny\n```\n"


@pytest.mark.parametrize(
    ("data", "hint", "want"),
    [
        (b'<?xml version="1.0" encoding="ISO-8859-1"?><html/>', None, "iso8859-1"),
        (b'<meta charset="windows-1252"><p>x', None, "cp1252"),
        (b"\xef\xbb\xbf<p>x", "latin-1", "utf-8"),
        (b"<p>x", "latin-1", "iso8859-1"),
        (b"<p>x", None, "utf-8"),
    ],
)
def test_detect_encoding(data: bytes, hint: str | None, want: str) -> None:
    assert detect_encoding(data, hint) == want


def test_latin1_page_decoded() -> None:
    html = '<html><head><meta charset="iso-8859-1"></head><body><p>café</p></body></html>'
    md = convert_page(html.encode("latin-1"), "https://d.org/", MarkdownParams()).markdown
    assert md == "café\n"


def test_document_round_trip() -> None:
    doc = MarkdownDoc(id="abc", url="https://d.org/", title="A: b — c", sha="00", order=3)
    text = render_document(doc, "# A\n\nbody\n")
    assert text.startswith("---\nid: abc\nurl: https://d.org/\n") and text.endswith("body\n")
    assert "order:" not in text  # reading order lives in index.jsonl only
    assert parse_document(text) == (doc.model_copy(update={"order": 0}), "# A\n\nbody")
    assert render_document(*parse_document(text)) == text


def test_fixture_site_is_the_whole_chapter() -> None:
    pages = {p.name for p in SITE.glob("*.html")}
    toc = convert_page((SITE / "backup.html").read_bytes(), BASES["pg"] + "backup.html", PARAMS)
    linked = set(re.findall(r"docs/15/([\w-]+\.html)", toc.markdown))
    assert linked <= pages
    assert (SITE / "COPYRIGHT").read_text(encoding="utf-8").startswith("PostgreSQL License")


def link_farm_page() -> bytes:
    links = "".join(f'<li><a href="/p{i}.html">Topic number {i} page</a></li>' for i in range(40))
    text = " ".join(["Readability keeps this long paragraph of real prose."] * 12)
    return f"<html><body><div><ul>{links}</ul></div><div><p>{text}</p></div></body></html>".encode()


def test_readability_fallback_needs_recall() -> None:
    html = link_farm_page()
    strict = convert_page(html, "https://d.org/", MarkdownParams(readability_min_recall=0.9))
    assert strict.extractor == "generic" and "Topic number 39" in strict.markdown
    lax = convert_page(html, "https://d.org/", MarkdownParams(readability_min_recall=0.2))
    assert lax.extractor == "readability"
    assert "real prose" in lax.markdown and "Topic number" not in lax.markdown


def test_selector_that_matches_nothing_is_a_drop() -> None:
    got = convert_page(b"<p>x</p>", "https://d.org/", MarkdownParams(content_selector="#nope"))
    assert got.drop_reason == "selector_not_found"
