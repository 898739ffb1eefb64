"""Technical literals of an answer, and those its page does not contain.

A literal is what an answer cannot paraphrase: a code span (at most 80 characters: a longer
"span" is an unbalanced backtick around prose), URL, path (/etc/x, ~/x, ./x, C:\\x),
timestamp, option flag (-x, --foo), function call (name()), dotted name (postgresql.conf,
pg_catalog.pg_class), snake_case or CamelCase identifier, a word mixing letters and digits
(UTF8, x86_64, 0x1f3a) or a number of two or more digits (5432, 15.4, 127.0.0.1, 10:30).

Not literals, as they are prose: single-digit numbers ("step 1", "2 replicas"), ordinals
(1st), all-capital words without a digit or underscore (SQL, WAL: acronyms) and relative paths
without a leading ./ or ~/ (and/or, TCP/IP).

Both texts are compared normalised: whitespace collapsed, thousands separators removed
(10,000 = 10000), Markdown backslash escapes undone. A number keeps only its digits (a unit
such as MB or ms is not compared) and matches a number of the page, not a part of one: 5432
matches "port 5432" and "-p5432", 543 does not match 5432, 15.4 does not match 15.4.1. Any
other literal matches where the page holds it case-sensitively and not inside a longer word,
flag or path; quotes and backticks around either side do not matter.
"""

from __future__ import annotations

import re

LITERAL_RE = re.compile(
    r"""
      `(?P<code>[^`\n]{1,80})`
    | (?P<url>\b[a-z][a-z0-9+.\-]*://[^\s<>`"')\]]+)
    | (?P<path>(?<![\w.~/\\-])(?:~|\.{1,2})?/[\w.\-$@+%]+(?:/[\w.\-$@+%]*)*
        | \b[A-Za-z]:\\[^\s`"'<>|]*)
    | (?P<timestamp>\b\d{4}-\d{2}-\d{2}(?:[T\ ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?)
    | (?P<flag>(?<![\w-])--?[A-Za-z][\w-]*)
    | (?P<function>\b[A-Za-z_][\w.]*\(\))
    | (?P<ordinal>\b\d+(?:st|nd|rd|th)\b)
    | (?P<number>(?<![\w.])\d+(?:[.:]\d+)*)
        (?:\s?(?i:[kmgtp]i?b|bytes?|ms|s|min|h)|%)?(?!\w)
    | (?P<mixed>(?<![\w.])(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]{2,}(?!\w|\.\w))
    | (?P<dotted>(?<![\w.\-/])[A-Za-z_][\w\-]*\w(?:\.\w+)+)
    | (?P<snake>(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+)
    | (?P<camel>(?<![\w.])[A-Za-z][A-Za-z0-9]*[a-z][A-Z][A-Za-z0-9]*(?!\w))
    """,
    re.VERBOSE,
)
NOT_LITERALS = frozenset({"ordinal"})
THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
MARKDOWN_ESCAPE_RE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>])")
SPACE_RE = re.compile(r"\s+")
EDGE_QUOTES = "`'\""
TRAILING_PUNCTUATION = ".,;:!?"


def normalize_literal_text(text: str) -> str:
    text = MARKDOWN_ESCAPE_RE.sub(r"\1", text)
    return SPACE_RE.sub(" ", THOUSANDS_RE.sub("", text))


def clean_literal(literal: str) -> str:
    return literal.strip().strip(EDGE_QUOTES).rstrip(TRAILING_PUNCTUATION).strip(EDGE_QUOTES)


def is_small_number(literal: str) -> bool:
    return len(literal) == 1 and literal.isdigit()


def find_literals(text: str) -> list[str]:
    """The literals of `text`, normalised (a number as its digits, a code span as its
    content), in order of first appearance, each once."""
    found: dict[str, None] = {}
    for match in LITERAL_RE.finditer(normalize_literal_text(text)):
        kind = match.lastgroup
        if kind is None or kind in NOT_LITERALS:
            continue
        literal = clean_literal(match.group(kind))
        if literal and not is_small_number(literal):
            found[literal] = None
    return list(found)


def compile_occurrence(literal: str) -> re.Pattern[str]:
    """Where `literal` stands on its own in a normalised text: digits not inside a longer
    number, anything else not inside a longer word, flag or path; a function by its name."""
    if literal.endswith("()"):
        return re.compile(rf"(?<![\w.]){re.escape(literal[:-2])}\s*\(")
    return re.compile(bound_before(literal[0]) + re.escape(literal) + bound_after(literal[-1]))


def bound_before(first: str) -> str:
    if first.isdigit():
        return r"(?<!\d)(?<!\d[.:])"
    if first == "-":
        return r"(?<![\w-])"
    if first == "/":
        return r"(?<![\w.~-])"
    return r"(?<!\w)" if first.isalnum() or first == "_" else ""


def bound_after(last: str) -> str:
    if last.isdigit():
        return r"(?!\d)(?![.:]\d)"
    return r"(?![\w-])" if last.isalnum() or last == "_" else ""


def find_invented_literals(answer: str, page: str) -> list[str]:
    """The literals of `answer` that `page` does not contain."""
    text = normalize_literal_text(page)
    return [lit for lit in find_literals(answer) if not compile_occurrence(lit).search(text)]
