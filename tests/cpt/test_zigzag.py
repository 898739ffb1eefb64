"""Zigzag sharding, label shifting and loss reduction for sequence-parallel training."""

from __future__ import annotations

import math
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.cpt.zigzag import (
    IGNORE_INDEX,
    build_groups,
    reduce_loss,
    shard_batch,
    sum_causal_lm_loss,
    zigzag_merge,
    zigzag_position_ids,
    zigzag_split,
)
from tests.support.tiny_models import tiny_llama

worlds = st.integers(1, 4)
chunks = st.integers(1, 4)  # tokens per chunk; a sequence is 2 * world chunks


@settings(max_examples=100, deadline=None)
@given(
    world=worlds,
    chunk=chunks,
    before=st.lists(st.integers(1, 3), max_size=2),
    after=st.lists(st.integers(1, 3), max_size=2),
)
def test_merge_inverts_split(world: int, chunk: int, before: list[int], after: list[int]) -> None:
    shape = (*before, 2 * world * chunk, *after)
    dim = len(before)
    full = torch.arange(math.prod(shape)).reshape(shape)
    shards = [zigzag_split(full, world, rank, dim=dim) for rank in range(world)]
    assert all(shard.shape[dim] == 2 * chunk for shard in shards)
    assert torch.equal(zigzag_merge(shards, dim=dim), full)
    # and the other way round, with a negative dim
    negative = dim - len(shape)
    remerged = zigzag_merge(
        [zigzag_split(full, world, r, dim=negative) for r in range(world)], negative
    )
    assert torch.equal(remerged, full)


def test_split_refuses_a_length_that_does_not_cut_evenly() -> None:
    with pytest.raises(ValueError, match="multiple of 2 \\* sequence_parallel = 4"):
        zigzag_split(torch.zeros(1, 6), world=2, rank=0)
    with pytest.raises(ValueError, match="outside"):
        zigzag_split(torch.zeros(1, 8), world=2, rank=2)


@settings(max_examples=50, deadline=None)
@given(world=worlds, chunk=chunks)
def test_each_rank_holds_chunks_r_and_2w_minus_1_minus_r(world: int, chunk: int) -> None:
    seq_len = 2 * world * chunk
    held = []
    for rank in range(world):
        mirror = 2 * world - 1 - rank
        expected = [
            *range(rank * chunk, (rank + 1) * chunk),
            *range(mirror * chunk, (mirror + 1) * chunk),
        ]
        positions = zigzag_position_ids(seq_len, world, rank)
        assert positions.tolist() == expected
        held += expected
    assert sorted(held) == list(range(seq_len))


@settings(max_examples=50, deadline=None)
@given(world=worlds, chunk=chunks, batch=st.integers(1, 3))
def test_labels_are_the_next_token_of_the_full_sequence(world: int, chunk: int, batch: int) -> None:
    seq_len = 2 * world * chunk
    input_ids = 1000 + torch.arange(batch * seq_len).reshape(batch, seq_len)
    for rank in range(world):
        shard = shard_batch(input_ids, world, rank)
        positions = shard.position_ids
        assert torch.equal(shard.input_ids, input_ids.gather(1, positions))
        following = input_ids.gather(1, (positions + 1).clamp(max=seq_len - 1))
        expected = torch.where(positions + 1 < seq_len, following, IGNORE_INDEX)
        assert torch.equal(shard.shift_labels, expected)


def test_labels_cross_chunk_boundaries_to_other_ranks() -> None:
    input_ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])
    rank0, rank1 = (shard_batch(input_ids, 2, rank) for rank in (0, 1))
    assert rank0.input_ids.tolist() == [[10, 11, 16, 17]]
    assert rank0.shift_labels.tolist() == [[11, 12, 17, IGNORE_INDEX]]  # 12 lives on rank 1
    assert rank0.position_ids.tolist() == [[0, 1, 6, 7]]
    assert rank1.input_ids.tolist() == [[12, 13, 14, 15]]
    assert rank1.shift_labels.tolist() == [[13, 14, 15, 16]]  # 16 lives on rank 0
    assert rank1.position_ids.tolist() == [[2, 3, 4, 5]]


def test_ignored_labels_and_padding_are_never_targets() -> None:
    input_ids = torch.tensor([[10, 11, 12, 13, 14, 15, 0, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 12, 13, 14, 15, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    rank0, rank1 = (
        shard_batch(input_ids, 2, rank, labels=labels, attention_mask=mask) for rank in (0, 1)
    )
    ignore = IGNORE_INDEX
    assert rank0.shift_labels.tolist() == [[ignore, 12, ignore, ignore]]
    assert rank1.shift_labels.tolist() == [[13, 14, 15, ignore]]


def test_given_position_ids_are_split_with_the_tokens() -> None:
    input_ids = torch.arange(8).reshape(1, 8)
    restarts = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])  # two packed documents
    assert shard_batch(input_ids, 2, 1, position_ids=restarts).position_ids.tolist() == [
        [2, 0, 1, 2]
    ]


def test_loss_over_shards_equals_loss_over_the_sequence() -> None:
    model = tiny_llama(vocab_size=64).eval()
    world, seq_len = 3, 24
    input_ids = torch.randint(0, 64, (2, seq_len))
    mask = torch.ones_like(input_ids)
    mask[1, -7:] = 0  # right padding: the rank holding the last chunk has fewer targets
    labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX  # a prompt that is not trained on
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=mask, labels=labels)  # shifts itself

    sums, counts = [], []
    for rank in range(world):
        shard = shard_batch(input_ids, world, rank, labels=labels, attention_mask=mask)
        loss_sum, count = sum_causal_lm_loss(
            zigzag_split(full.logits, world, rank), shard.shift_labels
        )
        sums.append(loss_sum)
        counts.append(count)
    assert len(set(int(c) for c in counts)) > 1  # ranks really hold different numbers of targets
    torch.testing.assert_close(sum(sums) / sum(counts), full.loss)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _groups_worker(rank: int, world: int, port: int, out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        layout = build_groups(world, sp=2)
        # rank r: r + 1 targets, each of loss r + 1
        local_sum = torch.tensor(float((rank + 1) ** 2), requires_grad=True)
        loss = reduce_loss(local_sum, torch.tensor(rank + 1), layout.group)
        loss.backward()
        assert local_sum.grad is not None
        result = {
            "layout": (layout.sp_rank, layout.dp_rank, layout.dp_world),
            "loss": loss.item(),
            "grad": local_sum.grad.item(),
        }
        torch.save(result, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_rings_are_consecutive_ranks_and_reduce_to_their_own_mean(tmp_path: Path) -> None:
    world = 4
    mp.spawn(_groups_worker, args=(world, _free_port(), tmp_path), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world)]
    assert [r["layout"] for r in results] == [(0, 0, 2), (1, 0, 2), (0, 1, 2), (1, 1, 2)]
    # ring {0, 1}: (1 + 4) / (1 + 2); ring {2, 3}: (9 + 16) / (3 + 4)
    expected = [5 / 3, 5 / 3, 25 / 7, 25 / 7]
    assert [r["loss"] for r in results] == pytest.approx(expected)
    # every rank gets ring size / count: averaged over the world, the gradient of the mean
    assert [r["grad"] for r in results] == pytest.approx([2 / 3, 2 / 3, 2 / 7, 2 / 7])


def test_build_groups_needs_sp_to_divide_the_world() -> None:
    with pytest.raises(ValueError, match="must divide the world size"):
        build_groups(world_size=4, sp=3)
