"""How cost grows with the site: crawl, markdown and datasets through `dvc repro` on generated
docs sites of 1K, 10K and 100K pages, then a no-op `dvc status` and `dvc repro`.

Usage: python -m tasks.bench.scale --pages 1000 10000 100000 [--stand-ins-from 100000]
       [--crawl-stand-in-sizes] [--work DIR] [--out FILE.json] [--keep]

Per size: a site built from the PostgreSQL manual (tasks.bench.scale_site) is served by
`python -m http.server` in its own process (so the server does not share the crawler's GIL),
and a fresh git + DVC repository gets this repo's flows/, tasks/, params.yaml (crawl pointed at
the site with no rate limit) and dvc.yaml cut to the crawl, markdown and datasets stages. Synth
is not run: data/qa/pairs.jsonl and data/pref/triples.jsonl are empty, so the datasets stage
builds the CPT corpus and empty SFT/ORPO sets. The base model is the default tokenizer alone.
Each stage's own wall time (its report) is kept apart from the whole `dvc repro STAGE`, which
adds Prefect's start and DVC hashing and caching the outputs. From --stand-ins-from pages up,
the stages are not run: their outputs are written straight from the generator
(tasks.bench.scale_outputs) and only the no-op commands are timed; with
--crawl-stand-in-sizes the crawl stage runs there too and only the markdown stage's outputs
are stood in for, written from the pages the crawl stored. Sizes measured earlier stay
in the output file; reports/bench_scale.md holds the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml

from tasks.bench.scale_outputs import write_markdown_stand_ins, write_stand_ins
from tasks.bench.scale_site import Source, order_by_links, plan_layout, write_site
from tasks.core.io import write_bytes_atomic, write_json_atomic
from tasks.core.procs import start_process, stop_process_group
from tasks.core.tokens import resolve_tokenizer

STAGES = ("crawl", "markdown", "datasets")
SITE = Path(".cache/sites/postgresql-15/html")
# Our own server on 127.0.0.1: no rate limit, and enough requests in flight to keep both the
# server's threads and the crawler's parsing busy.
CRAWL_CONCURRENCY = 16
QUIET_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


@contextmanager
def serve_site(site: Path, port: int) -> Iterator[str]:
    """http.server (threaded) on 127.0.0.1:port in its own process; yields the base URL."""
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    proc = start_process([*argv, "--directory", str(site)], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(base, proc)
        yield base
    finally:
        stop_process_group(proc)


def wait_for_server(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"http.server for {base} exited with code {proc.returncode}")
        try:
            if requests.get(base + "index.html", timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)
    raise TimeoutError(f"http.server not answering at {base} after {timeout_s:.0f} s")


def render_params(source: Path, start_url: str, pages: int) -> dict[str, Any]:
    """The repo's params with the crawl aimed at the generated site (our own server)."""
    params = yaml.safe_load(source.read_text("utf-8"))
    params["crawl"] = {
        "start_urls": [start_url],
        "max_pages": pages + 10,  # the root index and a margin: the cap must not cut the site
        "max_depth": None,
        "requests_per_second": None,
        "concurrency": CRAWL_CONCURRENCY,
        "max_urls_per_pattern": None,  # c<k>/x.html of every copy is one URL pattern
    }
    return params


def render_stages(source: Path, stages: tuple[str, ...]) -> dict[str, Any]:
    """The repo's dvc.yaml with only the stages measured here, as they are."""
    pipeline = yaml.safe_load(source.read_text("utf-8"))
    return {"stages": {name: pipeline["stages"][name] for name in stages}}


def prepare_repo(repo: Path, start_url: str, pages: int, stages: tuple[str, ...] = STAGES) -> None:
    """A fresh git + DVC repository holding the pipeline's code and the three stages."""
    repo.mkdir(parents=True)
    for folder in ("flows", "tasks"):
        shutil.copytree(folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = render_params(Path("params.yaml"), start_url, pages)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), "utf-8")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(render_stages(Path("dvc.yaml"), stages)), "utf-8")
    tokenizer = resolve_tokenizer(None, Path(".cache/tokenizers"))[0].parent
    shutil.copytree(tokenizer, repo / "models/base")  # the datasets stage's tokenizer
    shutil.copytree(tokenizer.parent, repo / ".cache/tokenizers")  # the markdown stage's
    for folder, name in (("data/qa", "pairs.jsonl"), ("data/pref", "triples.jsonl")):
        (repo / folder).mkdir(parents=True)
        (repo / folder / name).touch()
    (repo / ".gitignore").write_text(".cache/\n.prefect/\n__pycache__/\n", "utf-8")
    run_command(["git", "init", "-q"], repo)
    run_command([sys.executable, "-m", "dvc", "init", "-q"], repo)


