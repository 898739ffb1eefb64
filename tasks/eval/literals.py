"""Judge-free answer checks on technical literals: commands, options, numbers, identifiers and
config keys. Recall: the share of the reference answer's literals the answer contains.
Invented: the share of the answer's literals that occur nowhere in the source page."""

from __future__ import annotations

import re

LITERAL = re.compile(
    r"`[^`\n]{1,80}`"  # anything in backticks
    r"|(?<![\w-])--?[A-Za-z][\w-]*"  # command-line options
    r"|\b[\w-]*[A-Za-z][\w-]*(?:[_./=:][\w-]+)+"  # pg_dump, postgresql.conf, key=value, a/b
    r"|\b\w*[a-z]\w*_\w+\b"  # snake_case identifiers
    r"|\b\d+(?:[.,]\d+)*(?:\s?(?:[kKMGT]i?B|ms|s|%))?"  # numbers, with a unit
    r"|\b[A-Z][A-Z0-9_]{1,}\b"  # SQL keywords, constants, environment variables
)
URL = re.compile(r"https?://\S+")
# Sentence-final dots and trailing punctuation are not part of a literal.
TRIM = ".,;:)(\"'"


def extract_literals(text: str) -> set[str]:
    found = set()
    # A page's URL is its citation, not a fact about the product.
    for match in LITERAL.finditer(URL.sub(" ", text)):
        literal = match.group(0).strip("`").strip(TRIM).lower()
        if literal:
            found.add(literal)
    return found


def literal_recall(answer: str, reference: str) -> float | None:
    wanted = extract_literals(reference)
    if not wanted:
        return None
    got = extract_literals(answer)
    return len(wanted & got) / len(wanted)


def invented_share(answer: str, source: str) -> float | None:
    literals = extract_literals(answer)
    if not literals:
        return None
    page = source.lower()
    return sum(lit not in page for lit in literals) / len(literals)
