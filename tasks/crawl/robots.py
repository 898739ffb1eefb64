"""robots.txt (RFC 9309, through Scrapy's protego) and sitemap parsing; pure functions."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field

from lxml import etree
from protego import Protego


@dataclass(frozen=True)
class Robots:
    """What a site's robots.txt tells our user agent.

    protego picks the group (the longest user-agent name matching our product token at a
    token boundary, else `*`) and matches paths the RFC 9309 way: the longest pattern wins,
    Allow wins a tie, and percent-encodings compare equal. Its Crawl-delay is a float, so a
    fractional delay (urllib.robotparser drops one) is kept.
    """

    parser: Protego = field(default_factory=lambda: Protego.parse(""))
    product_token: str = "*"
    crawl_delay: float | None = None
    sitemaps: list[str] = field(default_factory=list)

    def allows(self, url: str) -> bool:
        return self.parser.can_fetch(url, self.product_token)


ALLOW_ALL = Robots()


def parse_product_token(user_agent: str) -> str:
    """`docs2model-crawler/0.1 (+url)` -> `docs2model-crawler`, the name robots.txt groups use.

    Only the token is matched, not the whole header: a group named after a word in our
    contact URL must not apply to us."""
    return re.split(r"[/\s]", user_agent.strip(), maxsplit=1)[0].lower()


def parse_robots(text: str, user_agent: str) -> Robots:
    parser = Protego.parse(text)
    token = parse_product_token(user_agent)
    delay = parser.crawl_delay(token)
    # protego accepts 0; a zero delay asks for no limit, like no Crawl-delay at all
    return Robots(parser, token, delay if delay else None, list(parser.sitemaps))


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
