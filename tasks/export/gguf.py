"""A transformers folder written as one GGUF file for llama.cpp and Ollama, with the `gguf`
package's own maps: the architecture name (MODEL_ARCH_NAMES), every tensor's GGUF name
(TensorNameMap), the hyperparameter keys (transformers' GGUF_CONFIG_MAPPING, the table its
GGUF loader reads them back with), the merges, special tokens and chat template (SpecialVocab),
and the quantization (gguf.quants).

The one transform the maps do not give is llama.cpp's for the llama architecture: its
converter reorders the rows of the q and k projections (rotary pairs interleaved instead of in
halves); transformers' GGUF loader undoes exactly that, and tests/export checks the round trip.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gguf
import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

QType = gguf.GGMLQuantizationType
FileType = gguf.LlamaFileType

# The types gguf.quants can write (its K- and I-quants are dequantize-only).
GGUF_TYPES: dict[str, tuple[QType, FileType]] = {
    "f32": (QType.F32, FileType.ALL_F32),
    "f16": (QType.F16, FileType.MOSTLY_F16),
    "bf16": (QType.BF16, FileType.MOSTLY_BF16),
    "q8_0": (QType.Q8_0, FileType.MOSTLY_Q8_0),
    "q5_1": (QType.Q5_1, FileType.MOSTLY_Q5_1),
    "q5_0": (QType.Q5_0, FileType.MOSTLY_Q5_0),
    "q4_1": (QType.Q4_1, FileType.MOSTLY_Q4_1),
    "q4_0": (QType.Q4_0, FileType.MOSTLY_Q4_0),
}


@dataclass(frozen=True)
class Recipe:
    arch: gguf.MODEL_ARCH
    permute_qk: bool  # llama.cpp's LlamaModel converter interleaves the rotary halves of q/k


# transformers model_type → how llama.cpp's converter writes it. Only architectures whose
# tensors the maps name completely and whose round trip through llama.cpp is tested.
RECIPES = {
    "llama": Recipe(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": Recipe(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
    "qwen3": Recipe(gguf.MODEL_ARCH.QWEN3, permute_qk=False),
}

# tokenizer.json pre-tokenizer → the name llama.cpp knows its splitting rules by
# (llama-vocab.cpp): byte-level BPE with GPT-2's regex, and SmolLM's digit-by-digit variant.
PRE_TOKENIZERS: dict[tuple[tuple[Any, Any], ...], str] = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
}


class ExportError(ValueError):
    """The model cannot be written as GGUF; the message says what is supported."""


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ExportError(f"export.model: {folder} has no config.json (not a transformers model)")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def resolve_recipe(config: dict[str, Any], folder: Path) -> Recipe:
    """The recipe of the model's architecture, or an error naming it and the supported ones."""
    model_type = config.get("model_type")
    recipe = RECIPES.get(str(model_type))
    if recipe is None:
        classes = ", ".join(config.get("architectures") or []) or "no architectures listed"
        raise ExportError(
            f"export.model: {folder} is a {model_type!r} model ({classes}); the GGUF export "
            f"supports the architectures {sorted(RECIPES)} (transformers model_type)"
        )
    return recipe


def read_rope_theta(config: dict[str, Any]) -> float | None:
    """rope_theta, which transformers 5 keeps in rope_parameters; scaled rotary embeddings
    (llama3, yarn, ...) need llama.cpp keys this export does not write."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ExportError(
            f"export.model: rope_type {kind!r} is not supported by the GGUF export (only "
            f"unscaled rotary embeddings)"
        )
    theta = config.get("rope_theta", rope.get("rope_theta"))
    return float(theta) if theta is not None else None


def render_hyperparameters(config: dict[str, Any]) -> dict[str, int | float]:
    """GGUF metadata keys (`<arch>.<key>`) and values, through transformers' GGUF key map."""
    model_type = str(config["model_type"])
    arch = gguf.MODEL_ARCH_NAMES[RECIPES[model_type].arch]
    values = {**config, "rope_theta": read_rope_theta(config)}
    values.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
    found: dict[str, int | float] = {}
    mapping = cast(dict[str, str | None], GGUF_CONFIG_MAPPING[model_type])
    for key, hf_key in mapping.items():
        if hf_key is not None and values.get(hf_key) is not None:
            found[f"{arch}.{key}"] = values[hf_key]
    # llama.cpp reads the head size from these (else it assumes hidden / heads).
    found[f"{arch}.attention.key_length"] = values["head_dim"]
    found[f"{arch}.attention.value_length"] = values["head_dim"]
    return found


