"""Zigzag ring attention on CPU: ring_flash_attn over 2 gloo processes, flash-attn's kernels
replaced by the pure-torch stand-in (tests/support/flash_attn_standin.py), against full causal
attention on one process.

All in bf16: ring_flash_attn's fp32 backward is wrong (its gradient buffers alias), and
flash-attn takes only half precision anyway. Tolerances are bf16 ones; the measured errors are
printed (pytest -s).
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tasks.cpt.ring_attention import import_ring_flash_attn, register_zigzag_attention
from tasks.cpt.zigzag import (
    IGNORE_INDEX,
    ParallelLayout,
    build_groups,
    reduce_loss,
    shard_batch,
    shift_labels,
    sum_causal_lm_loss,
    zigzag_merge,
    zigzag_split,
)
from tests.support.flash_attn_standin import (
    _flash_attn_backward,
    _flash_attn_forward,
    _flash_attn_varlen_backward,
    _flash_attn_varlen_forward,
    flash_attn_standin,
)

WORLD = 2
BATCH, SEQ, HEAD_DIM = 2, 64, 16
HEADS = {"mha": (4, 4), "gqa": (4, 2)}  # query heads, key/value heads
LLAMA = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention through the model too
    "max_position_embeddings": 64,
}
LLAMA_SEQ = 32

# bf16 keeps 8 bits of mantissa (relative step 2**-8 = 0.004); the ring rounds each block's
# output and gradient to bf16 before merging them, so allow a few steps on O(1) values.
ATTENTION_TOL = {"atol": 3e-2, "rtol": 3e-2}
# Whole-model gradients, per parameter: |ring - full| / |full| (Frobenius norms).
GRAD_REL_TOL = 3e-2
# The loss of a random tiny model hardly depends on positions (wrong ones move it by 1e-3 but
# the gradients by 100%), so the gradients are the sharper check; the loss is off by 1e-5.
LOSS_TOL = 5e-3


class _CausalAttention(torch.nn.Module):
    is_causal = True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _attention_case(heads: int, kv_heads: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).bfloat16()

    # transformers' layout: (batch, heads, seq, head_dim); the output is (batch, seq, heads, dim)
    return {
        "q": randn(BATCH, heads, SEQ, HEAD_DIM),
        "k": randn(BATCH, kv_heads, SEQ, HEAD_DIM),
        "v": randn(BATCH, kv_heads, SEQ, HEAD_DIM),
        "dout": randn(BATCH, SEQ, heads, HEAD_DIM),
    }


def _tiny_llama(state: dict[str, torch.Tensor] | None = None) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**LLAMA))
    if state is not None:
        model.load_state_dict(state)
    return model.to(torch.bfloat16)


def _llama_case() -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = _tiny_llama().state_dict()
    input_ids = torch.randint(0, LLAMA["vocab_size"], (BATCH, LLAMA_SEQ))
    labels = input_ids.clone()
    labels[1, -9:] = IGNORE_INDEX  # right padding: rank 0 holds the end, so fewer targets
    return {"state": state, "input_ids": input_ids, "labels": labels}


def _ring_llama_step(case: dict[str, Any], attn: str, layout: ParallelLayout) -> dict[str, Any]:
    model = _tiny_llama(case["state"])
    model.set_attn_implementation(attn)
    shard = shard_batch(case["input_ids"], WORLD, layout.sp_rank, labels=case["labels"])
    inputs = {"input_ids": shard.input_ids, "position_ids": shard.position_ids}
    logits = model(**inputs, use_cache=False).logits
    loss_sum, count = sum_causal_lm_loss(logits, shard.shift_labels)
    loss = reduce_loss(loss_sum, count, layout.group)
    loss.backward()
    grads = {name: p.grad.float() for name, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.item(), "count": int(count), "grads": grads}


def _ring_worker(rank: int, port: int, workdir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=120),
    )
    try:
        layout = build_groups(WORLD, sp=WORLD)
        with flash_attn_standin():
            attn = register_zigzag_attention(layout.group)
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attention = ALL_ATTENTION_FUNCTIONS[attn]
        cases = torch.load(workdir / "cases.pt")
        results: dict[str, Any] = {}
        for name, case in cases["attention"].items():
            q, k, v = (zigzag_split(case[x], WORLD, rank, dim=2).requires_grad_() for x in "qkv")
            out, _ = attention(_CausalAttention(), q, k, v, None, scaling=HEAD_DIM**-0.5)
            out.backward(zigzag_split(case["dout"], WORLD, rank, dim=1))
            results[name] = {"out": out.detach(), "grads": [x.grad for x in (q, k, v)]}
        results["llama"] = _ring_llama_step(cases["llama"], attn, layout)
        torch.save(results, workdir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _full_attention(case: dict[str, torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Full causal attention on one process from the bf16 inputs computed in `dtype` (fp32:
    the truth; bf16: what plain bf16 attention is off by): out, dq, dk, dv."""
    q, k, v = (case[x].to(dtype).requires_grad_() for x in "qkv")
    groups = q.shape[1] // k.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), is_causal=True
    ).transpose(1, 2)
    out.backward(case["dout"].to(dtype))
    return [out.detach(), *(x.grad for x in (q, k, v))]


