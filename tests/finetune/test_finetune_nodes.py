"""sft/orpo over two nodes, checked on one machine: torchrun's node layout rendered from params
(LlamaFactory's launcher turns it into `torchrun --nnodes --node_rank --nproc_per_node
--master_addr --master_port`), and two real `llamafactory-cli train` runs on 127.0.0.1 with node
ranks 0 and 1, one process each (gloo on the CPU), training the tiny model as one world of two."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tasks.core.params import SftParams
from tasks.core.records import DOMAIN_SFT
from tasks.finetune.llamafactory import (
    StageLayout,
    build_env,
    llamafactory_cli,
    render_train_config,
    write_config,
)
from tests.support.lf_inputs import TINY_TRAIN, write_sets, write_tiny_model
from tests.support.nodes import run_nodes

PORT = 29543
LAUNCH_TIMEOUT_S = 540


def node_params(root: Path, model: Path, node_rank: int) -> SftParams:
    return SftParams(
        model=model,
        output=root / "models" / "sft",
        checkpoints=root / "checkpoints" / "sft",
        # No validation split: what is measured here is that two nodes train as one world.
        train={**TINY_TRAIN, "val_size": 0.0, "eval_strategy": "no", "eval_steps": None},
        nodes=2,
        node_rank=node_rank,
        master_addr="127.0.0.1",
        master_port=PORT,
    )


def test_the_node_layout_reaches_llamafactorys_torchrun() -> None:
    second = SftParams(nodes=2, node_rank=1, master_addr="10.0.0.1", master_port=PORT)
    env = build_env({"PATH": "/usr/bin"}, 4, False, nodes=second)
    assert {k: env[k] for k in ("NNODES", "NODE_RANK", "NPROC_PER_NODE")} == {
        "NNODES": "2",
        "NODE_RANK": "1",
        "NPROC_PER_NODE": "4",
    }
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["FORCE_TORCHRUN"]) == (
        "10.0.0.1",
        str(PORT),
        "1",
    )
    alone = build_env({"PATH": "/usr/bin"}, 1, False, nodes=SftParams())
    assert "FORCE_TORCHRUN" not in alone and "NNODES" not in alone
    several = build_env({"PATH": "/usr/bin"}, 2, False, nodes=SftParams())
    assert several["NNODES"] == "1" and "MASTER_PORT" not in several  # LlamaFactory picks one


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodes": 2, "master_addr": "h0", "master_port": PORT}, "nodes > 1 needs node_rank"),
        ({"nodes": 2, "node_rank": 0, "master_port": PORT}, "nodes > 1 needs master_addr"),
        ({"nodes": 2, "node_rank": 3}, r"node_rank \(3\) must be below nodes \(2\)"),
    ],
)
def test_node_layout_errors_name_the_setting(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SftParams.model_validate(overrides)


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_as_one_world(tmp_path: Path) -> None:
    """Node 0 writes train.yaml as the flow does; both nodes then run `llamafactory-cli train`
    at once with their own node rank; each rank reports a world of two and rank 0 saves."""
    model = write_tiny_model(tmp_path / "tiny")
    paths = write_sets(tmp_path / "data")
    params = [node_params(tmp_path, model, rank) for rank in (0, 1)]
    layout = StageLayout(params[0].output, params[0].checkpoints)
    config = render_train_config(
        "sft", model, [DOMAIN_SFT], paths.sft, layout, params[0].train, deepspeed=False
    )
    write_config(layout.train_yaml, config, "two-node test")
    argv = [llamafactory_cli(), "train", str(layout.train_yaml)]
    nodes = [(argv, build_env(os.environ, 1, False, nodes=node)) for node in params]
    lines = run_nodes(nodes, tmp_path, LAUNCH_TIMEOUT_S)
    for rank, node_lines in enumerate(lines):
        said = [line for line in node_lines if f"Process rank: {rank}, world size: 2" in line]
        assert said, f"node {rank} did not join a world of two"
    state = json.loads((layout.checkpoints / "trainer_state.json").read_text())
    assert state["global_step"] == TINY_TRAIN["max_steps"]
