"""Zigzag sequence parallelism for the CPT trainer: how a batch is cut across the ranks of a
ring, how the loss over the ring is reduced, and which ranks form a ring.

A ring of W ranks cuts each sequence of length L (a multiple of 2W) into 2W chunks; rank r holds
chunks r and 2W-1-r, concatenated. Under causal attention later chunks cost more, so pairing an
early chunk with a late one gives every rank the same work; it is also the layout
ring_flash_attn's zigzag functions expect (tasks.cpt.ring_attention).

Order per step, on every rank: `shard_batch` the full micro-batch (its ring reads the same
batch), run the model on the shard with its `position_ids`, `sum_causal_lm_loss` on the local
logits, `reduce_loss` over the ring, backward.

Pure torch; ring_flash_attn is imported only by tasks.ring_attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = -100  # the label that cross_entropy (and transformers) skips


def _check_layout(length: int, world: int, rank: int) -> None:
    if world < 1:
        raise ValueError(f"sequence-parallel world must be at least 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a sequence-parallel world of {world}")
    if length % (2 * world):
        raise ValueError(
            f"sequence length {length} is not a multiple of 2 * sequence_parallel = {2 * world};"
            " pad the batch to one"
        )


def zigzag_split(t: torch.Tensor, world: int, rank: int, dim: int = 1) -> torch.Tensor:
    """Rank `rank`'s shard of `t` along `dim`: chunks rank and 2*world-1-rank of 2*world."""
    _check_layout(t.shape[dim], world, rank)
    chunks = t.chunk(2 * world, dim=dim)
    return torch.cat([chunks[rank], chunks[2 * world - 1 - rank]], dim=dim)


def zigzag_merge(shards: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """The full tensor from every rank's shard, given in rank order (inverse of zigzag_split)."""
    halves = [shard.chunk(2, dim=dim) for shard in shards]
    if any(len(pair) != 2 or pair[0].shape != pair[1].shape for pair in halves):
        raise ValueError("every shard must have an even length along dim")
    front = [pair[0] for pair in halves]
    back = [pair[1] for pair in reversed(halves)]
    return torch.cat(front + back, dim=dim)


def zigzag_position_ids(seq_len: int, world: int, rank: int) -> torch.Tensor:
    """Global positions of rank `rank`'s tokens, shape (seq_len // world,)."""
    return zigzag_split(torch.arange(seq_len), world, rank, dim=0)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets: out[:, t] = labels[:, t + 1], and IGNORE_INDEX at the last position."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


@dataclass(frozen=True)
class ZigzagShard:
    input_ids: torch.Tensor  # (batch, seq_len // world)
    shift_labels: torch.Tensor  # the target of each local token; IGNORE_INDEX where none
    position_ids: torch.Tensor  # global positions of the local tokens, for rotary embeddings


def shard_batch(
    input_ids: torch.Tensor,
    world: int,
    rank: int,
    *,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> ZigzagShard:
    """Rank `rank`'s shard of a (batch, seq_len) micro-batch.

    `labels` are in transformers' unshifted convention (default: input_ids; IGNORE_INDEX skips
    a token); positions where `attention_mask` is 0 are ignored too. `position_ids` default to
    0..seq_len-1 (all three are (batch, seq_len)). Labels are shifted on the
    full sequence before the split, because a chunk's last target is the first token of a chunk
    that another rank holds. The model gets no attention mask: padding must be on the right,
    where causal attention never reaches it from a real token.
    """
    _check_layout(input_ids.shape[1], world, rank)
    targets = input_ids if labels is None else labels
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask == 0, IGNORE_INDEX)
    if position_ids is None:
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)
        position_ids = position_ids.expand(input_ids.shape[0], -1)
    return ZigzagShard(
        input_ids=zigzag_split(input_ids, world, rank),
        shift_labels=zigzag_split(shift_labels(targets), world, rank),
        position_ids=zigzag_split(position_ids, world, rank),
    )


def sum_causal_lm_loss(
    logits: torch.Tensor, shift_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (fp32) of logits against already shifted labels, and how many
    labels counted. Sums, not a mean, so that ranks with different counts reduce correctly."""
    loss_sum = F.cross_entropy(
        logits.float().flatten(0, -2),
        shift_labels.flatten().to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss_sum, (shift_labels != IGNORE_INDEX).sum()


class _AllReduceSum(torch.autograd.Function):
    # Backward sums the upstream gradients over the group too: every rank calls backward on the
    # same global loss, so each local sum gets the gradient of all of them.
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


def reduce_loss(
    local_loss_sum: torch.Tensor,
    local_token_count: torch.Tensor | int,
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    """The mean loss over every token of the ring's sequences, the same value on every rank.

    Gradients: each rank's parameters get W times its share of the gradient (W = the ring's
    size), so averaging gradients over the whole world, as DeepSpeed and DDP do, yields the
    gradient of the mean over data-parallel replicas of each replica's loss. Keep DeepSpeed's
    data-parallel group the whole world; do not rescale the loss.
    """
    total = _AllReduceSum.apply(local_loss_sum, group)
    count = torch.as_tensor(local_token_count, device=local_loss_sum.device).clone()
    dist.all_reduce(count, group=group)
    # A micro-batch with no label at all contributes zero loss (and zero gradient), not NaN.
    return total / count.clamp(min=1).to(total.dtype)


@dataclass(frozen=True)
class ParallelLayout:
    group: dist.ProcessGroup  # this rank's sequence-parallel ring
    sp_rank: int  # position in the ring: which zigzag shard this rank takes
    dp_rank: int  # which data-parallel replica: the ranks of one ring read the same batches
    dp_world: int  # how many replicas, for the data sampler


def build_groups(world_size: int, sp: int) -> ParallelLayout:
    """Rings of `sp` consecutive ranks ([k*sp, (k+1)*sp)); the rings are data parallel.

    Every rank must call this (new_group is collective over the whole world)."""
    if sp < 1 or world_size % sp:
        raise ValueError(f"sequence_parallel ({sp}) must divide the world size ({world_size})")
    if dist.get_world_size() != world_size:
        raise ValueError(f"world_size {world_size} != torch.distributed's {dist.get_world_size()}")
    rank = dist.get_rank()
    mine = None
    for ring in range(world_size // sp):
        ranks = list(range(ring * sp, (ring + 1) * sp))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    assert mine is not None
    return ParallelLayout(
        group=mine, sp_rank=rank % sp, dp_rank=rank // sp, dp_world=world_size // sp
    )
