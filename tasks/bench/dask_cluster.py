"""What the benchmarks of a data stage on a Dask cluster share: a temporary Prefect server, a
LocalCluster of single-threaded worker processes on this machine, and a folder read back to
compare the cluster's outputs with those of a run in this process, byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.core.params import ClusterParams

# A start of the test server takes 15 s or more on a busy 2-core machine.
SERVER_STARTUP_TIMEOUT_S = 300


@contextmanager
def prefect_test_server() -> Iterator[None]:
    """A Prefect server on a temporary database, so the stage's task runs have an API to
    report to (the cluster's workers report their own) and the bench leaves no history."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=SERVER_STARTUP_TIMEOUT_S):
        yield


@contextmanager
def local_cluster(workers: int) -> Iterator[ClusterParams]:
    """A LocalCluster of `workers` single-threaded processes (ports chosen by the OS, no
    dashboard), as the params that send a stage's batches to it."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield ClusterParams(address=cluster.scheduler_address)


def read_tree(folder: Path) -> dict[str, bytes]:
    """Every file under the folder by its path relative to it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
