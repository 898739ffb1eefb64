"""The markdown stage end to end on real pages: outputs, reading order, and incrementality
(only changed pages are converted again; vanished pages lose their file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.core.documents import parse_document
from tasks.core.procs import free_port
from tasks.markdown.build import build_markdown
from tests.support.fixture_site import FIXTURE_SITE, PARAMS, crawl


@pytest.fixture(scope="module")
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokenizers")


def snapshot(md_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(md_dir.iterdir())}


def test_converts_pages_in_reading_order_with_front_matter(
    tmp_path: Path, tokenizer_cache: Path
) -> None:
    crawl(FIXTURE_SITE, tmp_path / "raw")
    report = build_markdown(tmp_path / "raw", tmp_path / "md", PARAMS, tokenizer_cache)

    assert report["pages_in"] == report["pages_out"] == 4
    assert report["converted"] == 4 and report["reused"] == 0
    ((version, pages),) = report["versions"].items()  # the fixture pages: one docs version
    assert version.startswith("PostgreSQL 15.") and pages == 4
    assert 0 < report["markdown_tokens"] < report["html_tokens"]
    lines = (tmp_path / "md" / "index.jsonl").read_text().splitlines()
    index = [json.loads(line) for line in lines]
    assert Path(index[0]["url"]).name == "backup.html"  # the chapter page leads, as on the site
    for row in index:
        doc, body = parse_document((tmp_path / "md" / f"{row['id']}.md").read_text())
        assert (doc.product, doc.version) == ("PostgreSQL", row["version"])
        assert doc.version and doc.version.startswith("15.")
        assert body.startswith("## ") and "Prev" not in body.splitlines()[0]
    dump = next(d for d in index if d["url"].endswith("backup-dump.html"))
    body = (tmp_path / "md" / f"{dump['id']}.md").read_text()
    assert "```\npg_dump dbname > dumpfile\n```" in body


def test_only_changed_pages_are_converted_again(tmp_path: Path, tokenizer_cache: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(FIXTURE_SITE, site)
    raw, md, port = tmp_path / "raw", tmp_path / "md", free_port()
    crawl(site, raw, port)
    build_markdown(raw, md, PARAMS, tokenizer_cache)
    before = snapshot(md)

    again = build_markdown(raw, md, PARAMS, tokenizer_cache)
    assert (again["converted"], again["reused"]) == (0, 4)
    assert snapshot(md) == before
    # the worker count changes where pages are converted, not how: nothing is redone
    workers = PARAMS.model_copy(update={"workers": PARAMS.workers + 1})
    assert build_markdown(raw, md, workers, tokenizer_cache)["converted"] == 0
    assert snapshot(md) == before

    page = site / "backup-file.html"
    page.write_bytes(page.read_bytes().replace(b"file system", b"filesystem"))
    crawl(site, raw, port)
    changed = build_markdown(raw, md, PARAMS, tokenizer_cache)
    assert (changed["converted"], changed["reused"]) == (1, 3)
    after = snapshot(md)
    differing = {name for name in before if before[name] != after.get(name)}
    # the index holds each page's sha, profiles.jsonl each page's profile for the template
    pages = differing - {"state.json", "index.jsonl", "profiles.jsonl"}
    assert len(pages) == 1
    assert "filesystem" in after[pages.pop()].decode()


def test_params_change_reconverts_and_vanished_pages_are_removed(
    tmp_path: Path, tokenizer_cache: Path
) -> None:
    site = tmp_path / "site"
    shutil.copytree(FIXTURE_SITE, site)
    raw, md, port = tmp_path / "raw", tmp_path / "md", free_port()
    crawl(site, raw, port)
    build_markdown(raw, md, PARAMS, tokenizer_cache)

    selector = PARAMS.model_copy(update={"drop_selectors": ["div.toc"]})
    assert build_markdown(raw, md, selector, tokenizer_cache)["converted"] == 4

    (site / "backup-file.html").unlink()
    crawl(site, raw, port)
    report = build_markdown(raw, md, selector, tokenizer_cache)
    assert report["pages_out"] == 3 and report["converted"] == 0
    assert len(list(md.glob("*.md"))) == 3


def test_a_page_in_another_encoding_than_declared_is_read_right_and_damage_is_counted(
    tmp_path: Path, tokenizer_cache: Path
) -> None:
    site = tmp_path / "site"
    shutil.copytree(FIXTURE_SITE, site)
    latin = site / "backup-file.html"  # declares UTF-8, but is saved as Windows-1252
    text = latin.read_text("utf-8").replace("file system", "système de fichiers", 1)
    latin.write_bytes(text.encode("cp1252", errors="xmlcharrefreplace"))
    broken = site / "backup-dump.html"  # bytes no likely encoding decodes (0x81: none in 1252)
    broken.write_bytes(broken.read_bytes().replace(b"pg_dump", b"pg_\x81\xffdump", 1))
    crawl(site, tmp_path / "raw", free_port())
    report = build_markdown(tmp_path / "raw", tmp_path / "md", PARAMS, tokenizer_cache)

    assert report["encoding"]["guessed"] == 1 and report["encoding"]["damaged"] == 1
    assert report["encoding"]["replacement_chars"] >= 1
    bodies = {p.name: p.read_text() for p in (tmp_path / "md").glob("*.md")}
    assert any("système de fichiers" in b for b in bodies.values())
    damaged = report["encoding"]["pages_with_replacement_chars"]
    assert [name for name, b in bodies.items() if "\ufffd" in b] == [f"{damaged[0]}.md"]
