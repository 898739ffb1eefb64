"""What the crawler reads from a fetched page: its encoding, its links, its canonical URL."""

from __future__ import annotations

import codecs
import re

from lxml import etree

BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
XML_DECL = re.compile(rb"""^\s*<\?xml[^>]*encoding=["']([A-Za-z0-9._:-]+)["']""")
META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
SNIFF_BYTES = 4096
SKIP_SCHEMES = ("javascript:", "mailto:", "tel:", "data:")


def normalize_encoding(name: str | bytes | None) -> str | None:
    """The codec's canonical name, or None when Python does not know it."""
    if not name:
        return None
    text = name.decode("ascii", "ignore") if isinstance(name, bytes) else name
    try:
        return codecs.lookup(text.strip()).name
    except LookupError:
        return None


def parse_header_charset(content_type: str | None) -> str | None:
    match = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", content_type or "", re.I)
    return normalize_encoding(match.group(1)) if match else None


def detect_encoding(data: bytes, content_type: str | None) -> str:
    """BOM, then the header charset, then the XML declaration or <meta>, else utf-8."""
    for bom, name in BOMS:
        if data.startswith(bom):
            return name
    head = data[:SNIFF_BYTES]
    for found in (
        parse_header_charset(content_type),
        normalize_encoding(m.group(1)) if (m := XML_DECL.match(head)) else None,
        normalize_encoding(m.group(1)) if (m := META_CHARSET.search(head)) else None,
    ):
        if found:
            return found
    return "utf-8"


def parse_html(data: bytes, encoding: str) -> etree._Element | None:
    # Plain etree elements: lxml.html's element classes cost a Python lookup per node.
    parser = etree.HTMLParser(encoding=encoding, remove_comments=True, collect_ids=False)
    try:
        return etree.fromstring(data, parser=parser)
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return None


def extract_links(data: bytes, encoding: str) -> tuple[list[str], str | None, str | None]:
    """(<a href> values in document order, <link rel=canonical> href, <base href>), unresolved."""
    root = parse_html(data, encoding)
    if root is None:
        return [], None, None
    hrefs = [
        href.strip()
        for el in root.iter("a")
        if (href := el.get("href")) and not href.strip().lower().startswith(SKIP_SCHEMES)
    ]
    canonical = next(
        (
            el.get("href")
            for el in root.iter("link")
            if "canonical" in (el.get("rel") or "").lower().split() and el.get("href")
        ),
        None,
    )
    base = next((el.get("href") for el in root.iter("base") if el.get("href")), None)
    return hrefs, canonical, base
