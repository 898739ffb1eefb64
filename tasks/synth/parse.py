"""Tolerant parsers for the synth stage's tagged output formats.

Small models bend the format: a tag loses its `<` or `>`, gains spaces or changes case, the
last block lacks `<END>`. All of that still parses. What cannot be read becomes a block with a
`problem` (a reason the caller counts and writes to the exclusions file), never nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LIST_ITEM_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.+?)\s*$", re.MULTILINE)
SPACE_RE = re.compile(r"\s+")
# Small models repeat the format's field names as labels: "<QUE> Question: How …".
LABEL_RE = re.compile(
    r"^(?:question|answer|main point|point|accurate answer|good answer|wrong answer|"
    r"corrective answer|sycophantic answer)\s*:\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Parsed:
    """One block of a reply: its fields in tag order, or why it cannot be used."""

    fields: tuple[str, ...]
    problem: str | None = None
    raw: str = ""


def tag_re(tag: str) -> re.Pattern[str]:
    """`<TAG>`, `< tag >`, `TAG>` or `<TAG`: at least one bracket, so prose never matches."""
    return re.compile(rf"<\s*{tag}\b\s*>?|\b{tag}\s*>", re.IGNORECASE)


END_RE = tag_re("END")


def clean_field(text: str) -> str:
    text = SPACE_RE.sub(" ", text).strip().strip("\"'").strip()
    return LABEL_RE.sub("", text)


def split_fields(content: str, tags: tuple[str, ...]) -> tuple[list[str], str | None]:
    """The text after each of `tags` (the first already removed), in order."""
    fields: list[str] = []
    rest = content
    for tag in tags:
        match = tag_re(tag).search(rest)
        if match is None:
            return fields, f"missing_{tag.lower()}"
        fields.append(rest[: match.start()])
        rest = rest[match.end() :]
    fields.append(rest)
    return fields, None


def parse_block(segment: str, tags: tuple[str, ...], cut_short: bool) -> Parsed:
    end = END_RE.search(segment)
    content = segment[: end.start()] if end else segment
    if end is None and cut_short:
        return Parsed((), "truncated", segment)
    raw_fields, problem = split_fields(content, tags[1:])
    if problem:
        return Parsed(tuple(clean_field(f) for f in raw_fields), problem, segment)
    fields = tuple(clean_field(f) for f in raw_fields)
    for tag, value in zip(tags, fields, strict=True):
        if not value:
            return Parsed(fields, f"empty_{tag.lower()}", segment)
    return Parsed(fields, None, segment)


def parse_tagged(text: str, tags: tuple[str, ...], finish_reason: str) -> list[Parsed]:
    """Every block opened by tags[0]; the last one counts as truncated when the reply hit
    max_tokens before its `<END>`."""
    if not text.strip():
        return [Parsed((), "empty_output")]
    starts = list(tag_re(tags[0]).finditer(text))
    if not starts:
        reason = "truncated" if finish_reason == "length" else "no_blocks"
        return [Parsed((), reason, text)]
    bounds = [m.end() for m in starts] + [len(text)]
    nexts = [m.start() for m in starts[1:]] + [len(text)]
    blocks = []
    for i, (begin, stop) in enumerate(zip(bounds, nexts, strict=False)):
        last = i == len(starts) - 1
        blocks.append(parse_block(text[begin:stop], tags, last and finish_reason == "length"))
    return blocks


def parse_qa(text: str, finish_reason: str) -> list[Parsed]:
    """`<QUE> question <ANS> answer <END>` blocks: fields (question, answer)."""
    return parse_tagged(text, ("QUE", "ANS"), finish_reason)


def parse_triple(text: str, finish_reason: str) -> list[Parsed]:
    """`<QUE> question <GOOD> chosen <BAD> rejected <END>` blocks."""
    return parse_tagged(text, ("QUE", "GOOD", "BAD"), finish_reason)


def parse_points(text: str, finish_reason: str) -> list[Parsed]:
    """`<POINT> point <END>` lines; a reply without tags falls back to its list items."""
    if text.strip() and not tag_re("POINT").search(text):
        items = [clean_field(m.group(1)) for m in LIST_ITEM_RE.finditer(text)]
        if items:
            return [Parsed((item,), None, item) for item in items if item]
    return parse_tagged(text, ("POINT",), finish_reason)


SUPPORTED_RE = re.compile(r'"supported"\s*:\s*"(yes|no)"', re.IGNORECASE)
BARE_VERDICT_RE = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_support(text: str) -> bool | None:
    """The judge's verdict: True for yes, False for no, None when the reply says neither. A
    server that does not enforce the schema may wrap the JSON in prose or answer a bare word."""
    found = SUPPORTED_RE.search(text) or BARE_VERDICT_RE.search(text)
    return found.group(1).lower() == "yes" if found else None
