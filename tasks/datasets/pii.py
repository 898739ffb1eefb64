"""Personal data and secrets in documentation text, found and masked with placeholders.

Four kinds: e-mail addresses, phone numbers, IP addresses (v4 and v6) and secrets (tokens of
known shapes, private keys, and random-looking values assigned to a key, token or password).
Technical manuals are full of numbers that look like these, so each finder is strict:

- Phones are North American numbers with consistent separators ((415) 555-0100, 415-555-0100,
  415.555.0100) and international numbers written with a "+", a country code and separators
  (+44 20 7946 0958). A bare "+2147483647" is how manuals write signed limits, so the compact
  E.164 form is not matched; neither are versions, dates, times, ports, sizes, OIDs or LSNs.
- IPv4 needs four valid octets not inside a longer dotted sequence (1.2.3.4.5 is not an
  address), and is not a section number ("#### 24.2.2.1. Title", "Section 9.7.3.1") or a
  version ("version 2.3.4.5"). IPv6 candidates are validated by `ipaddress`; a compressed
  form needs a group of three or more digits besides "::1", since Python slices ([1::2]) and
  casts (x::dec) parse, and eight two-digit groups are a MAC address (macaddr8).
- A key/token/password assignment counts only when its value looks random (16+ characters,
  mixed character classes that alternate often), so `password=secret` and a documentation
  placeholder stay as they are.

Documentation examples are deliberately left unmasked: the example domains of RFC 2606 and
RFC 6761 (example.com/.net/.org, .example, .test, .invalid, .localhost) and the documentation
address ranges of RFC 5737 and RFC 3849 (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
2001:db8::/32). They identify nobody, they exist to be written in manuals, and a model
trained on the docs should learn to use them in its own examples. Every other address is
masked, loopback and private ones included; `allow` takes exact strings ("127.0.0.1") and
networks ("10.0.0.0/8") for a site whose manual is about addressing.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from itertools import pairwise

# Priority when two kinds overlap: a secret's span wins over an address inside it, and so on.
KINDS = ("secret", "email", "ip", "phone")
PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP_ADDRESS>", "secret": "<SECRET>"}

EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})\b(?!@)"
)
EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")
EXAMPLE_TLDS = frozenset({"example", "test", "invalid", "localhost"})
# "icon@2x.png" is a file name, not an address.
FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "css", "js", "html"})

NANP_RE = re.compile(  # area code and exchange start with 2-9 in the North American plan
    r"(?<![\w.+-])(?:1[-.])?"
    r"(?:\([2-9]\d\d\) ?[2-9]\d\d[-.]\d{4}|[2-9]\d\d(?P<sep>[-.])[2-9]\d\d(?P=sep)\d{4})"
    r"(?![\w]|[.-]\d)"
)
INTERNATIONAL_RE = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\)[ .-]?\d{1,8}|[ .-]\d{1,8})(?:[ .-]\d{1,8}){0,5}"
    r"(?![\w]|[.-]?\d)"
)
PHONE_DIGITS = range(8, 16)  # E.164 allows at most 15; fewer than 8 is a short code or a sum

OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(  # not inside a longer dotted run, nor an anchor like "#id-1.3.5.6"
    rf"(?<![\w.])(?<![A-Za-z]-)(?:{OCTET}\.){{3}}{OCTET}(?![\w]|\.\d)"
)
IPV6_RE = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:.]*[0-9A-Fa-f:](?:%[\w.-]*\w)?(?![\w:])"
)
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
# Manuals number their sections and versions like addresses: "#### 24.2.2.1. Standard
# Collations", "[24.2.2.1. Standard Collations](...)" in a table of contents, <h4>26.3.6.1.
# Standalone Hot Backups</h4> in HTML, "see Section 9.7.3.1", "provides version 2.3.4.5".
HEADING_PREFIX_RE = re.compile(r"(?:^|[>\"])[ \t#*\[>|-]*$")
NUMBERING_PREFIX_RE = re.compile(
    r"(?:\b(?:sections?|chapters?|appendix|versions?|releases?)|§)\s*"
    r"(?:[\d.]+\]?(?:\([^)]*\))?\s*(?:,|and|or|to|through)\s*)*\[?$",
    re.IGNORECASE,
)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TOKEN_RES = tuple(
    re.compile(pattern)
    for pattern in (
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id
        r"\bgh[pousr]_[A-Za-z0-9]{36,251}\b",  # GitHub tokens
        r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
        r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack
        r"\bAIza[0-9A-Za-z_-]{35}(?![\w-])",  # Google API key
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
        r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----[\s\S]*?"
        r"(?:-----END \1PRIVATE KEY-----|(?=\n[ \t]*\n)|\Z)",  # PEM, cut off or whole
    )
)
OPENAI_RE = re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?(?P<value>[A-Za-z0-9_-]{20,})")
BEARER_RE = re.compile(r"\b[Bb]earer\s+(?P<value>[A-Za-z0-9._~+/-]{16,}=*)")
ASSIGNMENT_RE = re.compile(
    r"(?<![\w.-])(?P<name>[A-Za-z_][\w.-]{0,63})[\"']?\s*(?:=>|:=|=|:)\s*[\"']?"
    r"(?P<value>[^\s\"'`<>,;()\[\]{}]{16,})"
)
URI_PASSWORD_RE = re.compile(r"://[^\s:/@]+:(?P<value>[^\s/@]{16,})@")
SECRET_NAME_RE = re.compile(
    r"secret|token|passw(?:or)?d|pwd|api[_-]?key|access[_-]?key|private[_-]?key|auth[_-]?key"
    r"|credential",
    re.IGNORECASE,
)
MIN_SECRET_LENGTH = 16
# Random tokens change character class (lower, upper, digit, other) at about half their
# positions; words and "password2024"-style examples rarely do at a third of them.
MIN_CLASS_CHANGES = 0.3
MIN_ENTROPY_BITS = 3.0  # per character; "aaaa1111aaaa1111" is long but not random


@dataclass(frozen=True, slots=True)
class Match:
    kind: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Scrubbed:
    text: str
    counts: Counter[str]


def make_match(kind: str, text: str, start: int, end: int) -> Match:
    return Match(kind=kind, start=start, end=end, text=text[start:end])


def is_example_domain(domain: str) -> bool:
    domain = domain.lower()
    tld = domain.rsplit(".", 1)[-1]
    return tld in EXAMPLE_TLDS or any(
        domain == d or domain.endswith("." + d) for d in EXAMPLE_DOMAINS
    )


def find_emails(text: str) -> Iterator[Match]:
    for m in EMAIL_RE.finditer(text):
        domain = m.group(1)
        if is_example_domain(domain) or domain.rsplit(".", 1)[-1].lower() in FILE_SUFFIXES:
            continue
        yield make_match("email", text, m.start(), m.end())


def count_digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def find_phones(text: str) -> Iterator[Match]:
    yield from (make_match("phone", text, m.start(), m.end()) for m in NANP_RE.finditer(text))
    for m in INTERNATIONAL_RE.finditer(text):
        if count_digits(m.group()) in PHONE_DIGITS:
            yield make_match("phone", text, m.start(), m.end())


def is_documentation_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address.version == n.version and address in n for n in DOCUMENTATION_NETWORKS)


def is_section_number(text: str, start: int, end: int) -> bool:
    """A dotted quad numbering a heading (only markup or a tag before it on its line, ". "
    after it), or named as a section or version ("Sections 9.7.3.1 and 9.7.3.2")."""
    line = text[text.rfind("\n", 0, start) + 1 : start]
    numbered = text[end : end + 1] == "." and text[end + 1 : end + 2].isspace()
    if numbered and HEADING_PREFIX_RE.search(line):
        return True
    return NUMBERING_PREFIX_RE.search(text[max(0, start - 80) : start]) is not None


def parse_ipv6(candidate: str) -> ipaddress.IPv6Address | None:
    """The address, when the candidate is one and looks like one: besides "::1", a compressed
    form needs a group of 3+ digits (a slice [1::2] or a cast x::dec parses too), and eight
    two-digit groups are an EUI-64 MAC address (macaddr8 '08:00:2b:01:02:03:04:05')."""
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    bare = candidate.split("%", 1)[0]
    if all(len(g) == 2 for g in bare.split(":")):
        return None
    if "::" in bare and bare != "::1":
        groups = [g for g in re.split(r"[:.]", bare) if g]
        if len(groups) < 2 or max(len(g) for g in groups) < 3:
            return None
    return address


def find_ip_addresses(text: str) -> Iterator[Match]:
    for m in IPV4_RE.finditer(text):
        v4 = ipaddress.IPv4Address(m.group())
        if not is_documentation_address(v4) and not is_section_number(text, *m.span()):
            yield make_match("ip", text, m.start(), m.end())
    for m in IPV6_RE.finditer(text):
        address = parse_ipv6(m.group())
        if address is not None and not is_documentation_address(address):
            yield make_match("ip", text, m.start(), m.end())


def measure_entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def classify_char(char: str) -> str:
    if char.isdigit():
        return "digit"
    if char.isalpha():
        return "upper" if char.isupper() else "lower"
    return "other"


def looks_random(value: str) -> bool:
    """A generated token rather than a word, a path or a documentation placeholder."""
    if len(value) < MIN_SECRET_LENGTH or value[0] in "$<{%[":
        return False
    classes = [classify_char(c) for c in value]
    if len({"lower", "upper", "digit"} & set(classes)) < 2:
        return False
    changes = sum(a != b for a, b in pairwise(classes))
    return (
        changes / (len(value) - 1) >= MIN_CLASS_CHANGES
        and measure_entropy(value) >= MIN_ENTROPY_BITS
    )


def find_secrets(text: str) -> Iterator[Match]:
    for pattern in TOKEN_RES:
        yield from (make_match("secret", text, m.start(), m.end()) for m in pattern.finditer(text))
    for m in OPENAI_RE.finditer(text):
        value = m.group("value")
        if any(c.isdigit() for c in value) and any(c.isalpha() for c in value):
            yield make_match("secret", text, m.start(), m.end())
    for pattern in (BEARER_RE, URI_PASSWORD_RE):
        for m in pattern.finditer(text):
            if looks_random(m.group("value")):
                yield make_match("secret", text, m.start("value"), m.end("value"))
    for m in ASSIGNMENT_RE.finditer(text):
        if SECRET_NAME_RE.search(m.group("name")) and looks_random(m.group("value")):
            yield make_match("secret", text, m.start("value"), m.end("value"))


FINDERS: dict[str, Callable[[str], Iterator[Match]]] = {
    "email": find_emails,
    "phone": find_phones,
    "ip": find_ip_addresses,
    "secret": find_secrets,
}


def check_kinds(kinds: Collection[str]) -> None:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {sorted(KINDS)}")


def overlaps(match: Match, kept: list[Match]) -> bool:
    return any(match.start < k.end and k.start < match.end for k in kept)


def parse_allowed_networks(allow: Collection[str]) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # not a network: an allowed string, compared whole
    return tuple(networks)


def is_allowed(match: Match, names: set[str], networks: tuple[IPNetwork, ...]) -> bool:
    if match.text.casefold() in names:
        return True
    if match.kind != "ip" or not networks:
        return False
    address = ipaddress.ip_address(match.text.split("%", 1)[0])
    return any(address.version == n.version and address in n for n in networks)


def find_pii(text: str, kinds: Collection[str], allow: Collection[str] = ()) -> list[Match]:
    """Matches of the given kinds, without overlaps and in text order.

    A match is not reported when its whole text is in `allow` (compared case-insensitively),
    or, for an address, when an `allow` entry that is a network ("10.0.0.0/8") contains it.
    Where matches overlap, the kind earlier in KINDS wins, then the leftmost, then the longest.
    """
    check_kinds(kinds)
    names = {a.casefold() for a in allow}
    networks = parse_allowed_networks(allow)
    kept: list[Match] = []
    for kind in (k for k in KINDS if k in kinds):
        found = sorted(FINDERS[kind](text), key=lambda m: (m.start, m.start - m.end))
        for match in found:
            if not is_allowed(match, names, networks) and not overlaps(match, kept):
                kept.append(match)
    return sorted(kept, key=lambda m: m.start)


def scrub_pii(text: str, kinds: Collection[str], allow: Collection[str] = ()) -> Scrubbed:
    """The text with each match replaced by its kind's placeholder, and counts by kind."""
    matches = find_pii(text, kinds, allow)
    parts: list[str] = []
    position = 0
    for match in matches:
        parts += [text[position : match.start], PLACEHOLDERS[match.kind]]
        position = match.end
    parts.append(text[position:])
    return Scrubbed(text="".join(parts), counts=Counter(m.kind for m in matches))
