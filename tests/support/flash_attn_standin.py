"""A pure-torch stand-in for flash-attn's four private kernels, to run ring_flash_attn on CPU.

ring_flash_attn 0.1.8 imports `_flash_attn_forward`, `_flash_attn_backward` and their varlen
pair from `flash_attn.flash_attn_interface` when it is imported; flash-attn itself builds only
against CUDA. These functions take flash-attn 2.7's arguments (ring_flash_attn fills them by
name, from the functions' own defaults) and keep its conventions:

- tensors are (batch, seq, heads, head_dim); varlen ones (tokens, heads, head_dim) with
  cu_seqlens; fewer key/value heads than query heads is grouped-query attention;
- a causal mask aligns to the bottom right when there are more keys than queries;
- forward returns (out, softmax_lse, S_dmask, rng_state), the log-sum-exp in fp32 as
  (batch, heads, seq) (varlen: (heads, tokens)), +inf for a query that sees no key;
- backward writes into the dq/dk/dv buffers it is given and returns softmax_d; it uses the out
  and softmax_lse it is given, which in a ring are the merged ones over all blocks.

Only half precision is accepted, like the kernels. Arithmetic is fp32; results are cast to the
inputs' dtype. Dropout, windows, softcapping and ALiBi are not modelled and raise.

`flash_attn_standin()` makes `flash_attn` importable only for as long as ring_flash_attn is
being imported: left in sys.modules, it would make transformers believe flash-attn is installed.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    dropout_p: float,
    window: tuple[int, int],
    softcap: float,
    alibi_slopes: torch.Tensor | None,
) -> None:
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"FlashAttention only supports fp16 and bf16, got {q.dtype}")
    if q.shape[-2] % k.shape[-2]:
        raise ValueError("number of query heads must be a multiple of key/value heads")
    if dropout_p or window != (-1, -1) or softcap or alibi_slopes is not None:
        raise NotImplementedError("the stand-in models no dropout, window, softcap or ALiBi")


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """fp32 (batch, heads, seq_q, seq_k) scores, key/value heads repeated for the query heads."""
    k = k.float().repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k) * scale
    if causal:
        seq_q, seq_k = q.shape[1], k.shape[1]
        allowed = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device).tril(seq_k - seq_q)
        scores = scores.masked_fill(~allowed, -math.inf)
    return scores


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = _scores(q, k, scale, causal)
    lse = scores.logsumexp(dim=-1)
    empty = torch.isneginf(lse)
    probs = torch.exp(scores - lse.masked_fill(empty, 0.0)[..., None])
    v = v.float().repeat_interleave(q.shape[2] // v.shape[2], dim=2)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.to(q.dtype), lse.masked_fill(empty, math.inf)


def _attend_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    groups = q.shape[2] // k.shape[2]
    probs = torch.exp(_scores(q, k, scale, causal) - lse.float()[..., None])
    dout = dout.float()
    v_rep = v.float().repeat_interleave(groups, dim=2)
    k_rep = k.float().repeat_interleave(groups, dim=2)
    softmax_d = (dout * out.float()).sum(dim=-1).transpose(1, 2)  # (batch, heads, seq_q)
    dprobs = torch.einsum("bqhd,bkhd->bhqk", dout, v_rep)
    dscores = probs * (dprobs - softmax_d[..., None]) * scale
    dq = torch.einsum("bhqk,bkhd->bqhd", dscores, k_rep)
    dk = torch.einsum("bhqk,bqhd->bkhd", dscores, q.float())
    dv = torch.einsum("bhqk,bqhd->bkhd", probs, dout)
    # a key/value head's gradient is the sum over the query heads that share it
    batch, seq_k, heads_k, dim = k.shape
    dk = dk.reshape(batch, seq_k, heads_k, groups, dim).sum(dim=3)
    dv = dv.reshape(batch, seq_k, heads_k, groups, dim).sum(dim=3)
    return dq, dk, dv, softmax_d


def _default_scale(q: torch.Tensor, softmax_scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale


def _spans(cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor) -> Iterator[tuple[slice, slice]]:
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(bounds_q) - 1):
        yield slice(bounds_q[i], bounds_q[i + 1]), slice(bounds_k[i], bounds_k[i + 1])


def _flash_attn_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    return_softmax: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(q, k, dropout_p, (window_size_left, window_size_right), softcap, alibi_slopes)
    out, lse = _attend(q, k, v, _default_scale(q, softmax_scale), causal)
    return out, lse, torch.empty(0, dtype=q.dtype), torch.zeros(2, dtype=torch.int64)


def _flash_attn_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: torch.Tensor | None,
    dk: torch.Tensor | None,
    dv: torch.Tensor | None,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    rng_state: torch.Tensor | None = None,
) -> torch.Tensor:
    _check(q, k, dropout_p, (window_size_left, window_size_right), softcap, alibi_slopes)
    grads = _attend_backward(
        dout, q, k, v, out, softmax_lse, _default_scale(q, softmax_scale), causal
    )
    for buffer, grad in zip((dq, dk, dv), grads[:3], strict=True):
        if buffer is not None:
            buffer.copy_(grad)
    return grads[3]


def _flash_attn_varlen_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    return_softmax: bool = False,
    block_table: torch.Tensor | None = None,
    leftpad_k: torch.Tensor | None = None,
    seqused_k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(q, k, dropout_p, (window_size_left, window_size_right), softcap, alibi_slopes)
    scale = _default_scale(q, softmax_scale)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)
    for span_q, span_k in _spans(cu_seqlens_q, cu_seqlens_k):
        seq_out, seq_lse = _attend(q[None, span_q], k[None, span_k], v[None, span_k], scale, causal)
        out[span_q], lse[:, span_q] = seq_out[0], seq_lse[0]
    return out, lse, torch.empty(0, dtype=q.dtype), torch.zeros(2, dtype=torch.int64)


def _flash_attn_varlen_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: torch.Tensor | None,
    dk: torch.Tensor | None,
    dv: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    rng_state: torch.Tensor | None = None,
) -> torch.Tensor:
    _check(q, k, dropout_p, (window_size_left, window_size_right), softcap, alibi_slopes)
    scale = _default_scale(q, softmax_scale)
    softmax_d = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)
    for span_q, span_k in _spans(cu_seqlens_q, cu_seqlens_k):
        seq_dq, seq_dk, seq_dv, seq_d = _attend_backward(
            dout[None, span_q],
            q[None, span_q],
            k[None, span_k],
            v[None, span_k],
            out[None, span_q],
            softmax_lse[None, :, span_q],
            scale,
            causal,
        )
        for buffer, grad, span in (
            (dq, seq_dq, span_q),
            (dk, seq_dk, span_k),
            (dv, seq_dv, span_k),
        ):
            if buffer is not None:
                buffer[span].copy_(grad[0])
        softmax_d[:, span_q] = seq_d[0]
    return softmax_d


KERNELS = (
    _flash_attn_forward,
    _flash_attn_backward,
    _flash_attn_varlen_forward,
    _flash_attn_varlen_backward,
)


@contextmanager
def flash_attn_standin() -> Iterator[None]:
    """Make `flash_attn.flash_attn_interface` importable with the stand-in kernels, for the
    duration (wrap the first import of ring_flash_attn in it; its modules keep the functions)."""
    # transformers probes for flash-attn (importlib.util.find_spec, which fails on a module
    # without a spec) when its modeling code is first imported: let that happen first.
    import transformers.modeling_utils  # noqa: F401

    names = ("flash_attn", "flash_attn.flash_attn_interface")
    if any(name in sys.modules for name in names):
        raise RuntimeError("a flash_attn module is already imported; the stand-in would hide it")
    package = types.ModuleType(names[0])
    package.__path__ = []
    interface = types.ModuleType(names[1])
    for kernel in KERNELS:
        setattr(interface, kernel.__name__, kernel)
    package.flash_attn_interface = interface  # type: ignore[attr-defined]
    sys.modules.update({names[0]: package, names[1]: interface})
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)
