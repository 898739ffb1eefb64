"""Perplexity of a causal LM on held-out pages (data/eval/pages.jsonl).

Each page is tokenized with the model's own tokenizer as the CPT corpus is (no special tokens,
one EOS after the page) and cut into consecutive windows of seq_len tokens, each scored on its
own. A window's first token has no context in the window, so a window of n tokens contributes
n - 1 predictions; nothing is padded, so only real tokens count. Perplexity is
exp(total NLL / total predictions) over all pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tasks.core.io import read_jsonl
from tasks.core.perplexity import score_windows, split_windows
from tasks.core.records import EvalPage


def read_eval_texts(eval_dir: Path) -> list[str]:
    path = eval_dir / "pages.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro datasets` first")
    return [EvalPage.model_validate(row).text for row in read_jsonl(path)]


def measure_perplexity(model_dir: Path, texts: Sequence[str], seq_len: int) -> dict[str, Any]:
    """Perplexity of the model in model_dir on `texts`, in windows of seq_len tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{model_dir}: the tokenizer has no EOS token")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    model = model.to(device).eval()
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    windows = [w for ids in encoded for w in split_windows([*ids, tokenizer.eos_token_id], seq_len)]
    return {**score_windows(model, windows), "pages": len(texts), "windows": len(windows)}
