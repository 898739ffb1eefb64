"""Documentation sites built by JavaScript in the browser, for the crawler's tests and benchmark.

`build_js_site` is a docs site of the kind many vendor portals serve: every page is the same
near-empty HTML shell, and a script fetches the page's content from a JSON endpoint and builds
it. `build_static_twin` is the same content as server-rendered HTML, the reference a rendering
crawl should match. `build_routed_site` is a single-page app routed on the client, with real
paths (history.pushState) or hash routes (#/guide). Each returns {path: bytes} for any server.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

TOPICS = (
    "Installing the server",
    "Configuring connections",
    "Managing roles",
    "Backing up data",
    "Restoring a backup",
    "Tuning memory",
    "Monitoring activity",
    "Upgrading a cluster",
    "Replicating changes",
    "Writing extensions",
)
SHELL_TITLE = "Loading documentation"


@dataclass(frozen=True)
class Section:
    heading: str
    paragraphs: tuple[str, ...]
    code: str
    table: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class DocPage:
    name: str  # docs/<name>.html, api/<name>.json
    title: str
    sections: tuple[Section, ...]
    links: tuple[str, ...]  # names of the pages it links to


def build_section(topic: str, page: int, n: int) -> Section:
    key = f"{topic.split()[-1].lower()}_{page}_{n}"
    return Section(
        heading=f"{topic}: step {n + 1}",
        paragraphs=(
            f"This step of {topic.lower()} explains how the setting {key} changes what the "
            f"server does, and why the default of {page * 10 + n} suits most installations.",
            f"Set {key} before the first start; a running server reads it again only after a "
            "reload, and logs the value it used so that operators can check it.",
        ),
        code=f"server configure --set {key}={page * 10 + n}\nserver reload --wait",
        table=(("Setting", "Default", "Unit"), (key, str(page * 10 + n), "seconds")),
    )


def build_pages(n_pages: int) -> list[DocPage]:
    """`index` and page-1 .. page-(n-1): the index links to every page, each page to its
    neighbours and back to the index."""
    names = ["index"] + [f"page-{i}" for i in range(1, n_pages)]
    pages = []
    for i, name in enumerate(names):
        topic = TOPICS[i % len(TOPICS)] + (f" ({i // len(TOPICS) + 1})" if i >= len(TOPICS) else "")
        links = names[1:] if i == 0 else ["index", names[i - 1], names[(i + 1) % n_pages]]
        sections = tuple(build_section(topic, i, n) for n in range(3))
        pages.append(DocPage(name, topic, sections, tuple(dict.fromkeys(links))))
    return pages


def render_section_html(section: Section) -> str:
    """The markup app.js builds for a section, character for character."""
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in section.paragraphs)
    head, *rows = section.table
    cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return (
        f"<section><h2>{html.escape(section.heading)}</h2>{paragraphs}"
        f"<pre><code>{html.escape(section.code)}</code></pre>"
        f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table></section>"
    )


def render_page_html(page: DocPage) -> str:
    nav = "".join(f'<li><a href="{n}.html">{n}</a></li>' for n in page.links)
    sections = "".join(render_section_html(s) for s in page.sections)
    return f"<nav><ul>{nav}</ul></nav><main><h1>{html.escape(page.title)}</h1>{sections}</main>"


def render_twin(page: DocPage) -> bytes:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(page.title)}</title></head>"
        f'<body><div id="root">{render_page_html(page)}</div></body></html>'
    ).encode()


def render_shell(tracker_url: str | None) -> bytes:
    """The one page the server sends for every document: no content of its own."""
    tracker = f"<script>window.TRACKER = {json.dumps(tracker_url)};</script>" if tracker_url else ""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{SHELL_TITLE}</title>{tracker}"
        '<script src="../static/app.js" defer></script></head>'
        '<body><div id="root"></div>'
        "<noscript>This documentation needs JavaScript.</noscript></body></html>"
    ).encode()


def page_json(page: DocPage) -> bytes:
    sections = [
        {"heading": s.heading, "paragraphs": s.paragraphs, "code": s.code, "table": s.table}
        for s in page.sections
    ]
    data = {"title": page.title, "sections": sections, "links": page.links}
    return json.dumps(data, indent=1).encode()


# Builds exactly the markup of render_page_html. A tracker, when the shell names one, is
# pinged (an image and a fetch) to check the crawler keeps the browser off other hosts.
APP_JS = """
(function () {
  function el(tag, text) {
    var node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function section(s) {
    var node = el("section");
    node.appendChild(el("h2", s.heading));
    s.paragraphs.forEach(function (p) { node.appendChild(el("p", p)); });
    var pre = el("pre");
    pre.appendChild(el("code", s.code));
    node.appendChild(pre);
    var table = el("table"), thead = el("thead"), tbody = el("tbody"), head = el("tr");
    s.table[0].forEach(function (c) { head.appendChild(el("th", c)); });
    thead.appendChild(head);
    s.table.slice(1).forEach(function (row) {
      var tr = el("tr");
      row.forEach(function (c) { tr.appendChild(el("td", c)); });
      tbody.appendChild(tr);
    });
    table.appendChild(thead);
    table.appendChild(tbody);
    node.appendChild(table);
    return node;
  }
  function render(page) {
    document.title = page.title;
    var nav = el("nav"), ul = el("ul");
    page.links.forEach(function (name) {
      var li = el("li"), a = el("a", name);
      a.setAttribute("href", name + ".html");
      li.appendChild(a);
      ul.appendChild(li);
    });
    nav.appendChild(ul);
    var main = el("main");
    main.appendChild(el("h1", page.title));
    page.sections.forEach(function (s) { main.appendChild(section(s)); });
    var root = document.getElementById("root");
    root.appendChild(nav);
    root.appendChild(main);
  }
  if (window.TRACKER) {
    new Image().src = window.TRACKER + "?image";
    fetch(window.TRACKER + "?fetch").catch(function () {});
  }
  var name = location.pathname.split("/").pop().replace(/\\.html$/, "") || "index";
  fetch("../api/" + name + ".json", {credentials: "same-origin"})
    .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
    .then(render)
    .catch(function (e) { document.getElementById("root").textContent = "Error: " + e; });
})();
"""


def build_js_site(n_pages: int = 10, tracker_url: str | None = None) -> dict[str, bytes]:
    """docs/<name>.html (all the same shell), api/<name>.json and static/app.js."""
    files = {"static/app.js": APP_JS.encode()}
    shell = render_shell(tracker_url)
    for page in build_pages(n_pages):
        files[f"docs/{page.name}.html"] = shell
        files[f"api/{page.name}.json"] = page_json(page)
    return files


def build_static_twin(n_pages: int = 10) -> dict[str, bytes]:
    """The same pages rendered on the server, at twin/<name>.html."""
    return {f"twin/{p.name}.html": render_twin(p) for p in build_pages(n_pages)}


ROUTER_JS = """
(function () {
  var routes = ROUTES, hash = HASH;
  function current() {
    var key = hash ? (location.hash.slice(1) || "/") : location.pathname;
    return routes[key] ? key : null;
  }
  function render() {
    var key = current(), root = document.getElementById("app");
    root.innerHTML = "";
    var nav = document.createElement("nav");
    Object.keys(routes).forEach(function (k) {
      var a = document.createElement("a");
      a.textContent = routes[k].title;
      a.setAttribute("href", hash ? "#" + k : k);
      if (!hash) a.addEventListener("click", function (e) {
        e.preventDefault();
        history.pushState(null, "", k);
        render();
      });
      nav.appendChild(a);
    });
    root.appendChild(nav);
    var main = document.createElement("main"), h1 = document.createElement("h1");
    h1.textContent = key ? routes[key].title : "Not found";
    main.appendChild(h1);
    if (key) routes[key].paragraphs.forEach(function (text) {
      var p = document.createElement("p");
      p.textContent = text;
      main.appendChild(p);
    });
    root.appendChild(main);
  }
  window.addEventListener("popstate", render);
  window.addEventListener("hashchange", render);
  render();
})();
"""


def build_routes(prefix: str) -> dict[str, dict[str, object]]:
    routes: dict[str, dict[str, object]] = {}
    for i, topic in enumerate(TOPICS[:4]):
        key = prefix if i == 0 else f"{prefix}{topic.split()[-1].lower()}"
        paragraphs = [
            f"{topic} is covered on this route; the router builds it from the path.",
            f"Route {i} keeps its own text so that every route is a page of its own.",
        ]
        routes[key] = {"title": topic, "paragraphs": paragraphs}
    return routes


def build_routed_site(hash_routes: bool = False) -> tuple[bytes, list[str]]:
    """(the one shell every route is served, the routes): real paths under /app/ routed with
    history.pushState, or hash routes (#/, #/connections, ...) on one page."""
    routes = build_routes("/" if hash_routes else "/app/")
    script = ROUTER_JS.replace("ROUTES", json.dumps(routes)).replace(
        "HASH", json.dumps(hash_routes)
    )
    shell = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>App</title></head>"
        f'<body><div id="app"></div><script>{script}</script></body></html>'
    ).encode()
    return shell, list(routes)
