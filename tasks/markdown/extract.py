"""Main-content extraction: find the part of a documentation page worth keeping.

Three paths, in order: the configured CSS selector; generic chrome removal (known chrome tags,
roles and class names, then the site's learned template: tasks.markdown.template) plus a main
container; readability-lxml, used only when the generic result looks like chrome and
readability keeps enough of the stripped body's words. Everything here is pure.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import lxml.html
from lxml.etree import ParserError, _Element

from tasks.core.encoding import detect_encoding
from tasks.core.params import MarkdownParams
from tasks.markdown.template import PageProfile, SiteTemplate, profile_body, strip_template

CHROME_TAGS = ("script", "style", "noscript", "template", "nav", "form", "button", "iframe")
CHROME_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search"}
# tags that is_chrome judges by more than tag and role
CLASSED_CHROME_TAGS = {
    "aside",
    "header",
    "footer",
    "div",
    "table",
    "ul",
    "p",
    "span",
    "section",
    "a",
}
# class/id tokens that name site chrome in common generators (DocBook, Sphinx, MkDocs, ...)
CHROME_TOKENS = {
    "breadcrumb",
    "breadcrumbs",
    "sidebar",
    "sphinxsidebar",
    "sidebarwrapper",
    "navheader",
    "navfooter",
    "navbar",
    "navigation",
    "nav",
    "menu",
    "skiplink",
    "skip",
    "pager",
    "prevnext",
    "prev",
    "next",
    "headerlink",
    "permalink",
    "footer",
    "toc-drawer",
}
# asides that are content, not chrome (footnotes, admonitions)
CONTENT_ASIDE_TOKENS = {"footnote", "note", "admonition", "topic", "tip", "warning"}
NAV_WORDS = {
    "prev",
    "previous",
    "next",
    "up",
    "home",
    "top",
    "back",
    "«",
    "»",
    "<",
    ">",
    "<<",
    ">>",
    "previous page",
    "next page",
    "previous topic",
    "next topic",
    "index",
    "modules",
}
PERMALINK_TEXTS = {"¶", "#", "§", "🔗", "link", ""}
TOKEN_SPLIT = re.compile(r"[\s_\-]+")
WORD_RE = re.compile(r"\w+")


@dataclass
class Extracted:
    """The main-content element of a page and what was learned on the way."""

    content: _Element | None
    extractor: str  # selector, generic or readability
    title: str
    product: str | None
    version: str | None
    template_blocks: int = 0  # blocks removed as the site's template


def parse_html(html: bytes, encoding: str | None = None) -> _Element | None:
    """Parse bytes into an lxml.html document; None for an empty or unparseable page."""
    if not html.strip():
        return None
    parser = lxml.html.HTMLParser(encoding=detect_encoding(html, encoding), remove_comments=True)
    try:
        return lxml.html.document_fromstring(html, parser=parser)
    except (ParserError, ValueError):
        return None


def normalize_space(text: str) -> str:
    return " ".join(text.split())


def class_tokens(el: _Element) -> set[str]:
    """Class name parts, plus the id when it is a single word (ids of sections are titles)."""
    tokens = set(TOKEN_SPLIT.split(el.get("class", "").lower())) - {""}
    element_id = el.get("id", "").lower()
    return tokens | {element_id} if element_id and not TOKEN_SPLIT.search(element_id) else tokens


def extract_title(doc: _Element) -> str:
    """The <title> text, else the first h1, else an empty string."""
    for path in ("//head/title", "//title", "//h1"):
        found = doc.xpath(path)
        if found:
            text = normalize_space(found[0].text_content())
            if text:
                return text
    return ""


def collect_header_text(doc: _Element) -> str:
    """Title plus chrome texts and link titles, where product/version names usually live."""
    parts = [extract_title(doc)]
    for el in doc.iter("header", "nav", "div", "table"):
        if (
            el.get("role") in CHROME_ROLES
            or class_tokens(el) & CHROME_TOKENS
            or el.tag
            in (
                "header",
                "nav",
            )
        ):
            parts.append(normalize_space(el.text_content())[:500])
            parts.extend(a.get("title", "") for a in el.iter("a"))
        if len(parts) > 40:
            break
    return "\n".join(p for p in parts if p)


def extract_pattern(pattern: str | None, text: str) -> str | None:
    """The first matched group (or the whole match) of the first match of pattern in text."""
    if not pattern:
        return None
    match = re.search(pattern, text)
    if not match:
        return None
    found = next((g for g in match.groups() if g), match.group(0))
    return found.strip() or None


def is_permalink(a: _Element) -> bool:
    href = a.get("href", "")
    tokens = class_tokens(a)
    if "headerlink" in tokens or "permalink" in tokens or "anchorjs" in tokens:
        return True
    return href.startswith("#") and normalize_space(a.text_content()) in PERMALINK_TEXTS - {""}


def is_skip_link(a: _Element) -> bool:
    return a.get("href", "").startswith("#") and a.text_content().strip().lower().startswith(
        "skip to"
    )


def is_nav_word(text: str) -> bool:
    """Prev/next/up/home style link text, arrows allowed ("Next »", "« Previous")."""
    return text in NAV_WORDS or text.strip(" «»\u2039\u203a<>").strip() in NAV_WORDS


def is_nav_bar(el: _Element) -> bool:
    """A small block whose links are only prev/next/up/home style links."""
    if len(normalize_space(el.text_content())) > 400:
        return False  # before reading each link: the blocks asked about are often whole pages
    links = [normalize_space(a.text_content()).lower() for a in el.iter("a")]
    if len(links) < 2:
        return False
    nav = sum(1 for text in links if is_nav_word(text))
    return nav >= 2 and nav * 2 >= len(links)


def in_main(el: _Element) -> bool:
    return any(a.tag in ("main", "article") or a.get("role") == "main" for a in el.iterancestors())


def is_chrome(el: _Element) -> bool:
    if el.tag == "nav" and el.get("role") is None and in_main(el):
        return False  # a page's own table of contents, inside its main content
    if el.tag in CHROME_TAGS:
        return True
    if el.get("role") in CHROME_ROLES:
        return True
    if el.tag not in CLASSED_CHROME_TAGS:
        return False  # before reading class names: this runs on every element of the page
    tokens = class_tokens(el)
    if el.tag == "aside":
        return not (tokens & CONTENT_ASIDE_TOKENS or el.get("role") == "note" or in_main(el))
    if el.tag in ("header", "footer"):
        return not el.xpath(".//h1")
    if el.tag in ("div", "table", "ul", "p", "span", "section", "a") and tokens & CHROME_TOKENS:
        return el.tag != "a" or is_permalink(el)
    return False


def find_nav_bars(root: _Element) -> list[_Element]:
    """Smallest blocks around prev/next/up/home links that hold only such links."""
    bars = []
    for a in root.iter("a"):
        if not is_nav_word(normalize_space(a.text_content()).lower()):
            continue
        for block in list(a.iterancestors("div", "table", "ul", "ol", "p"))[:4]:
            if is_nav_bar(block):
                bars.append(block)
                break
    return bars


def drop_element(el: _Element) -> None:
    if el.getparent() is not None:
        el.drop_tree()


def strip_chrome(root: _Element, drop_selectors: list[str]) -> None:
    """Remove chrome in place: tags, roles, chrome class names, nav bars, permalinks."""
    for selector in drop_selectors:
        for el in root.cssselect(selector):
            drop_element(el)
    doomed = [el for el in root.iter() if isinstance(el.tag, str) and is_chrome(el)]
    doomed += find_nav_bars(root)
    for el in doomed:
        drop_element(el)
    for a in [a for a in root.iter("a") if is_permalink(a) or is_skip_link(a)]:
        drop_element(a)


def word_count(el: _Element) -> int:
    return len(WORD_RE.findall(el.text_content()))


def pick_main(body: _Element) -> tuple[_Element, bool]:
    """The semantic main container (True) or the densest block under body (False)."""
    candidates = body.xpath(".//main | .//*[@role='main'] | .//article")
    if candidates:
        best = max(candidates, key=word_count)
        if word_count(best) * 2 >= word_count(body):
            return best, True
    return descend_dominant(body), False


def descend_dominant(el: _Element) -> _Element:
    """Walk down through wrappers whose only text lives in a single child."""
    while True:
        if (el.text or "").strip():
            return el
        texty = [c for c in el if isinstance(c.tag, str) and c.text_content().strip()]
        loose = any((c.tail or "").strip() for c in el)
        if len(texty) != 1 or loose:
            return el
        el = texty[0]


def link_density(el: _Element) -> float:
    words = word_count(el)
    linked = sum(word_count(a) for a in el.iter("a"))
    return linked / words if words else 1.0


def word_recall(candidate: str, reference: str) -> float:
    ref = Counter(w.lower() for w in WORD_RE.findall(reference))
    if not ref:
        return 0.0
    got = Counter(w.lower() for w in WORD_RE.findall(candidate))
    return sum((ref & got).values()) / sum(ref.values())


def extract_readability(html: bytes, encoding: str) -> _Element | None:
    """readability-lxml's summary, parsed, or None when it fails."""
    from readability import Document  # slow import; only this fallback needs it

    try:
        summary = Document(html.decode(encoding, errors="replace")).summary(html_partial=True)
    except Exception:  # readability raises bare Exceptions on odd pages
        return None
    found = lxml.html.fragment_fromstring(summary, create_parent="div")
    return found if word_count(found) else None


