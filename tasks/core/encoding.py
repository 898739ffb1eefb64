"""The character encoding of an HTML page's bytes, for the crawler (links) and the markdown
stage (content) alike: a byte-order mark, then the declared charset (HTTP header), then the
page's own XML declaration or <meta>, else UTF-8. Only text encodings count: Python's codec
registry also knows bytes-to-bytes transforms (base64, rot13, zlib) that decode no page."""

from __future__ import annotations

import codecs
import re

BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
XML_DECL = re.compile(rb"""^\s*<\?xml[^>]*encoding=["']([A-Za-z0-9._:-]+)["']""")
META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([^\s;\"']+)", re.I)
SNIFF_BYTES = 4096


def normalize_encoding(name: str | bytes | None) -> str | None:
    """The text codec's canonical name, or None when Python does not know it or it is not a
    text encoding."""
    if not name:
        return None
    text = name.decode("ascii", "ignore") if isinstance(name, bytes) else name
    try:
        info = codecs.lookup(text.strip())
    except LookupError:
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def parse_header_charset(content_type: str | None) -> str | None:
    """The charset of a Content-Type header value, when it names a text encoding."""
    match = HEADER_CHARSET.search(content_type or "")
    return normalize_encoding(match.group(1)) if match else None


def find_unusable_charsets(data: bytes, content_type: str | None) -> list[str]:
    """Charsets a page declares (HTTP header, XML declaration, <meta>) that name no text
    encoding Python knows, e.g. `base64` or a typo: ignored when reading, but worth a count."""
    head = data[:SNIFF_BYTES]
    in_header = HEADER_CHARSET.search(content_type or "")
    in_page = [m.group(1) for m in (XML_DECL.match(head), META_CHARSET.search(head)) if m]
    names = [in_header.group(1)] if in_header else []
    names += [name.decode("ascii", "ignore") for name in in_page]
    names = [name.strip().lower() for name in names]
    return [name for name in names if normalize_encoding(name) is None]


def detect_encoding(data: bytes, declared: str | None = None) -> str:
    """BOM, then `declared` (e.g. the HTTP charset), XML declaration, meta charset, else utf-8."""
    for bom, name in BOMS:
        if data.startswith(bom):
            return name
    head = data[:SNIFF_BYTES]
    for found in (
        normalize_encoding(declared),
        normalize_encoding(m.group(1)) if (m := XML_DECL.match(head)) else None,
        normalize_encoding(m.group(1)) if (m := META_CHARSET.search(head)) else None,
    ):
        if found:
            return found
    return "utf-8"


def choose_encoding(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """The encoding to read a page with, and how sure it is: `declared` when the sniffed one
    decodes every byte, `guessed` when it does not but a likely other one (UTF-8, then
    Windows-1252) does, `damaged` when none does and undecodable bytes will become U+FFFD."""
    sniffed = detect_encoding(data, declared)
    for n, name in enumerate(dict.fromkeys([sniffed, "utf-8", "cp1252"])):
        try:
            data.decode(name)
        except UnicodeDecodeError:
            continue
        return name, "declared" if n == 0 else "guessed"
    return sniffed, "damaged"
