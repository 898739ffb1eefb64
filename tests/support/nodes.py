"""Launcher processes ("nodes") of one multi-node run, all started at once on this machine the
way each node of a cluster starts its own, each writing its output to a file of its own."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tasks.core.procs import start_process, stop_process_group

Node = tuple[Sequence[str], Mapping[str, str]]  # (argv, env)


def run_nodes(nodes: Sequence[Node], log_dir: Path, timeout_s: float) -> list[list[str]]:
    """Start every node at once (its output to log_dir/node<i>.log), wait for all of them, stop
    any still running (a timeout, a failure elsewhere), and assert each exited 0, showing every
    node's last lines when one did not; returns each node's output lines."""
    logs = [log_dir / f"node{i}.log" for i in range(len(nodes))]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for (argv, env), log in zip(nodes, logs, strict=True):
            with log.open("wb") as out:
                procs.append(start_process(argv, env, stdout=out))
        codes = [proc.wait(timeout=timeout_s) for proc in procs]
    finally:
        for proc in procs:
            stop_process_group(proc, grace_s=5)
    lines = [log.read_text(errors="replace").splitlines() for log in logs]
    assert codes == [0] * len(nodes), "\n".join(
        f"node {i}: {node_lines[-25:]}" for i, node_lines in enumerate(lines)
    )
    return lines