def find_body(doc: _Element) -> _Element:
    body = doc.find("body")
    return body if body is not None else doc


def is_redirect(doc: _Element) -> bool:
    """A page that sends the reader on at once (<meta http-equiv="refresh">)."""
    return any(meta.get("http-equiv", "").strip().lower() == "refresh" for meta in doc.iter("meta"))


def profile_page(html: bytes, params: MarkdownParams, encoding: str | None = None) -> PageProfile:
    """The page's blocks as the template learner sees them: after the known chrome is gone.
    Empty for a page that redirects at once: generators write thousands of such stubs (Texinfo,
    one per cross-reference anchor), none with the site's template."""
    doc = parse_html(html, encoding)
    if doc is None or is_redirect(doc):
        return {}
    body = find_body(doc)
    strip_chrome(body, params.drop_selectors)
    return profile_body(body)


def extract_generic(
    html: bytes, doc: _Element, params: MarkdownParams, encoding: str, template: SiteTemplate
) -> tuple[_Element, str, int]:
    """Chrome-stripped main container; readability only when that still looks like chrome."""
    body = find_body(doc)
    strip_chrome(body, params.drop_selectors)
    removed = strip_template(body, template)
    main, semantic = pick_main(body)
    # a page with no main landmark, no headings and mostly links is probably left chrome
    if semantic or main.xpath(".//h1 | .//h2 | .//h3") or link_density(main) <= 0.5:
        return main, "generic", removed
    candidate = extract_readability(html, encoding)
    if candidate is not None:
        recall = word_recall(candidate.text_content(), body.text_content())
        if recall >= params.readability_min_recall:
            return candidate, "readability", removed
    return main, "generic", removed


