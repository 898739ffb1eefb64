"""robots.txt (RFC 9309, through Scrapy's protego) and sitemap parsing; pure functions."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

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


def decode_robots(body: bytes, truncated: bool) -> str:
    """robots.txt as text; one cut at the size cap loses its partial last line, since a rule cut
    short (`Allow: /private/pub` of `Allow: /private/public/`) would say more than it did."""
    if truncated:
        body = body[: body.rfind(b"\n") + 1]
    return body.decode("utf-8", "replace")


def parse_robots(text: str, user_agent: str) -> Robots:
    parser = Protego.parse(text)
    token = parse_product_token(user_agent)
    delay = parser.crawl_delay(token)
    # protego accepts 0; a zero delay asks for no limit, like no Crawl-delay at all
    return Robots(parser, token, delay if delay else None, list(parser.sitemaps))


GZIP_MAGIC = b"\x1f\x8b"
SITEMAP_CHUNK = 256 * 1024
# The sitemap protocol's own limit on an uncompressed sitemap.
MAX_SITEMAP_BYTES = 50_000_000


class Sitemap(NamedTuple):
    pages: list[str]
    nested: list[str]  # sitemaps listed by a sitemap index
    problem: str | None = None  # capped (read up to the cap), invalid_xml, invalid_gzip


def parse_sitemap(data: bytes, max_bytes: int = MAX_SITEMAP_BYTES) -> Sitemap:
    """Page and nested sitemap URLs of a urlset or sitemapindex, gzipped or not, reading at most
    max_bytes of XML. Inflated and parsed a chunk at a time: a 1 MB gzip can hold 1 GB of XML,
    and what came before the cap (or before broken XML) is kept."""
    parser = etree.XMLPullParser(
        events=("end",), tag=("{*}url", "{*}sitemap"), resolve_entities=False, no_network=True
    )
    found = Sitemap([], [])
    size = 0
    try:
        for chunk in inflate_chunks(data, max_bytes):
            parser.feed(chunk[: max_bytes - size])
            size += len(chunk)
            collect_locs(parser, found)
            if size > max_bytes:
                return found._replace(problem="capped")
        parser.close()
    except etree.XMLSyntaxError:
        return found._replace(problem="invalid_xml")
    except zlib.error:
        return found._replace(problem="invalid_gzip")
    collect_locs(parser, found)
    return found


def inflate_chunks(data: bytes, max_bytes: int) -> Iterator[bytes]:
    """The XML of a sitemap, gunzipped when it is gzip, in chunks, stopping past max_bytes."""
    if data[:2] != GZIP_MAGIC:
        yield data
        return
    size = 0
    while data and size <= max_bytes:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while data and not inflater.eof and size <= max_bytes:
            chunk = inflater.decompress(data, SITEMAP_CHUNK)
            data = inflater.unconsumed_tail
            size += len(chunk)
            yield chunk
        data = inflater.unused_data  # gzip allows several members, one after the other


def collect_locs(parser: etree.XMLPullParser, found: Sitemap) -> None:
    for _, element in parser.read_events():
        loc = (element.findtext("{*}loc") or "").strip()
        if loc:
            listed = found.pages if etree.QName(element).localname == "url" else found.nested
            listed.append(loc)
        # Keep memory flat: drop each entry, and the ones before it, once it is read.
        element.clear()
        while element.getprevious() is not None:
            del element.getparent()[0]
