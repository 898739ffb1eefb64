"""cpt over two nodes, checked on one machine: the launch commands rendered from params, and two
launcher processes on 127.0.0.1 (node ranks 0 and 1, one process each, gloo on the CPU) running
the real trainer on the tiny model as one world of two ranks, through DeepSpeed's launcher
(`--no_ssh --node_rank`) and through torchrun."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tasks.core.params import CptParams
from tasks.cpt.config import (
    RUN_FILE,
    render_fingerprint,
    render_launch_command,
    render_launch_env,
    render_run_spec,
)
from tasks.cpt.launch import (
    prepare_checkpoint_dir,
    read_input_hashes,
    read_step_log,
    read_trainer_result,
    write_run_spec,
)
from tests.support.cpt_fixtures import build_tiny_phase, tiny_params
from tests.support.nodes import run_nodes

# Fixed rendezvous ports, one per launcher, so the two variants never meet each other's ranks.
PORTS = {"deepspeed": 29541, "torchrun": 29542}
STEPS = 4
LAUNCH_TIMEOUT_S = 480


def node_params(root: Path, launcher: str, node_rank: int | None, **extra: Any) -> CptParams:
    return tiny_params(
        root,
        phases={"tiny": {"seq_len": 64, "init_from": root / "base", "max_steps": STEPS}},
        launcher=launcher,
        nodes=2,
        node_rank=node_rank,
        master_addr="127.0.0.1",
        master_port=PORTS[launcher],
        **extra,
    )


def test_multi_node_commands_carry_the_node_layout(tmp_path: Path) -> None:
    run = tmp_path / "run.json"
    hostfile = tmp_path / "hostfile"
    torchrun = render_launch_command(node_params(tmp_path, "torchrun", 1), run, 29541, "py")
    assert torchrun[:3] == ["py", "-m", "torch.distributed.run"]
    for arg in (
        "--nproc_per_node=1",
        "--nnodes=2",
        "--node_rank=1",
        "--master_addr=127.0.0.1",
        "--master_port=29541",
    ):
        assert arg in torchrun
    ssh = node_params(tmp_path, "deepspeed", None, hostfile=hostfile)
    by_ssh = render_launch_command(ssh, run, 29541, "py")
    assert f"--hostfile={hostfile}" in by_ssh and "--master_addr=127.0.0.1" in by_ssh
    assert "--num_nodes=2" in by_ssh and "--no_ssh" not in by_ssh
    each = node_params(tmp_path, "deepspeed", 1, hostfile=hostfile)
    by_each = render_launch_command(each, run, 29541, "py")
    assert by_each[-5:-3] == ["--no_ssh", "--node_rank=1"]
    single = render_launch_command(tiny_params(tmp_path), run, 29541, "py")
    assert not any(a.startswith(("--master_addr", "--node_rank", "--no_ssh")) for a in single)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodes": 2, "master_port": 29541}, "nodes > 1 needs master_addr"),
        ({"nodes": 2, "master_addr": "10.0.0.1"}, "nodes > 1 needs a fixed master_port"),
        ({"nodes": 2, "node_rank": 2}, r"node_rank \(2\) must be below nodes \(2\)"),
        (
            {"nodes": 2, "master_addr": "h0", "master_port": 29541},
            "with launcher deepspeed needs a hostfile",
        ),
        (
            {"nodes": 2, "master_addr": "h0", "master_port": 29541, "launcher": "torchrun"},
            "with launcher torchrun needs node_rank",
        ),
    ],
)
def test_node_layout_errors_name_the_setting(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_params(tmp_path, **overrides)


def launch_nodes(params: list[CptParams], root: Path) -> tuple[Any, list[list[str]]]:
    """Node 0's flow writes the run spec; then every node's launcher starts at once, its
    output to a file; returns the spec and each node's log lines."""
    settings = params[0].phase("tiny")
    spec = render_run_spec(params[0], settings, STEPS, root / "data")
    prepare_checkpoint_dir(spec.checkpoint_dir, render_fingerprint(spec, read_input_hashes(spec)))
    write_run_spec(spec)
    nodes = [
        (
            render_launch_command(node, spec.checkpoint_dir / RUN_FILE, node.master_port or 0),
            render_launch_env(os.environ, node, cuda=False, cores=2),
        )
        for node in params
    ]
    return spec, run_nodes(nodes, root, LAUNCH_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_two_nodes_on_one_machine_train_as_one_world(tmp_path: Path, launcher: str) -> None:
    """Ranks 0 and 1 come from different launchers (nodes) and train as one data-parallel
    world of two: the trainer checks the world size against the run spec, rank 0 writes the
    steps and the model, the weights move."""
    build_tiny_phase(tmp_path)
    hostfile = tmp_path / "hostfile"
    # Names only: with --no_ssh DeepSpeed reaches no host; node 0 is at master_addr.
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    extra = {"hostfile": hostfile} if launcher == "deepspeed" else {}
    params = [node_params(tmp_path, launcher, rank, **extra) for rank in (0, 1)]
    spec, lines = launch_nodes(params, tmp_path)
    result = read_trainer_result(spec)
    assert result["world_size"] == 2 and result["data_parallel"] == 2
    steps = read_step_log(spec)
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert all(math.isfinite(s["loss"]) for s in steps)
    assert all(0 < s["tokens"] <= 2 * 64 for s in steps)  # at most a row from each node
    trained = load_file(str(spec.export_dir / "model.safetensors"))
    start = load_file(str(spec.init_from / "model.safetensors"))
    assert max(float((trained[k] - start[k]).abs().max()) for k in start) > 1e-4
    if launcher == "deepspeed":
        assert any("--node_rank=1" in line for line in lines[1])  # the launcher's own command
