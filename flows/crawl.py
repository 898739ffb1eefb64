"""crawl: fetch the documentation site politely into data/raw.

Run with `dvc repro crawl` (or `python -m flows.crawl`; `dvc repro -f crawl` re-crawls an
unchanged pipeline). Reads params `crawl:`; writes data/raw/pages/<sha256>.html,
data/raw/manifest.jsonl, data/raw/exclusions.jsonl (each URL skipped, with its reason) and
reports/crawl.json. With `crawl.render: browser` pages are loaded in headless Chromium and
the DOM it built is stored in their place. A re-crawl sends conditional requests and rewrites
nothing that did not change, so an unchanged site leaves data/raw byte-identical.
A crawl whose start URLs yield no page, or that would remove more than
`crawl.max_removed_fraction` of the known pages, stops before changing anything;
`python -m flows.crawl --force` accepts such a removal once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows import run_name
from tasks.core.params import CrawlParams, PathsParams, load_stage_params
from tasks.core.report import publish_report, write_report
from tasks.crawl.crawler import crawl_site


@task(name="crawl-site")
def crawl(
    params: CrawlParams,
    paths: PathsParams,
    auth_header: str | None,
    cookies_file: Path | None,
    force: bool,
) -> dict[str, Any]:
    return crawl_site(
        params, paths.raw, auth_header=auth_header, cookies_file=cookies_file, force=force
    )


@flow(name="crawl", flow_run_name=run_name("crawl"))
def crawl_flow(paths: PathsParams, params: CrawlParams, force: bool = False) -> dict[str, Any]:
    """Fetch the documentation site politely into data/raw."""
    report = crawl(params, paths, params.auth_header(), params.cookies_file(), force)
    write_report(paths.reports, "crawl", report)
    publish_report("crawl", report)
    return report


if __name__ == "__main__":
    params = load_stage_params()
    crawl_flow(params.paths, params.require_crawl(), force="--force" in sys.argv[1:])
