"""Zigzag ring attention for transformers models; the one module that imports ring_flash_attn.

Every rank of a sequence-parallel ring holds a zigzag shard of each sequence (tasks.cpt.zigzag). The
attention function registered here passes keys and values around the ring, so each local query
attends to every earlier token of the whole sequence. ring_flash_attn runs flash-attn's CUDA
kernels: sequence_parallel > 1 needs flash-attn on a GPU machine. The tests run it on CPU with a
pure-torch stand-in for those kernels (tests/support/flash_attn_standin.py).

Usage, once per process after torch.distributed is up: `name = register_zigzag_attention(ring)`
then `model.set_attn_implementation(name)`; feed the model `tasks.zigzag.shard_batch` shards with
their position_ids and no attention mask. Attention is causal over the whole row, so
documents packed into one row see each other (no masking at document boundaries).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist

# Not "...flash...": transformers 5 takes any attn_implementation whose name contains "flash"
# for a flash-attention kernel and tries to load one.
ATTENTION_NAME = "zigzag_ring"

FLASH_ATTN_MISSING = (
    "sequence_parallel > 1 needs flash-attn (CUDA), which ring-flash-attn runs; install it on a"
    " CUDA machine with `pip install flash-attn --no-build-isolation`, or set"
    " sequence_parallel: 1"
)

# ring_flash_attn 0.1.8's HF adapter imports this name from
# transformers.modeling_flash_attention_utils; transformers 5 moved it to transformers.utils
# (deprecated there, to be removed in 5.8). The adapter only tests the name for truth.
_MOVED_NAME = "is_flash_attn_greater_or_equal_2_10"


def _flash_attn_at_least_2_1() -> bool:
    from transformers.utils.import_utils import is_flash_attn_greater_or_equal

    return bool(is_flash_attn_greater_or_equal("2.1.0"))


def _provide_moved_transformers_name() -> None:
    import transformers.modeling_flash_attention_utils as fa_utils

    if not hasattr(fa_utils, _MOVED_NAME):
        setattr(fa_utils, _MOVED_NAME, _flash_attn_at_least_2_1)


def import_ring_flash_attn() -> ModuleType:
    """ring_flash_attn, imported under transformers 5; ImportError naming flash-attn without it."""
    _provide_moved_transformers_name()
    try:
        import ring_flash_attn
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] == "flash_attn":
            raise ImportError(FLASH_ATTN_MISSING) from err
        raise
    return ring_flash_attn


def _check_supported(
    module: torch.nn.Module,
    query: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> None:
    # Each check is a case where the ring would silently compute something else.
    if attention_mask is not None:
        raise ValueError(
            "zigzag ring attention takes no attention mask: it is always causal over the whole"
            " sequence (pad on the right, or pack)"
        )
    if not getattr(module, "is_causal", True):
        raise ValueError("zigzag ring attention is causal only")
    if dropout:
        raise ValueError("zigzag ring attention does not support attention dropout")
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise ValueError("zigzag ring attention supports neither sliding windows nor softcapping")
    # flash-attn kernels take only half precision, and ring_flash_attn's fp32 backward aliases
    # its gradient buffers (wrong gradients).
    if query.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"zigzag ring attention needs bf16 or fp16, got {query.dtype}")


def register_zigzag_attention(group: dist.ProcessGroup | None) -> str:
    """Register zigzag ring attention over `group` with transformers; returns the name to use
    as attn_implementation. Grouped-query attention (fewer key/value heads) is native."""
    zigzag_ring_flash_attn_func = import_ring_flash_attn().zigzag_ring_flash_attn_func

    def zigzag_ring_attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        # transformers hands (batch, heads, seq, head_dim) and wants (batch, seq, heads,
        # head_dim) back, which is flash-attn's layout.
        _check_supported(module, query, attention_mask, dropout, kwargs)
        out = zigzag_ring_flash_attn_func(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            softmax_scale=scaling,
            causal=True,
            group=group,
        )
        return out, None

    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, zigzag_ring_attention)
    return ATTENTION_NAME
