"""robots.txt (RFC 9309, plus fractional Crawl-delay) and sitemap parsing; pure functions."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lxml import etree


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str
    regex: re.Pattern[str]


@dataclass
class Robots:
    """The rules of the one group that applies to our user agent."""

    rules: list[Rule] = field(default_factory=list)
    crawl_delay: float | None = None
    sitemaps: list[str] = field(default_factory=list)
    disallow_all: bool = False

    def allows(self, url: str) -> bool:
        """Longest matching pattern wins; on a tie Allow wins (RFC 9309 section 2.2.2)."""
        if self.disallow_all:
            return False
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        best: Rule | None = None
        for rule in self.rules:
            if rule.regex.match(target) and (
                best is None
                or len(rule.pattern) > len(best.pattern)
                or (len(rule.pattern) == len(best.pattern) and rule.allow)
            ):
                best = rule
        return best is None or best.allow


ALLOW_ALL = Robots()


def parse_pattern(pattern: str) -> re.Pattern[str]:
    anchored = pattern.endswith("$")
    body = re.escape(pattern.rstrip("$") if anchored else pattern).replace(r"\*", ".*")
    return re.compile(body + ("$" if anchored else ""))


def parse_product_token(user_agent: str) -> str:
    """`docs2model-crawler/0.1 (+url)` -> `docs2model-crawler`, the name robots.txt groups use."""
    return re.split(r"[/\s]", user_agent.strip(), maxsplit=1)[0].lower()


def parse_robots_lines(text: str) -> list[tuple[str, str]]:
    lines = []
    for raw in text.splitlines():
        key, sep, value = raw.split("#", 1)[0].partition(":")
        if sep:
            lines.append((key.strip().lower(), value.strip()))
    return lines


def parse_groups(lines: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Agent name -> its rule lines; consecutive user-agent lines share one group."""
    groups: dict[str, list[tuple[str, str]]] = {}
    agents: list[str] = []
    in_rules = False
    for key, value in lines:
        if key == "user-agent":
            if in_rules:
                agents, in_rules = [], False
            agents.append(value.lower())
            for agent in agents:
                groups.setdefault(agent, [])
        elif key in ("allow", "disallow", "crawl-delay") and agents:
            in_rules = True
            for agent in agents:
                groups[agent].append((key, value))
    return groups


def select_group(groups: dict[str, list[tuple[str, str]]], token: str) -> list[tuple[str, str]]:
    named = [a for a in groups if a != "*" and a in token]
    if named:
        return groups[max(named, key=len)]
    return groups.get("*", [])


def parse_crawl_delay(value: str) -> float | None:
    try:
        delay = float(value)
    except ValueError:
        return None
    return delay if delay > 0 else None


def parse_robots(text: str, user_agent: str) -> Robots:
    lines = parse_robots_lines(text)
    robots = Robots(sitemaps=[v for k, v in lines if k == "sitemap" and v])
    for key, value in select_group(parse_groups(lines), parse_product_token(user_agent)):
        if key == "crawl-delay":
            robots.crawl_delay = parse_crawl_delay(value)
        elif value:  # an empty Disallow allows everything, so it adds no rule
            robots.rules.append(Rule(key == "allow", value, parse_pattern(value)))
    return robots


def parse_sitemap(data: bytes) -> tuple[list[str], list[str]]:
    """(page URLs, nested sitemap URLs) from a urlset or sitemapindex, gzipped or not."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        root = etree.fromstring(data, parser=etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError:
        return [], []
    locs = [
        (el.getparent().tag.rsplit("}", 1)[-1], (el.text or "").strip())
        for el in root.iter("{*}loc")
        if el.getparent() is not None
    ]
    pages = [loc for parent, loc in locs if parent == "url" and loc]
    nested = [loc for parent, loc in locs if parent == "sitemap" and loc]
    return pages, nested