def run_command(argv: list[str], cwd: Path) -> float:
    """Wall seconds of a command that must succeed (its output shown when it fails)."""
    # The stages' `python` is this interpreter's (the virtualenv's), wherever PATH points.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = os.environ | QUIET_ENV | {"PATH": path}
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        tail = (done.stdout + done.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{tail}")
    return time.perf_counter() - started


def read_stage_report(repo: Path, stage: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((repo / "reports" / f"{stage}.json").read_text("utf-8"))
    return report


def read_children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_stage(repo: Path, stage: str) -> dict[str, Any]:
    """`dvc repro STAGE` (Prefect start, the stage, DVC hashing and caching), its CPU seconds
    (every process it waited for) and the stage's own wall time from its report. On a shared
    machine wall time follows the load; CPU time per page is what shows how cost grows."""
    cpu = read_children_cpu_s()
    dvc_s = run_command([sys.executable, "-m", "dvc", "repro", "-s", stage], repo)
    cpu_s = read_children_cpu_s() - cpu
    report = read_stage_report(repo, stage)
    return {
        "stage_s": report["wall_s"],
        "dvc_repro_s": round(dvc_s, 2),
        "dvc_repro_cpu_s": round(cpu_s, 2),
        # The largest process waited for so far (kB on Linux); the stages run in order.
        "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
        "report": report,
    }


def measure_noop(repo: Path) -> dict[str, float]:
    """No-op `dvc status` (twice: the second with DVC's state of file hashes warm) and
    `dvc repro` on the outputs just written."""
    dvc = [sys.executable, "-m", "dvc"]
    first = run_command([*dvc, "status"], repo)
    second = run_command([*dvc, "status"], repo)
    repro = run_command([*dvc, "repro"], repo)
    return {
        "dvc_status_s": round(first, 2),
        "dvc_status_again_s": round(second, 2),
        "dvc_repro_s": round(repro, 2),
    }


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def summarize_size(pages: int, repo: Path, stages: dict[str, Any]) -> dict[str, Any]:
    crawl, markdown = stages["crawl"]["report"], stages["markdown"]["report"]
    datasets = stages["datasets"]["report"]
    row: dict[str, Any] = {
        "pages": pages,
        "pages_crawled": crawl.get("pages"),
        "pages_converted": markdown.get("pages_out"),
        "cpt_documents": datasets["cpt"]["documents"],
        "cpt_tokens": datasets["cpt"]["tokens"],
        "files": {f: count_files(repo / "data" / f) for f in ("raw", "markdown", "cpt", "eval")},
    }
    for stage in STAGES:
        row[f"{stage}_s"] = stages[stage]["stage_s"]
        row[f"{stage}_dvc_repro_s"] = stages[stage]["dvc_repro_s"]
        row[f"{stage}_ms_per_page"] = round(1000 * stages[stage]["stage_s"] / pages, 3)
        row[f"{stage}_dvc_repro_cpu_s"] = stages[stage]["dvc_repro_cpu_s"]
        row[f"{stage}_peak_rss_mb_so_far"] = stages[stage]["peak_rss_mb_so_far"]
    return row


def run_size(pages: int, work: Path, port: int) -> dict[str, Any]:
    """One size, start to end, in work/<pages>/ (removed first)."""
    root = work / str(pages)
    shutil.rmtree(root, ignore_errors=True)
    load_before = os.getloadavg()
    base = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    write_site(SITE, root / "site", pages, base)
    generate_s = time.perf_counter() - started
    with serve_site(root / "site", port) as base:
        prepare_repo(root / "repo", base + "index.html", pages)
        stages = {stage: measure_stage(root / "repo", stage) for stage in STAGES}
    row = summarize_size(pages, root / "repo", stages)
    row["noop"] = measure_noop(root / "repo")
    row["generate_site_s"] = round(generate_s, 2)
    row["load_average_before"] = [round(x, 2) for x in load_before]
    row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    row["cpus"] = os.cpu_count()
    return row


def run_stand_in_size(pages: int, work: Path, port: int, crawl: bool = False) -> dict[str, Any]:
    """One size without running the markdown stage (nor, unless `crawl`, the crawl stage):
    its outputs written straight from the generator (tasks.bench.scale_outputs) or, after a
    real crawl, from the pages it stored; `dvc commit` to record them, then the no-op
    `dvc status` and `dvc repro` of the crawl and markdown stages."""
    root = work / str(pages)
    shutil.rmtree(root, ignore_errors=True)
    load_before = os.getloadavg()
    base = f"http://127.0.0.1:{port}/"
    repo = root / "repo"
    prepare_repo(repo, base + "index.html", pages, STAGES[:2])
    row: dict[str, Any] = {"pages": pages}
    started = time.perf_counter()
    if crawl:
        write_site(SITE, root / "site", pages, base)
        row["generate_site_s"] = round(time.perf_counter() - started, 2)
        with serve_site(root / "site", port):
            measured = measure_stage(repo, "crawl")
        row |= summarize_crawl(pages, measured)
        started = time.perf_counter()
        row["markdown_pages"] = write_markdown_stand_ins(repo / "data/raw", repo / "data/markdown")
        stand_ins: tuple[str, ...] = STAGES[1:2]
        row["outputs"] = "crawl run; markdown stand-ins written by tasks.bench.scale_outputs"
    else:
        source = Source.read(SITE)
        layout = plan_layout(order_by_links(source.pages), pages)
        written = write_stand_ins(source, layout, base, repo / "data/raw", repo / "data/markdown")
        row |= {"raw_pages": written.raw_pages, "markdown_pages": written.markdown_pages}
        stand_ins = STAGES[:2]
        row["outputs"] = "stand-ins written by tasks.bench.scale_outputs; stages not run"
    row["write_outputs_s"] = round(time.perf_counter() - started, 2)
    for stage in stand_ins:
        write_json_atomic(repo / "reports" / f"{stage}.json", {"stand_in": True})
    commit = [sys.executable, "-m", "dvc", "commit", "-f", *stand_ins]
    return row | {
        "stages": list(STAGES[:2]),
        "stand_ins": list(stand_ins),
        "files": {f: count_files(repo / "data" / f) for f in ("raw", "markdown")},
        "dvc_commit_s": round(run_command(commit, repo), 2),
        "noop": measure_noop(repo),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def summarize_crawl(pages: int, measured: dict[str, Any]) -> dict[str, Any]:
    """The crawl stage's columns of a size's row (as summarize_size writes them)."""
    return {
        "pages_crawled": measured["report"].get("pages"),
        "crawl_s": measured["stage_s"],
        "crawl_dvc_repro_s": measured["dvc_repro_s"],
        "crawl_ms_per_page": round(1000 * measured["stage_s"] / pages, 3),
        "crawl_dvc_repro_cpu_s": measured["dvc_repro_cpu_s"],
        "crawl_peak_rss_mb_so_far": measured["peak_rss_mb_so_far"],
    }


def read_rows(out: Path) -> dict[str, Any]:
    """Sizes measured by earlier runs, kept unless measured again."""
    if not out.is_file():
        return {}
    rows: dict[str, Any] = json.loads(out.read_text("utf-8")).get("sizes", {})
    return rows


def describe_outputs(row: dict[str, Any]) -> str:
    """Which stages a row's figures come from: all run, or some outputs stood in for."""
    if "outputs" not in row:
        return "stages"
    stand_ins = row.get("stand_ins", row.get("stages", []))
    return "stand-ins: " + ", ".join(stand_ins)


def render_table(rows: dict[str, Any]) -> str:
    """One line per size; stages not run at a size (stand-in outputs) show as "-"."""
    columns = [f"{stage}_{x}" for x in ("s", "ms_per_page", "dvc_repro_cpu_s") for stage in STAGES]
    head = "| pages | outputs | " + " | ".join(c.replace("_", " ") for c in columns)
    head += " | no-op dvc status s | no-op dvc repro s | load avg 1m (after) |"
    lines = [head, "|" + "---|" * (len(columns) + 5)]
    for key in sorted(rows, key=int):
        r = rows[key]
        cells = [f"{r['pages']:,}", describe_outputs(r)]
        cells += [str(r.get(c, "-")) for c in columns]
        cells += [str(r["noop"]["dvc_status_s"]), str(r["noop"]["dvc_repro_s"])]
        cells.append(str(r["load_average_after"][0]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, rows: dict[str, Any]) -> None:
    write_json_atomic(out, {"stages": list(STAGES), "sizes": rows})
    write_bytes_atomic(out.with_suffix(".md"), render_table(rows).encode("utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pages", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scale-bench")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_scale.json"))
    parser.add_argument("--port", type=int, default=8830)
    parser.add_argument("--keep", action="store_true", help="keep the sites and repos in --work")
    parser.add_argument(
        "--stand-ins-from",
        type=int,
        default=None,
        metavar="PAGES",
        help="from this size up, write data/raw and data/markdown straight from the generator "
        "instead of running the stages, and measure only the no-op dvc status and repro",
    )
    parser.add_argument(
        "--crawl-stand-in-sizes",
        action="store_true",
        help="at the --stand-ins-from sizes, run the crawl stage for real and stand in only for "
        "the markdown stage's outputs (written from the pages the crawl stored)",
    )
    args = parser.parse_args(argv)
    rows = read_rows(args.out)
    for pages in args.pages:
        stand_ins = args.stand_ins_from is not None and pages >= args.stand_ins_from
        if stand_ins:
            row = run_stand_in_size(pages, args.work, args.port, args.crawl_stand_in_sizes)
        else:
            row = run_size(pages, args.work, args.port)
        rows[str(pages)] = row
        write_results(args.out, rows)
        print(json.dumps(row, indent=2), flush=True)
        if not args.keep:
            shutil.rmtree(args.work / str(pages), ignore_errors=True)


if __name__ == "__main__":
    main()
