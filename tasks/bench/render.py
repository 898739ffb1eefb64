"""Rendering crawl throughput and browser memory, and what rendering support costs a plain crawl.

On the JavaScript docs site of tasks/services/jssite.py (every page an empty shell filled from
a JSON endpoint): rendered pages/s at concurrency 1 and 4, waiting for network idle (the
default) and for a selector (`crawl.render_wait_for`), and the peak memory of the Chromium
process tree during the concurrency-4 crawl. On a static site with `render: none`: the crawl of
this tree against the crawl of a baseline git revision, each in a fresh process, interleaved,
best of --repeats, in the same run against the same server.

Usage: python -m tasks.bench.render --site SITE_DIR [--pages N] [--baseline REV] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tasks.core.io import write_json_atomic
from tasks.core.params import CrawlParams
from tasks.crawl.crawler import crawl_site
from tasks.crawl.render import Browser
from tasks.services.jssite import build_js_site
from tasks.services.local import serve_directory

REPO = Path(__file__).resolve().parents[2]
SAMPLE_S = 0.1
# Runs one cold crawl of argv[1] into argv[2] and prints its wall and CPU seconds (all threads:
# on a shared machine the CPU time moves less with the load); imported from whichever tree
# PYTHONPATH names, so the same lines time both revisions.
CRAWL_ONCE = """
import sys, time
from tasks.core.params import CrawlParams
from tasks.crawl.crawler import crawl_site
params = CrawlParams(start_urls=[sys.argv[1]], requests_per_second=None, max_pages=100000)
started, cpu = time.perf_counter(), time.process_time()
crawl_site(params, __import__("pathlib").Path(sys.argv[2]), show_progress=False)
print(time.perf_counter() - started, time.process_time() - cpu)
"""


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(body)


def list_browser_processes() -> list[int]:
    """Chromium processes under this one (Playwright's driver starts them), by pid."""
    try:
        import psutil
    except ImportError:
        return list_children_from_proc(os.getpid())
    pids = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a renderer that exited meanwhile
            if "chrom" in child.name().lower():
                pids.append(child.pid)
    return pids


def list_children_from_proc(pid: int) -> list[int]:
    """The same from /proc (without psutil): every descendant whose command names chrom."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (task / "children").read_text().split() if task.exists() else []
            queue += [int(c) for c in children]
            found += [int(c) for c in children if "chrom" in read_comm(int(c))]
    return found


def read_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().lower()
    except OSError:
        return ""


def read_memory_bytes(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over the processes. The RSS sum counts pages the processes share once
    per process, an upper bound; PSS splits each shared page between its sharers, so its sum is
    what the tree takes."""
    rss = pss = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue  # a renderer that exited between listing and reading
        for line in rollup:
            if line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
    return rss, pss


class MemorySampler:
    """The peak memory of the browser's process tree, sampled every SAMPLE_S in a thread."""

    def __init__(self) -> None:
        self.peak_rss = self.peak_pss = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            pids = list_browser_processes()
            self.processes = max(self.processes, len(pids))
            rss, pss = read_memory_bytes(pids)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def time_render_crawl(
    browser: Browser, base: str, concurrency: int, wait_for: str | None
) -> tuple[float, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as raw:
        params = CrawlParams(
            start_urls=[base + "docs/index.html"],
            requests_per_second=None,
            concurrency=concurrency,
            max_pages=100_000,
            render="browser",
            render_wait_for=wait_for,
        )
        started = time.perf_counter()
        report = crawl_site(params, Path(raw), browser=browser, show_progress=False)
        return time.perf_counter() - started, report


def bench_rendering(pages: int) -> dict[str, Any]:
    result: dict[str, Any] = {"js_pages": pages}
    with tempfile.TemporaryDirectory() as tmp, Browser() as browser:
        write_files(Path(tmp), build_js_site(pages))
        with serve_directory(Path(tmp)) as base:
            time_render_crawl(browser, base, 4, "main")  # warm-up: caches, the first renderers
            for wait, selector in (("idle", None), ("selector", "main")):
                for concurrency in (1, 4):
                    with MemorySampler() as memory:
                        wall, report = time_render_crawl(browser, base, concurrency, selector)
                    assert report["render"]["pages"] == pages, report
                    key = f"{wait}_concurrency_{concurrency}"
                    result[f"{key}_pages_per_s"] = round(pages / wall, 2)
                    result[f"{key}_browser_rss_peak_mb"] = round(memory.peak_rss / 2**20, 1)
                    result[f"{key}_browser_pss_peak_mb"] = round(memory.peak_pss / 2**20, 1)
                    result["browser_processes_peak"] = max(
                        result.get("browser_processes_peak", 0), memory.processes
                    )
    return result


def extract_revision(rev: str, dest: Path) -> Path:
    """The `tasks` tree of a git revision, unpacked under dest (for PYTHONPATH)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "tasks"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def time_plain_crawl(tree: Path, start_url: str, work: Path) -> tuple[float, float]:
    raw = tempfile.mkdtemp(dir=work)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", CRAWL_ONCE, start_url, raw],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall, cpu = out.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def bench_plain_crawl(site: Path, baseline: str, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, serve_directory(site) as base:
        work = Path(tmp)
        old_tree = extract_revision(baseline, work / "baseline")
        start = base + "index.html"
        pages = sum(1 for _ in site.glob("*.html"))
        time_plain_crawl(REPO, start, work)  # warm-up: the page cache, the server
        runs: dict[str, list[tuple[float, float]]] = {"current": [], "baseline": []}
        trees = [("baseline", old_tree), ("current", REPO)]
        for i in range(repeats):  # alternating which goes first: neither gets the warmer turn
            for name, tree in trees if i % 2 == 0 else trees[::-1]:
                runs[name].append(time_plain_crawl(tree, start, work))
    best = {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}
    return {
        "static_site_files": pages,
        "baseline_revision": baseline,
        "static_repeats": repeats,
        "static_current_s": round(best["current"][0], 3),
        "static_baseline_s": round(best["baseline"][0], 3),
        "static_current_cpu_s": round(best["current"][1], 3),
        "static_baseline_cpu_s": round(best["baseline"][1], 3),
        # Above 1: this tree's plain crawl is faster than the baseline's (best of each).
        "static_speed_ratio": round(best["baseline"][0] / best["current"][0], 3),
        "static_cpu_ratio": round(best["baseline"][1] / best["current"][1], 3),
    }


def run_render_benchmark(
    site: Path, out: Path | None, pages: int, baseline: str, repeats: int
) -> dict[str, Any]:
    result = bench_rendering(pages)
    result.update(bench_plain_crawl(site, baseline, repeats))
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    result["cpus"] = os.cpu_count()
    if out is not None:
        write_json_atomic(out, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, required=True, help="a static site folder")
    parser.add_argument("--pages", type=int, default=40, help="pages of the JavaScript site")
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=6, help="static crawls of each tree")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run_render_benchmark(args.site, args.out, args.pages, args.baseline, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