def _full_llama_step(case: dict[str, Any]) -> dict[str, Any]:
    model = _tiny_llama(case["state"])
    model.set_attn_implementation("sdpa")
    logits = model(input_ids=case["input_ids"], use_cache=False).logits
    loss_sum, count = sum_causal_lm_loss(logits, shift_labels(case["labels"]))
    loss = loss_sum / count
    loss.backward()
    grads = {name: p.grad.float() for name, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.item(), "grads": grads}


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("ring")
    cases = {
        "attention": {
            name: _attention_case(*heads, seed=i) for i, (name, heads) in enumerate(HEADS.items())
        },
        "llama": _llama_case(),
    }
    torch.save(cases, workdir / "cases.pt")
    mp.spawn(_ring_worker, args=(_free_port(), workdir), nprocs=WORLD, join=True)
    return {"cases": cases, "ranks": [torch.load(workdir / f"rank{r}.pt") for r in range(WORLD)]}


def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max())


@pytest.mark.parametrize("name", list(HEADS))
def test_zigzag_ring_attention_matches_full_causal_attention(
    ring_run: dict[str, Any], name: str
) -> None:
    case = ring_run["cases"]["attention"][name]
    ranks = [results[name] for results in ring_run["ranks"]]
    got = [zigzag_merge([r["out"] for r in ranks], dim=1)]
    got += [zigzag_merge([r["grads"][i] for r in ranks], dim=2) for i in range(3)]
    truth = _full_attention(case, torch.float32)
    plain = _full_attention(case, torch.bfloat16)
    report = [
        f"{label} {_max_error(g, t):.4f} (plain bf16 {_max_error(p, t):.4f})"
        for label, g, t, p in zip(("out", "dq", "dk", "dv"), got, truth, plain, strict=True)
    ]
    print(f"\n{name} max abs error: " + ", ".join(report))
    for g, t in zip(got, truth, strict=True):
        assert g.shape == t.shape
        torch.testing.assert_close(g.float(), t, **ATTENTION_TOL)


def test_ring_llama_loss_and_gradients_match_single_process_sdpa(ring_run: dict[str, Any]) -> None:
    ranks = [results["llama"] for results in ring_run["ranks"]]
    want = _full_llama_step(ring_run["cases"]["llama"])
    assert ranks[0]["count"] != ranks[1]["count"]  # the reduction has uneven shares to weigh
    assert ranks[0]["loss"] == ranks[1]["loss"]
    print(f"\nllama: loss ring {ranks[0]['loss']:.5f} full {want['loss']:.5f}")
    assert ranks[0]["loss"] == pytest.approx(want["loss"], abs=LOSS_TOL)
    # DeepSpeed averages gradients over the world; reduce_loss makes that the full gradient
    worst = 0.0
    for name, wanted in want["grads"].items():
        got = sum(r["grads"][name] for r in ranks) / WORLD
        worst = max(worst, float((got - wanted).norm() / wanted.norm()))
    print(f"llama: worst relative gradient error {worst:.4f}")
    assert worst < GRAD_REL_TOL


