"""Inputs of the LlamaFactory stages' tests: a tiny Llama with SmolLM2's tokenizer (and its
chat template), the sets the datasets stage writes, and stage params pointing into tmp."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tasks.core.params import OrpoParams, PathsParams, SftParams
from tasks.core.tokens import resolve_tokenizer
from tests.support.datasets_inputs import build, page_body, write_inputs

TOKENIZER_CACHE = Path(".cache/tokenizers")

# Few, fast steps that still move the weights visibly: LoRA on every linear layer.
TINY_TRAIN: dict[str, Any] = {
    "finetuning_type": "lora",
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_target": "all",
    "cutoff_len": 128,
    "max_steps": 4,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5.0e-3,
    "logging_steps": 1,
    "save_steps": 2,
    # one row held out of a set of 5-10, evaluated every other step
    "val_size": 0.1,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "per_device_eval_batch_size": 2,
    "seed": 0,
    "disable_tqdm": True,
    "overwrite_cache": True,
}


def write_tiny_model(out: Path) -> Path:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer, saved like any model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer(None, TOKENIZER_CACHE)[0].parent)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_sets(root: Path, pages: int = 4) -> PathsParams:
    """data/sft and data/orpo as the datasets stage writes them, every page in training."""
    dirs = write_inputs(root, [page_body(n) for n in range(pages)])
    build(dirs, eval_fraction=0.0)
    return PathsParams(sft=dirs.sft, orpo=dirs.orpo, reports=root / "reports")


def sft_params(root: Path, model: Path, **train: Any) -> SftParams:
    return SftParams(
        model=model,
        output=root / "models" / "sft",
        checkpoints=root / "checkpoints" / "sft",
        train={**TINY_TRAIN, **train},
        export={"export_size": 1},
    )


def orpo_params(root: Path, model: Path, **train: Any) -> OrpoParams:
    return OrpoParams(
        model=model,
        output=root / "models" / "orpo",
        checkpoints=root / "checkpoints" / "orpo",
        train={**TINY_TRAIN, "pref_beta": 0.1, **train},
    )


def write_thin_set(source: Path, out: Path, name: str, rows: int) -> Path:
    """A copy of a dataset_dir with set `name` cut to its first `rows` rows."""
    shutil.copytree(source, out)
    path = out / f"{name}.json"
    path.write_text(json.dumps(json.loads(path.read_text("utf-8"))[:rows]), "utf-8")
    return out