def select_content(doc: _Element, selector: str) -> _Element | None:
    """The selector's matches, outermost only, wrapped in one div when there are several."""
    found = doc.cssselect(selector)
    outer = [el for el in found if not any(a in found for a in el.iterancestors())]
    if len(outer) <= 1:
        return outer[0] if outer else None
    wrapper = lxml.html.Element("div")
    wrapper.extend(outer)
    return wrapper


def extract_content(
    html: bytes,
    params: MarkdownParams,
    encoding: str | None = None,
    template: SiteTemplate | None = None,
) -> Extracted:
    """Find a page's main content, title, product and version; `template` is the site's
    learned template (tasks.markdown.template), used by the generic path only."""
    doc = parse_html(html, encoding)
    if doc is None:
        return Extracted(None, "none", "", None, None)
    header = collect_header_text(doc)
    title = extract_title(doc)
    product = extract_pattern(params.product_pattern, header)
    version = extract_pattern(params.version_pattern, header)
    if params.content_selector:
        content = select_content(doc, params.content_selector)
        if content is not None:
            strip_chrome(content, params.drop_selectors)
        return Extracted(content, "selector", title, product, version)
    charset = detect_encoding(html, encoding)
    content, extractor, removed = extract_generic(
        html, doc, params, charset, template or SiteTemplate()
    )
    return Extracted(content, extractor, title, product, version, removed)
