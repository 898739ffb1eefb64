"""Does a GGUF served by llama.cpp predict what a transformers model predicts? The check both
directions of conversion share (the model stage: GGUF → transformers; export: transformers →
GGUF): on the first tokens of a real documentation page, the next-token argmax of the
transformers model against llama.cpp's greedy next token after each prefix, plus whether
llama.cpp tokenizes the page into the same ids as the transformers tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.core.procs import free_port
from tasks.llm.server import start_llama_server

SAMPLE_PAGE = Path(__file__).parent / "samples" / "explicit-locking.md"
MAX_MISMATCHES_REPORTED = 10


def read_sample_ids(tokenizer_folder: Path, sample: Path, count: int, key: str) -> list[int]:
    """The first `count` token ids of the sample page, tokenized by the folder's tokenizer;
    `key` is the params key of `count`, named when the page is too short."""
    ids = read_page_ids(tokenizer_folder, sample)
    if len(ids) < count:
        raise ValueError(f"{key}: {count} exceeds the {len(ids)} tokens of {sample.name}")
    return ids[:count]


def read_page_ids(tokenizer_folder: Path, sample: Path) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    ids: list[int] = tokenizer(sample.read_text(encoding="utf-8"), add_special_tokens=False)[
        "input_ids"
    ]
    return ids


def compute_next_token_logits(model_folder: Path, ids: list[int]) -> torch.Tensor:
    """Logits for the next token at every position of `ids`, shape (len(ids), vocab)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_folder), dtype=torch.float32)
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


def parse_llama_next_token(body: dict[str, Any]) -> int:
    """The greedy next token of a llama.cpp /completion reply sent with return_tokens and
    n_probs. `tokens` holds it even when it is an incomplete UTF-8 byte, for which llama.cpp
    leaves out the probabilities; an end-of-generation token is never output, so that one is
    read from the top of the probabilities (computed from the raw logits)."""
    if body.get("tokens"):
        return int(body["tokens"][0])
    try:
        return int(body["completion_probabilities"][0]["top_logprobs"][0]["id"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError(
            f"llama.cpp reply has no tokens and no probabilities: {str(body)[:300]}"
        ) from None


def fetch_llama_next_tokens(client: httpx.Client, ids: list[int]) -> list[int]:
    """llama.cpp's greedy next token after each prefix of `ids`. Token ids go in, so both
    sides see the same tokens; the slot's prompt cache keeps the prefix, so each request
    evaluates one new token."""
    predictions = []
    for end in range(1, len(ids) + 1):
        body = {
            "prompt": ids[:end],
            "n_predict": 1,
            "temperature": 0,
            "top_k": 1,
            "n_probs": 1,
            "return_tokens": True,
            "cache_prompt": True,
        }
        reply = client.post("/completion", json=body)
        reply.raise_for_status()
        predictions.append(parse_llama_next_token(reply.json()))
    return predictions


def fetch_llama_tokens(client: httpx.Client, text: str) -> list[int]:
    """llama.cpp's own tokenization of `text` (no special tokens added)."""
    reply = client.post("/tokenize", json={"content": text, "add_special": False})
    reply.raise_for_status()
    return [int(t) for t in reply.json()["tokens"]]


def summarize_agreement(logits: torch.Tensor, theirs: list[int]) -> dict[str, Any]:
    """Share of positions whose argmax matches `theirs`; each mismatch lists both tokens and
    the logit gap between them (a small gap is a near-tie that quantization tipped over)."""
    ours = logits.argmax(-1).tolist()
    mismatches = [
        {
            "position": i,
            "ours": a,
            "llama_cpp": b,
            "logit_gap": round(float(logits[i, a] - logits[i, b]), 4),
        }
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
        if a != b
    ]
    positions = len(ours)
    return {
        "positions": positions,
        "matches": positions - len(mismatches),
        "agreement": round((positions - len(mismatches)) / positions, 4),
        "mismatches": mismatches[:MAX_MISMATCHES_REPORTED],
    }


def summarize_tokenization(ours: list[int], theirs: list[int]) -> dict[str, Any]:
    """Whether both tokenizers split the page alike, and where they first part."""
    pairs = zip(ours, theirs, strict=False)  # lengths may differ: that is a difference too
    first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    if first is None and len(ours) != len(theirs):
        first = min(len(ours), len(theirs))
    summary: dict[str, Any] = {"tokens": len(ours), "llama_cpp_tokens": len(theirs)}
    summary["identical"] = first is None
    if first is not None:
        summary["first_difference"] = {
            "position": first,
            "ours": ours[first : first + 5],
            "llama_cpp": theirs[first : first + 5],
        }
    return summary


def fetch_llama_cpp_predictions(
    gguf: Path, ids: list[int], threads: int = 1, text: str | None = None
) -> tuple[list[int], list[int] | None]:
    """Start llama.cpp on the GGUF (one slot, one thread: the other core is busy with the
    pipeline and llama.cpp slows sharply when its threads compete) and ask it position by
    position; with `text`, also how it tokenizes that text."""
    n_ctx = max(512, len(ids) + 16)
    port = free_port()
    with (
        start_llama_server(
            gguf, port=port, alias="verify", n_parallel=1, n_ctx=n_ctx, threads=threads
        ) as base_url,
        httpx.Client(base_url=base_url.removesuffix("/v1"), timeout=60) as client,
    ):
        tokens = fetch_llama_tokens(client, text) if text is not None else None
        return fetch_llama_next_tokens(client, ids), tokens
