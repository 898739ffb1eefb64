"""The markdown stage on a Dask cluster (a LocalCluster of two worker processes here): the same
files, byte for byte, as the default run on this machine's processes; an unreachable scheduler
fails before any work with one line naming `cluster.address`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.cluster import ClusterError, require_scheduler
from tasks.core.params import ClusterParams, PathsParams
from tasks.core.procs import free_port
from tasks.markdown.build import build_markdown
from tests.support.cluster import read_task_runs, without_timings
from tests.support.fixture_site import FIXTURE_SITE, PARAMS, crawl


def snapshot(md_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(md_dir.iterdir())}


def test_the_stage_on_a_dask_cluster_writes_the_same_files_as_on_this_machine(
    tmp_path: Path, scheduler: str, prefect_harness: None
) -> None:
    from flows.markdown import markdown_flow

    crawl(FIXTURE_SITE, tmp_path / "raw")
    here = build_markdown(tmp_path / "raw", tmp_path / "here", PARAMS, tmp_path / "tokenizers")
    # batches of 3 pages: the 4 fixture pages make a full batch and a partial one
    cluster = ClusterParams(address=scheduler, batch_pages=3)
    paths = PathsParams(
        raw=tmp_path / "raw", markdown=tmp_path / "dask", reports=tmp_path, cache=tmp_path
    )
    state = markdown_flow(paths, PARAMS, cluster, return_state=True)

    assert snapshot(tmp_path / "dask") == snapshot(tmp_path / "here")
    assert without_timings(state.result()) == here
    saved = json.loads((tmp_path / "markdown.json").read_text())
    assert without_timings(saved) == json.loads(json.dumps(here))
    assert here["converted"] == here["template"]["pages_profiled"] == 4
    # each batch is a task run of the stage's flow run, as the Prefect UI shows it
    names = [run.name for run in read_task_runs(state)]
    for task_name in ("profile-batch", "convert-batch"):  # 4 pages in batches of 3
        setups = [name for name in names if name.startswith(f"{task_name}-setup")]
        batches = [name for name in names if name.startswith(f"{task_name}-")]
        assert (len(setups), len(batches) - len(setups)) == (1, 2), names


def test_an_unreachable_scheduler_fails_with_one_line_naming_the_key(tmp_path: Path) -> None:
    crawl(FIXTURE_SITE, tmp_path / "raw")
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    cluster = ClusterParams(address=address, connect_timeout_s=1)
    with pytest.raises(ClusterError) as err:
        build_markdown(tmp_path / "raw", tmp_path / "md", PARAMS, tmp_path / "tok", cluster)
    message = str(err.value)
    assert message.startswith("cluster.address: ") and address in message
    assert "\n" not in message
    assert not (tmp_path / "md").exists()
    with pytest.raises(SystemExit, match=r"^error: cluster\.address: "):
        require_scheduler(cluster)
