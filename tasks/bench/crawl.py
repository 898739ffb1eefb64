"""Crawler throughput against a bare `requests` loop over the same URLs, same server, same run.

Usage: python -m tasks.bench.crawl SITE_DIR [--base-url URL] [--repeats N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tasks.core.io import write_json_atomic
from tasks.core.params import CrawlParams
from tasks.core.records import PageStatus
from tasks.crawl.crawler import crawl_site, read_manifest
from tasks.services.local import serve_directory

THREADS = 4


def fetch_bare_sequential(urls: list[str]) -> float:
    started = time.perf_counter()
    with requests.Session() as session:
        for url in urls:
            session.get(url, timeout=30).content  # noqa: B018 - reading the body is the work
    return time.perf_counter() - started


def fetch_bare_threaded(urls: list[str], threads: int) -> float:
    local = threading.local()

    def get(url: str) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return len(local.session.get(url, timeout=30).content)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, urls))
    return time.perf_counter() - started


def run_crawler(base: str, work: Path, concurrency: int) -> tuple[float, list[str]]:
    """Wall time of a cold crawl into a fresh folder, and the page URLs it stored."""
    raw = Path(tempfile.mkdtemp(dir=work))
    params = CrawlParams.model_validate(
        {
            "start_urls": [base + "index.html"],
            "requests_per_second": None,
            "concurrency": concurrency,
            "max_pages": 100_000,
        }
    )
    started = time.perf_counter()
    crawl_site(params, raw, show_progress=False)
    wall = time.perf_counter() - started
    entries = sorted(read_manifest(raw).values(), key=lambda e: e.order)
    return wall, [e.url for e in entries if e.status in (PageStatus.OK, PageStatus.DUPLICATE)]


def measure_file_create_ms(work: Path, n: int = 200) -> float:
    """Mean ms to create an empty file next to the crawls' page folders. The crawler creates one
    per page and the bare loop none, so this moves the ratio: on ext4 the kernel skips inodes
    freed in the last minutes one by one (perf: recently_deleted under __ext4_new_inode), so
    right after a big delete (a previous run's cleanup, pytest's) it costs 0.5 ms, else 0.02."""
    folder = Path(tempfile.mkdtemp(dir=work))
    started = time.perf_counter()
    for i in range(n):
        (folder / str(i)).touch(exist_ok=False)
    return (time.perf_counter() - started) * 1000 / n


def run_crawl_benchmark(
    site_dir: Path, out: Path | None, repeats: int = 3, base_url: str | None = None
) -> dict[str, Any]:
    """Serve site_dir on 127.0.0.1 (or use base_url, a server you run in another process) and
    compare crawl pages/s with a bare loop at equal threads; best of `repeats`, interleaved."""
    with serve_directory(site_dir) as served, tempfile.TemporaryDirectory() as tmp:
        base, work = base_url or served, Path(tmp)
        create_ms = measure_file_create_ms(work)
        _, urls = run_crawler(base, work, THREADS)  # warm-up, and the URL list for the bare loop
        n = len(urls)
        crawl_1 = bare_1 = crawl_n = bare_n = float("inf")
        for _ in range(repeats):
            crawl_1 = min(crawl_1, run_crawler(base, work, 1)[0])
            bare_1 = min(bare_1, fetch_bare_sequential(urls))
            crawl_n = min(crawl_n, run_crawler(base, work, THREADS)[0])
            bare_n = min(bare_n, fetch_bare_threaded(urls, THREADS))
    result = {
        "pages": n,
        "server": "external" if base_url else "in-process ThreadingHTTPServer",
        "threads": THREADS,
        "crawl_1_thread_s": round(crawl_1, 3),
        "bare_1_thread_s": round(bare_1, 3),
        "crawl_1_thread_pages_per_s": round(n / crawl_1, 1),
        "bare_1_thread_pages_per_s": round(n / bare_1, 1),
        "ratio_1_thread": round(bare_1 / crawl_1, 3),
        f"crawl_{THREADS}_threads_s": round(crawl_n, 3),
        f"bare_{THREADS}_threads_s": round(bare_n, 3),
        f"crawl_{THREADS}_threads_pages_per_s": round(n / crawl_n, 1),
        f"bare_{THREADS}_threads_pages_per_s": round(n / bare_n, 1),
        f"ratio_{THREADS}_threads": round(bare_n / crawl_n, 3),
        # Conditions: other processes on the CPUs, and the cost of creating a file.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "file_create_ms": round(create_ms, 3),
    }
    if out is not None:
        write_json_atomic(out, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--base-url", default=None, help="crawl this server instead")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    args = parser.parse_args()
    result = run_crawl_benchmark(args.site_dir, args.out, args.repeats, args.base_url)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