def permute_rotary_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: per head, the two rotary halves interleaved row by row."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def read_hf_tensors(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of the folder's safetensors files, as fp32 numpy arrays."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportError(f"export.model: {folder} has no safetensors weights")
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, weights.get_tensor(name).to(torch.float32).numpy()


def map_tensor_name(name_map: gguf.TensorNameMap, name: str) -> str:
    mapped = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ExportError(
            f"export.model: tensor {name!r} has no GGUF name in the gguf package's map"
        )
    return mapped


def prepare_tensor(
    name: str, data: np.ndarray, config: dict[str, Any], recipe: Recipe
) -> np.ndarray:
    if recipe.permute_qk and name.endswith("q_proj.weight"):
        return permute_rotary_rows(data, config["num_attention_heads"])
    if recipe.permute_qk and name.endswith("k_proj.weight"):
        return permute_rotary_rows(data, config["num_key_value_heads"])
    return data


def encode_tensor(data: np.ndarray, wanted: QType) -> tuple[np.ndarray, QType]:
    """Vectors (norms, biases) stay f32 as llama.cpp's converter keeps them; a matrix whose
    rows are no whole number of quantization blocks falls back to f16."""
    qtype = wanted if data.ndim >= 2 else QType.F32
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data, QType.F16), QType.F16


def add_tensors(
    writer: gguf.GGUFWriter, folder: Path, config: dict[str, Any], recipe: Recipe, wanted: QType
) -> dict[str, int]:
    """Every tensor under its GGUF name; returns how many tensors went in per GGML type."""
    name_map = gguf.get_tensor_name_map(recipe.arch, config["num_hidden_layers"])
    tied = config.get("tie_word_embeddings", False)
    counts: dict[str, int] = {}
    for name, data in read_hf_tensors(folder):
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reads the output projection from token_embd when it is absent
        data = prepare_tensor(name, data, config, recipe)
        encoded, qtype = encode_tensor(data, wanted)
        writer.add_tensor(map_tensor_name(name_map, name), encoded, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    return counts


def read_pre_tokenizer_name(folder: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, read from tokenizer.json."""
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    signature = tuple(
        (p.get("type"), p.get("use_regex", p.get("individual_digits"))) for p in parts
    )
    name = PRE_TOKENIZERS.get(signature)
    if spec.get("model", {}).get("type") != "BPE" or name is None:
        raise ExportError(
            f"export.model: the tokenizer of {folder} ({spec.get('model', {}).get('type')}, "
            f"pre-tokenizer {signature}) is not one the GGUF export can name for llama.cpp; "
            f"supported: byte-level BPE with the pre-tokenizers {sorted(PRE_TOKENIZERS.values())}"
        )
    return name


def read_added_specials(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Whether the tokenizer puts bos before / eos after a text by itself: llama.cpp must do
    the same, and its default for byte-level BPE need not be the tokenizer's."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    marked = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = marked.index(plain[0]) if plain[0] in marked else 0
    return start > 0, len(marked) > start + len(plain)


def read_vocab(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their GGUF types, as llama.cpp's converter lists them: special added
    tokens are control tokens, other added ones user-defined, ids the tokenizer lacks padding."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            kind = gguf.TokenType.NORMAL
            if i in added:
                kind = gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            types.append(kind)
    return tokens, [int(t) for t in types]


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path, vocab_size: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokens, types = read_vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(read_pre_tokenizer_name(folder))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_add_space_prefix(False)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    bos, eos = read_added_specials(tokenizer)
    writer.add_add_bos_token(bos)
    writer.add_add_eos_token(eos)


def add_hyperparameters(writer: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    for key, value in render_hyperparameters(config).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExportError(f"export.model: config value for {key} is {value!r}, not a number")
        if isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_float32(key, value)


def write_gguf(folder: Path, out: Path, type_name: str, name: str) -> dict[str, Any]:
    """Write the transformers model in `folder` as the GGUF file `out`; returns what went in."""
    config = read_config(folder)
    recipe = resolve_recipe(config, folder)
    wanted, file_type = GGUF_TYPES[type_name]
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[recipe.arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hyperparameters(writer, config)
    add_tokenizer(writer, folder, config["vocab_size"])
    counts = add_tensors(writer, folder, config, recipe, wanted)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "architecture": gguf.MODEL_ARCH_NAMES[recipe.arch],
        "type": type_name,
        "tensors": counts,
        "bytes": out.stat().st_size,
        "parameters": count_gguf_parameters(out),
    }


def count_gguf_parameters(path: Path) -> int:
    reader = gguf.GGUFReader(str(path))
    return sum(math.prod(int(d) for d in t.shape) for t in reader.tensors)
