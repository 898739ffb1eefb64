"""markdown: turn every crawled page into clean Markdown with front matter.

Run with `dvc repro markdown` (or `python -m flows.markdown`). Reads params `markdown:` and
data/raw (pages + manifest.jsonl); writes data/markdown/<page id>.md (front matter: url, title,
product, version, sha), data/markdown/index.jsonl in the site's reading order,
data/markdown/exclusions.jsonl (dropped pages with their reason) and reports/markdown.json.
Pages whose source, params and converter are unchanged are not converted again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task

from tasks.markdown import build_markdown
from tasks.params import MarkdownParams, PathsParams, load_stage_params
from tasks.report import publish_report, write_report

TOKENIZER_CACHE = Path(".cache/tokenizers")


@task(name="convert-pages")
def convert(paths: PathsParams, params: MarkdownParams) -> dict[str, Any]:
    return build_markdown(paths.raw, paths.markdown, params, TOKENIZER_CACHE)


@flow(name="markdown")
def markdown_flow(paths: PathsParams, params: MarkdownParams) -> dict[str, Any]:
    started = time.monotonic()
    report = convert(paths, params)
    report["wall_s"] = round(time.monotonic() - started, 2)
    write_report(paths.reports, "markdown", report)
    publish_report("markdown", report)
    return report


if __name__ == "__main__":
    markdown_flow(*load_stage_params("markdown", MarkdownParams))
