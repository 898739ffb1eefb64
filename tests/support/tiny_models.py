"""Tiny real models the tests build: a Llama GGUF as llama.cpp's converter writes one, and a
transformers Llama, both with random weights, so model-stage, zigzag and pipeline tests run in
seconds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

CHAT_TEMPLATE = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}"
)


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (the byte-level BPE alphabet)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)}
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_gguf(path: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A Llama GGUF as llama.cpp's converter writes one (Q4_1 matrices like the packaged
    SmolLM2, a byte-level BPE tokenizer with SmolLM2's special tokens, a chat template), with
    random weights: hidden size 32, 2 layers, 264 tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "e r"]
    tokens = specials + byte_symbols() + [m.replace(" ", "") for m in merges]
    heads, kv_heads, ffn = 4, 2, 2 * hidden
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(seed)

    def add_matrix(name: str, rows: int, cols: int, scale: float) -> None:
        weights = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        q4_1 = gguf.GGMLQuantizationType.Q4_1
        writer.add_tensor(name, gguf.quantize(weights, q4_1), raw_dtype=q4_1)

    add_matrix("token_embd.weight", len(tokens), hidden, 1.0)
    kv = hidden // heads * kv_heads
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        for name, rows in (
            ("attn_q", hidden),
            ("attn_k", kv),
            ("attn_v", kv),
            ("attn_output", hidden),
        ):
            add_matrix(f"blk.{i}.{name}.weight", rows, hidden, hidden**-0.5)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        add_matrix(f"blk.{i}.ffn_gate.weight", ffn, hidden, hidden**-0.5)
        add_matrix(f"blk.{i}.ffn_up.weight", ffn, hidden, hidden**-0.5)
        add_matrix(f"blk.{i}.ffn_down.weight", hidden, ffn, ffn**-0.5)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    add_matrix("output.weight", len(tokens), hidden, hidden**-0.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_llama(vocab_size: int = 64, max_positions: int = 64, seed: int = 0) -> LlamaForCausalLM:
    """A transformers Llama with random weights drawn after torch.manual_seed(seed): hidden
    size 32, 2 layers, 4 heads sharing 2 KV heads (grouped-query attention)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def write_tiny_model_folder(root: Path, model_type: str = "llama", seed: int = 0) -> Path:
    """A transformers folder as the training stages write one: the tiny GGUF's byte-level BPE
    tokenizer and chat template, and random weights (scaled up from transformers' default
    init, so next-token logits have clear winners) of a tiny `model_type` model: hidden size
    32, 2 layers, 4 heads sharing 2 KV heads. Returns root/model_type."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tasks.model.base import write_converted_gguf

    source = root / "tiny-tokenizer"
    if not source.is_dir():
        source.mkdir(parents=True)
        write_converted_gguf(write_tiny_gguf(root / "tiny.gguf"), source)
    out = root / model_type
    config = AutoConfig.for_model(
        model_type,
        vocab_size=AutoConfig.from_pretrained(source).vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        initializer_range=0.3,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out
