"""The one place the eval stage runs models with transformers: perplexity, the likelihood of
an answer given a question, and greedy answers, each with the model's own chat template."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Perplexity windows: long enough for a page's context, short enough for a CPU's memory.
MAX_WINDOW = 2048


@dataclass
class LoadedModel:
    folder: Path
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizer
    device: str

    @property
    def window(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", MAX_WINDOW) or MAX_WINDOW
        return int(min(limit, MAX_WINDOW))

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def load_model(folder: Path) -> LoadedModel:
    """A transformers folder in eval mode: bf16 on a GPU, fp32 on a CPU."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no transformers model (config.json) there; run the stage that writes it"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per model would flood the Prefect log
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return LoadedModel(folder, model, tokenizer, device)


def render_chat_ids(lm: LoadedModel, system: str, user: str) -> list[int]:
    """The prompt of one chat turn, through the model's chat template, ready for the reply."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    text = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(lm: LoadedModel, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def score_text_nll(lm: LoadedModel, ids: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of `ids` and the number of tokens predicted, in windows
    of the model's context (as the cpt stage scores its held-out pages)."""
    from tasks.core.perplexity import score_windows, split_windows

    scored = score_windows(lm.model, split_windows(ids, lm.window))
    return (scored["nll"] or 0.0) * scored["tokens"], scored["tokens"]


def perplexity(nll: float, tokens: int) -> float | None:
    return math.exp(nll / tokens) if tokens else None


def score_answers(
    lm: LoadedModel, prompts: list[list[int]], answers: list[list[int]], batch_size: int
) -> list[float]:
    """Mean log-probability per token of each answer after its prompt (length-normalised, so a
    longer answer is not penalised for its length)."""
    import torch

    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows = [p + a for p, a in zip(prompts[start:], answers[start:], strict=False)][:batch_size]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), lm.pad_id, device=lm.device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=lm.device)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.inference_mode():
            logprobs = torch.log_softmax(
                lm.model(input_ids=ids, attention_mask=mask).logits.float(), -1
            )
        for i, row in enumerate(rows):
            p = len(prompts[start + i])
            targets = torch.tensor(row[p:], device=lm.device)
            picked = logprobs[i, p - 1 : len(row) - 1].gather(1, targets.unsqueeze(1))
            scores.append(float(picked.mean()) if len(targets) else float("-inf"))
    return scores


def generate_greedy(
    lm: LoadedModel, prompts: list[list[int]], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy replies, `batch_size` prompts at a time (left-padded, as decoder-only
    generation needs), stopping at the model's end of turn."""
    import torch

    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), lm.pad_id, device=lm.device)
        mask = torch.zeros((len(batch), width), dtype=torch.long, device=lm.device)
        for i, p in enumerate(batch):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=lm.pad_id,
            )
        for row in out[:, width:]:
            replies.append(lm.tokenizer.decode(row, skip_special_tokens=True).strip())
    return replies
