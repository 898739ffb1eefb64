"""params.yaml validation: bad values fail before any work, naming the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.core.params import (
    CrawlParams,
    MarkdownParams,
    ParamsError,
    load_params,
    load_stage_params,
)

REPO = Path(__file__).resolve().parents[2]
SERVED = {"base_url": "http://127.0.0.1:8851/v1", "model": "docs2model"}


def write_params(tmp_path: Path, **overrides: dict) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_params_are_valid() -> None:
    crawl = load_params("crawl", CrawlParams, REPO / "params.yaml")
    markdown = load_params("markdown", MarkdownParams, REPO / "params.yaml")
    assert crawl.start_urls and crawl.scope
    assert 0 < markdown.readability_min_recall <= 1


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ({"crawl": {"max_pages": 0}}, "crawl.max_pages", "greater than or equal to 1"),
        ({"crawl": {"requests_per_second": -1}}, "crawl.requests_per_second", "greater than 0"),
        ({"crawl": {"start_urls": ["ftp://x/y"]}}, "crawl.start_urls.0", "http(s) URL"),
        ({"crawl": {"start_urls": []}}, "crawl.start_urls", "at least 1 item"),
        ({"crawl": {"concurency": 4}}, "crawl.concurency", "Extra inputs are not permitted"),
        ({"crawl": {"timeout_s": "soon"}}, "crawl.timeout_s", "valid number"),
        ({"markdown": {"readability_min_recall": 1.5}}, "markdown.readability_min_recall", "1"),
        ({"markdown": {"content_selector": " "}}, "markdown.content_selector", "non-empty"),
        ({"markdown": {"content_selector": "div[role="}}, "markdown.content_selector", "CSS"),
        ({"markdown": {"drop_selectors": ["nav", "a::"]}}, "markdown.drop_selectors.1", "CSS"),
        ({"markdown": {"product_pattern": "(Post"}}, "markdown.product_pattern", "regular exp"),
        ({"crawl": {"exclude": ["ok", "[a-"]}}, "crawl.exclude.1", "regular expression"),
        ({"cluster": {"address": "scheduler:8786"}}, "cluster.address", "tcp://host:8786"),
        ({"cluster": {"batch_pages": 0}}, "cluster.batch_pages", "greater than or equal to 1"),
        (
            {"eval": {"models": ["base", {"name": "gguf", **SERVED, "scoring": "logprobs"}]}},
            "eval.models.1.served.scoring",
            "'llama-cpp', 'echo' or 'none'",
        ),
        (
            {"eval": {"models": ["base", {"name": "gguf", "model": "docs2model"}]}},
            "eval.models.1.served.base_url",
            "Field required",
        ),
        (
            {"eval": {"models": ["base", {"name": "gguf", **SERVED}, {"name": "gguf", **SERVED}]}},
            "eval",
            "['gguf'] listed more than once",
        ),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, override: dict, key: str, words: str) -> None:
    path = write_params(tmp_path, **override)
    # Any stage's load validates the whole file, so a typo elsewhere is caught too.
    with pytest.raises(ParamsError) as err:
        load_params("markdown", MarkdownParams, path)
    assert f"{key}:" in str(err.value)
    assert words in str(err.value)


def test_unknown_stage_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("crawl:\n  start_urls: [http://x/]\ncrawll: {}\n")
    with pytest.raises(ParamsError, match=r"unknown top-level key\(s\) \['crawll'\]"):
        load_params("crawl", CrawlParams, path)


def test_scope_defaults_to_start_url_directories(tmp_path: Path) -> None:
    path = write_params(
        tmp_path,
        crawl={"start_urls": ["http://h/docs/v1/index.html", "http://h/api/"], "scope": []},
    )
    assert load_params("crawl", CrawlParams, path).scope == ["http://h/api/", "http://h/docs/v1/"]


def test_auth_secret_comes_only_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_params(tmp_path, crawl={"auth_header_env": "DOCS_TOKEN_FOR_TEST"})
    monkeypatch.delenv("DOCS_TOKEN_FOR_TEST", raising=False)
    with pytest.raises(ParamsError, match="DOCS_TOKEN_FOR_TEST, which is not set"):
        load_params("crawl", CrawlParams, path)
    monkeypatch.setenv("DOCS_TOKEN_FOR_TEST", "Bearer s3cret")
    params = load_params("crawl", CrawlParams, path)
    assert params.auth_header() == "Bearer s3cret"
    assert "s3cret" not in params.model_dump_json()


def test_cookie_jar_path_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_params(tmp_path, crawl={"cookies_env": "DOCS_COOKIES_FOR_TEST"})
    monkeypatch.delenv("DOCS_COOKIES_FOR_TEST", raising=False)
    with pytest.raises(ParamsError, match="cookies_env names DOCS_COOKIES_FOR_TEST, which is not"):
        load_params("crawl", CrawlParams, path)
    monkeypatch.setenv("DOCS_COOKIES_FOR_TEST", str(tmp_path / "missing.txt"))
    with pytest.raises(ParamsError, match="does not hold the path of a file"):
        load_params("crawl", CrawlParams, path)
    (tmp_path / "cookies.txt").write_text("# Netscape HTTP Cookie File\n")
    monkeypatch.setenv("DOCS_COOKIES_FOR_TEST", str(tmp_path / "cookies.txt"))
    assert load_params("crawl", CrawlParams, path).cookies_file() == tmp_path / "cookies.txt"


def test_render_settings_are_checked(tmp_path: Path) -> None:
    path = write_params(tmp_path, crawl={"render_patterns": ["/app/"]})
    with pytest.raises(ParamsError, match=r"crawl\.render_patterns.*set crawl\.render: browser"):
        load_params("crawl", CrawlParams, path)
    path = write_params(tmp_path, crawl={"render": "chrome"})
    with pytest.raises(ParamsError, match=r"crawl\.render\b"):
        load_params("crawl", CrawlParams, path)
    path = write_params(tmp_path, crawl={"render": "browser", "render_wait_for": "main[["})
    with pytest.raises(ParamsError, match=r"crawl\.render_wait_for"):
        load_params("crawl", CrawlParams, path)


def test_stage_exits_before_any_work_with_the_message(tmp_path: Path) -> None:
    write_params(tmp_path, crawl={"max_pages": -5})
    with pytest.raises(SystemExit) as exc:
        load_stage_params(tmp_path / "params.yaml")
    assert "crawl.max_pages" in str(exc.value.code)


def test_flow_command_reports_bad_params_without_starting_prefect(tmp_path: Path) -> None:
    write_params(tmp_path, crawl={"max_pages": -5})
    proc = subprocess.run(
        [sys.executable, "-m", "flows.crawl"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "crawl.max_pages" in proc.stderr
    assert "Starting temporary server" not in proc.stderr


def test_a_key_given_twice_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("crawl:\n  start_urls: [http://x/]\n  max_pages: 5\n  max_pages: 50\n")
    with pytest.raises(ParamsError, match=r"key 'max_pages' is given twice \(line 4\)"):
        load_params("crawl", CrawlParams, path)


@pytest.mark.parametrize("outside", ["../elsewhere/raw", "/tmp/raw"])
def test_a_path_outside_the_repository_is_rejected(tmp_path: Path, outside: str) -> None:
    path = write_params(tmp_path, paths={"raw": outside})
    with pytest.raises(ParamsError, match=r"paths.raw \(.*\) points outside the repository"):
        load_params("crawl", CrawlParams, path)
