"""URL normalisation, crawl scope and trap guards: pure functions of a URL and the params."""

from __future__ import annotations

import functools
import posixpath
import re
from collections import Counter
from urllib.parse import urljoin, urlsplit, urlunsplit

from tasks.core.params import CrawlParams

DEFAULT_PORTS = {"http": 80, "https": 443}

# Assets that are never documentation pages; anything else is fetched and judged by Content-Type.
_ASSET_EXTENSIONS = """
    7z avi bmp bz2 css csv dmg doc docx eot epub exe gif gz ico jar jpeg jpg js json map mjs
    mov mp3 mp4 ogg otf pdf png ppt pptx ps rar rss svg tar tgz tif tiff ttf txt wasm wav webm
    webp woff woff2 xls xlsx xml xz zip
"""
NON_HTML_EXTENSIONS = frozenset(_ASSET_EXTENSIONS.split())


UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def normalize_escapes(path: str) -> str:
    """RFC 3986 section 6.2.2: percent-escapes of unreserved characters decoded, the rest in
    upper case. Done before dot segments are removed, so that `%2e%2e/` is the `../` that
    servers and HTTP libraries take it for, and scope and robots see the path actually sent."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in UNRESERVED else match.group(0).upper()

    path = PERCENT_ESCAPE.sub(fix, path) if "%" in path else path
    # Spaces and control characters go on the wire percent-encoded; encoding them here also
    # keeps normalisation idempotent (a trailing one would be stripped as whitespace).
    return CONTROL_OR_SPACE.sub(lambda m: f"%{ord(m.group(0)):02X}", path)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, keeping a trailing slash since /a/ and /a are different pages."""
    if not path:
        return "/"
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


def normalize_host(scheme: str, netloc: str) -> str | None:
    """Lowercase host, default port dropped; None when the port is not a number."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    userinfo = netloc.rpartition("@")[0] + "@" if "@" in netloc else ""
    keep_port = port is not None and DEFAULT_PORTS.get(scheme) != port
    return f"{userinfo}{host}:{port}" if keep_port else f"{userinfo}{host}"


def normalize_query(query: str) -> str:
    """Sort the raw `k=v` pieces (no re-encoding, so it is stable) and drop empty ones."""
    return "&".join(sorted(piece for piece in query.split("&") if piece))


def normalize_link(href: str, base: str) -> str | None:
    """normalize_url for a link on a page, cached: a relative path depends only on the base's
    folder, and documentation pages repeat the same navigation links on every page."""
    if href and not href.startswith(("/", "?", "#")) and ":" not in href:
        return normalize_url_cached(href, base[: base.rfind("/") + 1])
    return normalize_url(href, base)


@functools.lru_cache(maxsize=65536)
def normalize_url_cached(href: str, base: str) -> str | None:
    return normalize_url(href, base)


def normalize_url(url: str, base: str | None = None) -> str | None:
    """Canonical absolute http(s) URL, or None for other schemes and malformed URLs."""
    try:
        absolute = urljoin(base, url.strip()) if base else url.strip()
        parts = urlsplit(absolute)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.netloc:
        return None
    netloc = normalize_host(scheme, parts.netloc)
    if not netloc:
        return None
    path = remove_dot_segments(normalize_escapes(parts.path))
    return urlunsplit((scheme, netloc, path, normalize_query(parts.query), ""))


def is_in_scope(url: str, scope: list[str]) -> bool:
    return any(url.startswith(prefix) for prefix in scope)


def normalize_scope(scope: list[str]) -> list[str]:
    return sorted({n for n in (normalize_url(s) for s in scope) if n})


def looks_like_html(url: str) -> bool:
    """False for URLs whose extension names an asset; the Content-Type decides the rest."""
    last = urlsplit(url).path.rsplit("/", 1)[-1]
    ext = posixpath.splitext(last)[1].lstrip(".").lower()
    return ext not in NON_HTML_EXTENSIONS


def parse_path_segments(url: str) -> list[str]:
    return [s for s in urlsplit(url).path.split("/") if s]


def extract_trap_reason(url: str, params: CrawlParams) -> str | None:
    """Why a URL looks like a crawler trap (generated, ever-deeper URLs), or None."""
    if len(url) > params.max_url_length:
        return "trap_url_too_long"
    segments = parse_path_segments(url)
    if len(segments) > params.max_path_segments:
        return "trap_too_many_segments"
    if segments and Counter(segments).most_common(1)[0][1] > params.max_segment_repeats:
        return "trap_repeated_segment"
    return None


DIGITS = re.compile(r"\d+")
QUERY_VALUE = re.compile(r"=[^&]*")


def parse_url_pattern(url: str) -> str | None:
    """The URL with its query values and the digits of its path abstracted (`/cal?d=*`,
    `/list/{n}/`), or None when it has neither and so is a pattern of one."""
    parts = urlsplit(url)
    if not parts.query and not DIGITS.search(parts.path):
        return None
    path = DIGITS.sub("{n}", parts.path)
    return urlunsplit((parts.scheme, parts.netloc, path, QUERY_VALUE.sub("=*", parts.query), ""))


def compile_excludes(patterns: list[str]) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in patterns]


def extract_skip_reason(
    url: str, scope: list[str], excludes: list[re.Pattern[str]], params: CrawlParams
) -> str | None:
    """Why a normalised URL must not be fetched at all, or None when it may be."""
    if not is_in_scope(url, scope):
        return "out_of_scope"
    if any(p.search(url) for p in excludes):
        return "excluded"
    if not looks_like_html(url):
        return "not_html_url"
    return extract_trap_reason(url, params)


HASH_ROUTE_PREFIXES = ("/", "!/")


def strip_fragment(url: str) -> str:
    """The URL a server is asked for: a fragment never goes on the wire."""
    return url.split("#", 1)[0]


def normalize_hash_route(href: str, base: str) -> str | None:
    """A link to a client-side hash route (`#/guide`, `#!/guide`) with the route kept, since on
    a site routed that way each route is a page of its own; None for any other link."""
    target, _, fragment = href.partition("#")
    if not fragment.startswith(HASH_ROUTE_PREFIXES):
        return None
    page = normalize_link(target, base) if target else normalize_url(strip_fragment(base))
    return f"{page}#{fragment}" if page else None
