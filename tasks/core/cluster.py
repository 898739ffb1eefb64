"""Per-page work on a Dask cluster, through Prefect's DaskTaskRunner (params `cluster:`).

A stage hands over its pages in batches with one shared setup (params, the learned template,
the tokenizer) and a pure function of (setup, batch). The setup is sent to the cluster once and
each worker fetches it once; the batches carry the page bytes and their results come back, so
workers read and write nothing of ours on disk: they need the same Python environment with this
project installed, not a shared file system. Results are handed to `collect` in submission
order as they arrive, so the caller writes them out while the cluster works on the rest.

Pages go in batches (`cluster.batch_pages`): each Prefect task run carries its own API calls,
events and state changes, and a page takes only tens of milliseconds to convert, so one run per
page would add that bookkeeping to every page; per batch it is paid once per 64 pages.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tasks.core.params import ClusterParams

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

LOG = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


class ClusterError(RuntimeError):
    """The Dask scheduler named by `cluster.address` cannot be used; the message says why."""


def split_batches(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def check_scheduler(cluster: ClusterParams) -> int:
    """How many threads the cluster's workers have in all; a one-line ClusterError naming
    `cluster.address` when its scheduler cannot be reached, before any work is sent."""
    from distributed import Client

    try:
        with Client(cluster.address, timeout=cluster.connect_timeout_s) as client:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except (OSError, TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ClusterError(
            f"cluster.address: no Dask scheduler answered at {cluster.address} within "
            f"{cluster.connect_timeout_s:g} s ({reason})"
        ) from None
    return sum(int(w.get("nthreads", 1)) for w in workers.values())


def require_scheduler(cluster: ClusterParams) -> None:
    """For a flow's entry point: with `cluster.address` set, its scheduler answers, or the
    process exits with the one-line message, before a flow run starts."""
    if cluster.address:
        try:
            check_scheduler(cluster)
        except ClusterError as exc:
            raise SystemExit(f"error: {exc}") from None


def share(value: Any) -> Any:
    """The setup, as a task result: Dask keeps it on a worker and copies it once to each
    worker that runs a batch, instead of once per batch."""
    return value


def run_batches(
    work: Callable[[S, list[T]], list[R]],
    setup: S,
    batches: Iterable[list[T]],
    cluster: ClusterParams,
    collect: Callable[[list[R]], None],
) -> None:
    """`work(setup=..., pages=...)` for every batch on the cluster, each batch a Prefect task
    run (of the calling flow run, when there is one); `collect` gets each batch's results in
    order, in this process. Batches are drawn from `batches` only as earlier ones finish, so
    the pages in flight (held by the scheduler until a worker takes them) stay a few per
    thread, however large the site."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    threads = check_scheduler(cluster)
    LOG.info("pages go to the Dask cluster at %s (%d threads)", cluster.address, threads)
    # Two batches per thread keep every thread busy while results travel back.
    window = max(2 * threads, 2)
    name = work.__name__.replace("_", "-")
    # Inputs are page bytes: hashing them for a cache key would cost time and cache nothing.
    share_task = task(name=f"{name}-setup", cache_policy=NO_CACHE)(share)
    batch_task = task(name=name, cache_policy=NO_CACHE)(work)
    timeout = {"timeout": cluster.connect_timeout_s}
    # The runner is used directly rather than as a nested flow's: a flow is sent along with
    # each of its task runs, and one defined here would carry the setup and every batch.
    with DaskTaskRunner(address=cluster.address, client_kwargs=timeout) as runner:
        # A future stands in for its value: each worker fetches the setup from Dask once.
        shared = runner.submit(share_task, {"value": setup})
        pending: deque[PrefectFuture[list[R]]] = deque()
        for batch in batches:
            pending.append(runner.submit(batch_task, {"setup": shared, "pages": batch}))
            if len(pending) >= window:
                collect(pending.popleft().result())
        while pending:
            collect(pending.popleft().result())