# The stand-in itself, and the import path, in this process.


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, causal: bool
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """fp32 autograd attention in flash-attn's (batch, seq, heads, dim) layout, bottom-right
    causal mask; out, log-sum-exp and q/k/v gradients."""
    q32, k32, v32 = (x.float().requires_grad_() for x in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    scores = torch.einsum("bqhd,bkhd->bhqk", q32, k32.repeat_interleave(groups, 2)) * HEAD_DIM**-0.5
    if causal:
        allowed = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril(k.shape[1] - q.shape[1])
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v32.repeat_interleave(groups, 2))
    out.backward(dout.float())
    return out.detach(), scores.logsumexp(-1).detach(), [x.grad for x in (q32, k32, v32)]


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize(
    ("seq_q", "seq_k", "causal"), [(12, 12, True), (6, 12, True), (6, 12, False)]
)
def test_standin_kernels_match_autograd(
    kv_heads: int, seq_q: int, seq_k: int, causal: bool
) -> None:
    gen = torch.Generator().manual_seed(seq_q + kv_heads)
    q = torch.randn(2, seq_q, 4, HEAD_DIM, generator=gen).bfloat16()
    k, v = (torch.randn(2, seq_k, kv_heads, HEAD_DIM, generator=gen).bfloat16() for _ in "kv")
    dout = torch.randn(2, seq_q, 4, HEAD_DIM, generator=gen).bfloat16()
    want_out, want_lse, want_grads = _reference(q, k, v, dout, causal)

    out, lse, _, _ = _flash_attn_forward(q, k, v, 0.0, HEAD_DIM**-0.5, causal)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32 and lse.shape == (2, 4, seq_q)
    torch.testing.assert_close(out.float(), want_out, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse, want_lse)
    buffers = [torch.empty_like(x) for x in (q, k, v)]
    _flash_attn_backward(dout, q, k, v, out, lse, *buffers, 0.0, HEAD_DIM**-0.5, causal)
    for got, wanted in zip(buffers, want_grads, strict=True):
        torch.testing.assert_close(got.float(), wanted, atol=2e-2, rtol=2e-2)


def test_standin_varlen_kernels_attend_within_each_sequence() -> None:
    gen = torch.Generator().manual_seed(7)
    lengths = [5, 11]
    cu = torch.tensor([0, 5, 16], dtype=torch.int32)
    q = torch.randn(16, 4, HEAD_DIM, generator=gen).bfloat16()
    k, v = (torch.randn(16, 2, HEAD_DIM, generator=gen).bfloat16() for _ in "kv")
    dout = torch.randn(16, 4, HEAD_DIM, generator=gen).bfloat16()
    scale = HEAD_DIM**-0.5
    out, lse, _, _ = _flash_attn_varlen_forward(q, k, v, cu, cu, 11, 11, 0.0, scale, True)
    assert lse.shape == (4, 16)
    buffers = [torch.empty_like(x) for x in (q, k, v)]
    _flash_attn_varlen_backward(dout, q, k, v, out, lse, *buffers, cu, cu, 11, 11, 0.0, scale, True)
    start = 0
    for length in lengths:
        span = slice(start, start + length)
        want_out, want_lse, want_grads = _reference(
            *(x[None, span] for x in (q, k, v, dout)), causal=True
        )
        torch.testing.assert_close(out[span].float(), want_out[0], atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(lse[:, span], want_lse[0])
        for got, wanted in zip(buffers, want_grads, strict=True):
            torch.testing.assert_close(got[span].float(), wanted[0], atol=2e-2, rtol=2e-2)
        start += length


@pytest.fixture
def fresh_import() -> Iterator[None]:
    """ring_flash_attn (and any flash_attn) out of sys.modules for the test, back afterwards."""
    prefixes = ("ring_flash_attn", "flash_attn")
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] in prefixes}
    for name in saved:
        del sys.modules[name]
    yield
    for name in [n for n in sys.modules if n.split(".")[0] in prefixes]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_without_flash_attn_the_error_names_it(fresh_import: None) -> None:
    with pytest.raises(ImportError, match=r"sequence_parallel > 1 needs flash-attn \(CUDA\)"):
        import_ring_flash_attn()


def test_standin_is_visible_only_while_ring_flash_attn_imports(fresh_import: None) -> None:
    with flash_attn_standin():
        ring = import_ring_flash_attn()
    assert "flash_attn" not in sys.modules
    assert importlib.util.find_spec("flash_attn") is None  # what transformers checks
    assert callable(ring.zigzag_ring_flash_attn_func)


def test_attention_refuses_what_the_ring_would_compute_wrongly(fresh_import: None) -> None:
    with flash_attn_standin():
        name = register_zigzag_attention(None)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attention = ALL_ATTENTION_FUNCTIONS[name]
    q = torch.zeros(1, 4, 8, HEAD_DIM, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="needs bf16 or fp16"):
        attention(_CausalAttention(), q.float(), q.float(), q.float(), None)
    with pytest.raises(ValueError, match="no attention mask"):
        attention(_CausalAttention(), q, q, q, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="dropout"):
        attention(_CausalAttention(), q, q, q, None, dropout=0.1)
