"""A tiny model, tokenizer and packed corpus for the cpt tests, built on the spot, and a helper
that runs one phase through the real launcher and trainer."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tasks.core.io import write_jsonl_atomic
from tasks.core.packed import PhaseMeta, write_phase
from tasks.core.params import CptParams
from tasks.core.procs import free_port, stream_process
from tasks.cpt.config import (
    RUN_FILE,
    RunSpec,
    render_fingerprint,
    render_launch_command,
    render_launch_env,
    render_run_spec,
)
from tasks.cpt.launch import prepare_checkpoint_dir, read_input_hashes, write_run_spec
from tasks.datasets.packing import pack_documents
from tests.support.cpt_fault_preload import PRELOAD as FAULTS_PRELOAD
from tests.support.cpt_fault_preload import render_fault_env

EOS = "<|endoftext|>"
LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}

# Short, distinct, repetitive documents: a 2-layer model can learn them in a few dozen steps.
CORPUS = [
    "VACUUM reclaims storage occupied by dead tuples. " * 2,
    "ANALYZE collects statistics about the contents of tables. " * 2,
    "CREATE DATABASE creates a new PostgreSQL database. " * 2,
    "DROP DATABASE removes a database and its catalog entries. " * 2,
    "A tablespace is a location on disk for database objects. " * 2,
    "template1 is the template every new database is copied from. " * 2,
]
HELD_OUT = ["ALTER DATABASE changes the attributes of a database. " * 3]


def write_byte_tokenizer(folder: Path) -> Any:
    """A byte-level tokenizer with no merges: 256 byte tokens and one EOS (id 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)} | {EOS: len(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=EOS)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """LlamaForCausalLM, hidden 64, 2 layers, vocab 257 (bytes + EOS), fp32, with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = write_byte_tokenizer(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **LLAMA,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


def write_tiny_phase(
    data_root: Path, name: str, seq_len: int, model_dir: Path, texts: Sequence[str] = CORPUS
) -> PhaseMeta:
    """Packed shards of `texts` for one phase, as the datasets stage writes them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    docs = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    rows, stats = pack_documents(docs, seq_len=seq_len, eos_id=eos, pad_id=eos)
    meta = PhaseMeta(
        phase=name,
        seq_len=seq_len,
        eos_id=eos,
        pad_id=eos,
        tokenizer="byte-level",
        rows=0,
        shards=[],
        stats={"rows": stats.rows, "real_tokens": stats.real_tokens},
    )
    return write_phase(data_root / name, rows, meta, shard_rows=4)


def write_eval_pages(eval_dir: Path, texts: Sequence[str] = HELD_OUT) -> None:
    pages = [
        {"id": f"p{i}", "url": f"https://docs.example/{i}", "title": f"page {i}", "text": text}
        for i, text in enumerate(texts)
    ]
    write_jsonl_atomic(eval_dir / "pages.jsonl", pages)


def tiny_params(root: Path, **overrides: Any) -> CptParams:
    """Params for one phase `tiny` (seq_len 64) starting from <root>/base."""
    deepspeed = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "optimizer": {"params": {"lr": 3e-3, "weight_decay": 0.0}},
        "scheduler": {"params": {"warmup_num_steps": 2, "warmup_min_ratio": 0.1}},
        **overrides.pop("deepspeed", {}),
    }
    raw: dict[str, Any] = {
        "phases": {"tiny": {"seq_len": 64, "init_from": root / "base", "max_steps": 8}},
        "output": root / "models",
        "checkpoints": root / "checkpoints",
        "threads_per_process": 1,
        "checkpoint_steps": 4,
        "deepspeed": deepspeed,
        **overrides,
    }
    return CptParams.model_validate(raw)


def build_tiny_phase(root: Path) -> None:
    write_tiny_model(root / "base")
    write_tiny_phase(root / "data", "tiny", 64, root / "base")
    write_eval_pages(root / "eval")


def launch_phase(
    params: CptParams,
    root: Path,
    phase: str = "tiny",
    watch: Callable[[str], None] | None = None,
    preload: tuple[str, ...] = (),
    stop_after_steps: int | None = None,
    nonfinite_at: Sequence[int] = (),
) -> tuple[RunSpec, int, list[str]]:
    """One phase through the real launcher and trainer, as flows.cpt runs it (no Prefect);
    `watch` sees each log line as it comes. With `stop_after_steps` the trainer exits after
    that step as a killed run would; rank 0's loss of each micro-batch in `nonfinite_at` (by
    cursor) turns into NaN (tests.support.cpt_fault_preload)."""
    faults = render_fault_env(stop_after_steps, nonfinite_at)
    if faults:
        preload = (*preload, FAULTS_PRELOAD)
    settings = params.phase(phase)
    spec = render_run_spec(params, settings, settings.max_steps or 1, root / "data", preload)
    prepare_checkpoint_dir(spec.checkpoint_dir, render_fingerprint(spec, read_input_hashes(spec)))
    write_run_spec(spec)
    command = render_launch_command(params, spec.checkpoint_dir / RUN_FILE, free_port())
    env = render_launch_env(os.environ, params, cuda=False, cores=os.cpu_count() or 1) | faults
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if watch is not None:
            watch(line)

    code, _ = stream_process(command, env, log)
    return spec, code, lines
