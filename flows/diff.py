"""diff: what changed between two releases, in one report a reviewer reads.

Run with `make diff A=v1 B=v2` or `python -m flows.diff [A] [B]` (not a dvc stage: it reads two
versions instead of producing one). A and B are git revisions (tags, branches, commits); B
defaults to the workspace, A to the newest tag before it. Each version's data/ is read through
DVC at its revision (the local cache, else the DVC remote); its reports/ and params.yaml from git.
Writes reports/diff/<A>..<B>.md (for a pull request), .html (with a chart of the page and token
deltas) and .json (every list whole); the Markdown is also a Prefect artifact. Covers pages
(added, removed, changed, moved), crawl health (newly failing, excluded, on the readability
fallback, shrunk), Q/A pairs and triples per page, tokens per set, synth calls, params and the
metrics of every stage report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows import run_name
from tasks.core.params import read_params_file
from tasks.diff.build import build_release_diff
from tasks.diff.health import SHRINK_THRESHOLD
from tasks.diff.publish import publish_diff
from tasks.diff.render import MAX_ROWS, layout, render_markdown
from tasks.diff.snapshot import parse_paths
from tasks.diff.versions import (
    DiffInputError,
    open_version,
    read_remote_config,
    resolve_revisions,
)
from tasks.diff.write import write_diff_files


@task(name="compare-versions")
def compare(root: Path, a: str, b: str | None, shrink: float) -> dict[str, Any]:
    config = read_remote_config(root)
    return build_release_diff(open_version(root, a, config), open_version(root, b, config), shrink)


@flow(name="diff", flow_run_name=run_name("diff"))
def diff_flow(
    root: Path, a: str, b: str | None, shrink: float, out_dir: Path, limit: int
) -> dict[str, Path]:
    """Compare release A with release B (None: the workspace)."""
    diff = compare(root, a, b, shrink)
    paths = write_diff_files(diff, out_dir, limit)
    publish_diff(render_markdown(layout(diff, limit)), paths["md"].name)
    return paths


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.diff", description=__doc__.split("\n")[0]
    )
    parser.add_argument("a", nargs="?", help="older revision (default: the newest tag)")
    parser.add_argument("b", nargs="?", help="newer revision (default: the workspace)")
    parser.add_argument(
        "--shrink",
        type=float,
        default=SHRINK_THRESHOLD,
        help=f"flag pages whose Markdown lost more than this share of words ({SHRINK_THRESHOLD})",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: paths.reports/diff)")
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS, help="rows per list in md/html")
    args = parser.parse_args(argv)
    if not 0 < args.shrink < 1:
        parser.error(f"--shrink must be between 0 and 1, not {args.shrink}")
    return args


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    try:
        # Revisions are checked before the flow starts, so a typo costs no Prefect start-up.
        b = args.b or None  # `make diff` passes an empty A when only B is given
        a = resolve_revisions(Path.cwd(), args.a or None, b)
        out = args.out or parse_paths(read_params_file()).reports / "diff"
        written = diff_flow(Path.cwd(), a, b, args.shrink, out, args.max_rows)
    except DiffInputError as exc:
        sys.exit(f"error: {exc}")
    print("\n".join(str(p) for p in written.values()))
