"""Next-token negative log-likelihood of a causal LM over token windows: the held-out
perplexity of the cpt stage and the perplexities of the eval stage, computed one way.

A window's first token has no context in the window, so a window of n tokens contributes
n - 1 predictions; nothing is padded, so only real tokens count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def split_windows(ids: Sequence[int], seq_len: int) -> list[list[int]]:
    """Consecutive windows of at most seq_len tokens; a last window of one token predicts
    nothing and is left out."""
    windows = [list(ids[i : i + seq_len]) for i in range(0, len(ids), seq_len)]
    return [w for w in windows if len(w) > 1]


# Positions whose logits are computed at once. A 128K window of a 128K vocabulary would need
# 64 GB of fp32 logits; in chunks, the output head runs on the final hidden states piece by piece.
LOGIT_CHUNK = 8192


@torch.no_grad()
def sum_window_nll(model: Any, window: Sequence[int]) -> tuple[float, int]:
    """Summed next-token NLL over the window and the number of predictions (len - 1)."""
    ids = torch.tensor([list(window)], device=model.device)
    targets = ids[0, 1:]
    if len(window) <= LOGIT_CHUNK:
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        return float(F.cross_entropy(logits, targets, reduction="sum")), len(targets)
    # The causal-LM head on the decoder's last hidden states (what Llama-style models do).
    hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
    head = model.get_output_embeddings()
    total = 0.0
    for start in range(0, len(targets), LOGIT_CHUNK):
        logits = head(hidden[start : start + LOGIT_CHUNK]).float()
        chunk = targets[start : start + LOGIT_CHUNK]
        total += float(F.cross_entropy(logits, chunk, reduction="sum"))
    return total, len(targets)


def score_windows(model: Any, windows: Iterable[Sequence[int]]) -> dict[str, Any]:
    total, count = 0.0, 0
    for window in windows:
        nll, n = sum_window_nll(model, window)
        total, count = total + nll, count + n
    if count == 0:
        return {"perplexity": None, "nll": None, "tokens": 0}
    return {"perplexity": math.exp(total / count), "nll": total / count, "tokens": count}
