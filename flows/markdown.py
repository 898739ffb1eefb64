"""markdown: turn every crawled page into clean Markdown with front matter.

Run with `dvc repro markdown` (or `python -m flows.markdown`). Reads params `markdown:` and
data/raw (pages + manifest.jsonl); writes data/markdown/<page id>.md (front matter: url, title,
product, version, sha), data/markdown/index.jsonl in the site's reading order,
data/markdown/exclusions.jsonl (dropped pages with their reason), data/markdown/template.json
(the site's template learned over all pages: repeated, link-dense blocks removed as chrome) with
profiles.jsonl (each page's blocks, so unchanged pages are not read again) and
reports/markdown.json. Pages whose source, params, converter and learned template are unchanged
are not converted again. Pages are profiled and converted in `markdown.workers` processes, or on
the Dask cluster named by params `cluster.address` (same outputs, byte for byte).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task

from flows import run_name
from tasks.core.cluster import require_scheduler
from tasks.core.params import ClusterParams, MarkdownParams, PathsParams, load_stage_params
from tasks.core.report import finish_report
from tasks.markdown.build import build_markdown


@task(name="convert-pages")
def convert(paths: PathsParams, params: MarkdownParams, cluster: ClusterParams) -> dict[str, Any]:
    tokenizers = paths.cache / "tokenizers"
    return build_markdown(paths.raw, paths.markdown, params, tokenizers, cluster)


@flow(name="markdown", flow_run_name=run_name("markdown"))
def markdown_flow(
    paths: PathsParams, params: MarkdownParams, cluster: ClusterParams | None = None
) -> dict[str, Any]:
    """Convert each crawled page's main content into Markdown with front matter."""
    started = time.monotonic()
    report = convert(paths, params, cluster or ClusterParams())
    return finish_report(paths.reports, "markdown", report, started)


if __name__ == "__main__":
    params = load_stage_params()
    require_scheduler(params.cluster)
    markdown_flow(params.paths, params.markdown, params.cluster)
