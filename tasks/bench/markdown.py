"""Benchmarks of the crawl and markdown stages over a whole local docs site, each reported as a
ratio against a baseline measured in the same run: `python -m tasks.bench.markdown --site DIR`.

- crawl: pages/s of our crawler (rate limit off) vs a bare `requests` loop over the same URLs
- convert: pages/s of our convert_page vs stock `markdownify.markdownify` on the same pages
- site: wall seconds to crawl and convert the whole site with the stage functions (goal < 60 s)

With `--cluster`, instead: the markdown stage over the whole site on this machine's processes
(markdown.workers) and on a Dask LocalCluster of as many single-threaded worker processes
(params cluster.address), wall seconds of each and whether every output file is the same, byte
for byte (`python -m tasks.bench.markdown --site DIR --cluster --out
reports/bench_markdown_dask.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import markdownify

from tasks.bench.crawl import run_crawl_benchmark
from tasks.bench.dask_cluster import local_cluster, prefect_test_server, read_tree
from tasks.core.encoding import detect_encoding
from tasks.core.io import write_json_atomic
from tasks.core.params import CrawlParams, MarkdownParams
from tasks.crawl.crawler import crawl_site
from tasks.markdown.build import build_markdown
from tasks.markdown.convert import convert_page
from tasks.services.local import serve_directory

TOKENIZER_CACHE = Path(".cache/tokenizers")


def time_converters(pages: list[Path], base_url: str) -> dict[str, Any]:
    """Single process, same pages, best of two passes each, interleaved."""
    blobs = [(p.read_bytes(), base_url + p.name) for p in pages]
    texts = [html.decode(detect_encoding(html), errors="replace") for html, _ in blobs]
    params = MarkdownParams()
    ours = stock = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for html, url in blobs:
            convert_page(html, url, params)
        ours = min(ours, time.perf_counter() - started)
        started = time.perf_counter()
        for text in texts:
            markdownify.markdownify(text)
        stock = min(stock, time.perf_counter() - started)
    return {
        "pages": len(pages),
        "ours_pages_per_s": round(len(pages) / ours, 1),
        "stock_markdownify_pages_per_s": round(len(pages) / stock, 1),
        "ratio": round(stock / ours, 3),
    }


def time_whole_site(site: Path) -> dict[str, Any]:
    """Cold crawl + conversion of the whole site with the stage functions, 2 workers."""
    with serve_directory(site) as base, tempfile.TemporaryDirectory() as tmp:
        crawl = CrawlParams(start_urls=[base + "index.html"], requests_per_second=None)
        crawl = crawl.model_copy(update={"max_pages": 100_000, "max_depth": None})
        started = time.perf_counter()
        crawled = crawl_site(crawl, Path(tmp) / "raw", show_progress=False)
        crawl_s = time.perf_counter() - started
        report = build_markdown(
            Path(tmp) / "raw", Path(tmp) / "md", MarkdownParams(), TOKENIZER_CACHE
        )
        total_s = time.perf_counter() - started
    return {
        "pages_crawled": crawled["pages"],
        "pages_converted": report["pages_out"],
        "crawl_s": round(crawl_s, 2),
        "convert_s": round(total_s - crawl_s, 2),
        "total_s": round(total_s, 2),
        "goal_total_s": 60,
    }


def time_stage_on_cluster(site: Path) -> dict[str, Any]:
    """One crawl of the site, then the markdown stage from scratch twice: here, then on a
    LocalCluster. The Prefect test server and the cluster start before the clock does; the
    workers' first imports are inside it, as on a cluster started for the run."""
    params = MarkdownParams()
    with serve_directory(site) as base, tempfile.TemporaryDirectory() as tmp:
        crawl = CrawlParams(start_urls=[base + "index.html"], requests_per_second=None)
        crawl = crawl.model_copy(update={"max_pages": 100_000, "max_depth": None})
        crawl_site(crawl, Path(tmp) / "raw", show_progress=False)
        started = time.perf_counter()
        here = build_markdown(Path(tmp) / "raw", Path(tmp) / "here", params, TOKENIZER_CACHE)
        here_s = time.perf_counter() - started
        with prefect_test_server(), local_cluster(params.workers) as on_dask:
            started = time.perf_counter()
            there = build_markdown(
                Path(tmp) / "raw", Path(tmp) / "dask", params, TOKENIZER_CACHE, on_dask
            )
            dask_s = time.perf_counter() - started
        same_files = read_tree(Path(tmp) / "here") == read_tree(Path(tmp) / "dask")
    return {
        "pages_in": here["pages_in"],
        "pages_out": here["pages_out"],
        "workers": params.workers,
        "batch_pages": on_dask.batch_pages,
        "here_s": round(here_s, 2),
        "dask_local_cluster_s": round(dask_s, 2),
        "same_files": same_files,
        "same_report": here == there,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    parser.add_argument("--cluster", action="store_true", help="here vs a Dask LocalCluster")
    args = parser.parse_args(argv)
    if args.cluster:
        write_json_atomic(args.out, time_stage_on_cluster(args.site))
        print(json.dumps(json.loads(args.out.read_text()), indent=2))
        return
    pages = sorted(args.site.glob("*.html"))
    result = {
        "crawl": run_crawl_benchmark(args.site, None),
        "convert": time_converters(pages, "http://127.0.0.1/"),
        "site": time_whole_site(args.site),
    }
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
