"""The check that the exported GGUF is the model that was trained: llama.cpp serving it picks
the transformers model's next token on a real documentation page, and splits that page into
the same token ids as the tokenizer the model was trained with."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tasks.core.agreement import (
    SAMPLE_PAGE,
    compute_next_token_logits,
    fetch_llama_cpp_predictions,
    read_page_ids,
    read_sample_ids,
    summarize_agreement,
    summarize_tokenization,
)


class ExportMismatch(RuntimeError):
    """llama.cpp serving the GGUF predicts or tokenizes otherwise than transformers."""


def verify_export(folder: Path, gguf: Path, positions: int, threads: int = 1) -> dict[str, Any]:
    """Next-token argmax of the transformers model in `folder` against llama.cpp serving
    `gguf`, on the first `positions` tokens of the sample page; and both tokenizations of
    the whole page."""
    if positions == 0:
        return {"positions": 0, "skipped": "verify_tokens is 0"}
    started = time.monotonic()
    ids = read_sample_ids(folder, SAMPLE_PAGE, positions, "export.verify_tokens")
    logits = compute_next_token_logits(folder, ids)
    text = SAMPLE_PAGE.read_text(encoding="utf-8")
    theirs, tokens = fetch_llama_cpp_predictions(gguf, ids, threads, text=text)
    summary = summarize_agreement(logits, theirs)
    summary["tokenization"] = summarize_tokenization(
        read_page_ids(folder, SAMPLE_PAGE), tokens or []
    )
    summary["sample"] = SAMPLE_PAGE.name
    summary["wall_s"] = round(time.monotonic() - started, 2)
    return summary


def check_export(verification: dict[str, Any], minimum: float) -> None:
    if not verification["positions"]:
        return
    if verification["agreement"] < minimum:
        raise ExportMismatch(
            f"export.min_argmax_agreement: llama.cpp serving the exported GGUF picked the "
            f"transformers model's next token at {verification['matches']} of "
            f"{verification['positions']} positions of {verification['sample']} "
            f"({verification['agreement']:.4f}), below {minimum}; first mismatches: "
            f"{verification['mismatches'][:3]}"
        )
    tokenization = verification["tokenization"]
    if not tokenization["identical"]:
        raise ExportMismatch(
            f"the exported GGUF tokenizes {verification['sample']} otherwise than the model's "
            f"tokenizer ({tokenization['llama_cpp_tokens']} tokens against "
            f"{tokenization['tokens']}; first difference {tokenization['first_difference']}): "
            f"its tokenizer.ggml.pre does not match the tokenizer's pre-tokenizer"
        )
