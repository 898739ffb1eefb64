"""What the tests of a data stage on a Dask cluster share (a plugin of tests/conftest.py): a
LocalCluster of two worker processes for a test module (tasks.bench.dask_cluster's, as the
benches use), the Prefect task runs a flow run made, and its report without wall times for
comparing with a local run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tasks.bench.dask_cluster import local_cluster

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State, TaskRun


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """The address of a LocalCluster of two single-threaded worker processes."""
    with local_cluster(2) as cluster:
        assert cluster.address is not None
        yield cluster.address


def read_task_runs(state: State) -> list[TaskRun]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=flow_run)


def without_timings(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "wall_s"}
