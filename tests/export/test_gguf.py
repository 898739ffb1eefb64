"""The GGUF export. Tiny random models of each supported architecture, written as GGUF, are
served by the real llama.cpp server and pick the transformers model's next token on the
sample page, with the same tokenization; the llama q/k reordering is the one transformers'
GGUF loader undoes, and leaving it out is caught by the check. An architecture or tokenizer
the export cannot map fails naming it and what is supported. Slow: the real SmolLM2 model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from tasks.core.agreement import SAMPLE_PAGE, read_sample_ids
from tasks.export import gguf as export_gguf
from tasks.export.gguf import (
    ExportError,
    permute_rotary_rows,
    read_pre_tokenizer_name,
    write_gguf,
)
from tasks.export.verify import ExportMismatch, check_export, verify_export
from tests.support.tiny_models import write_tiny_model_folder


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_exported_gguf_predicts_and_tokenizes_like_transformers(
    tiny_root: Path, model_type: str
) -> None:
    folder = write_tiny_model_folder(tiny_root, model_type)
    out = tiny_root / f"{model_type}.gguf"
    written = write_gguf(folder, out, "f16", "tiny")
    assert written["architecture"] == model_type and written["bytes"] == out.stat().st_size
    # matrices in f16, norms (and qwen2's biases) kept in f32
    assert set(written["tensors"]) == {"F16", "F32"}
    verification = verify_export(folder, out, 64)
    assert verification["tokenization"]["identical"], verification
    assert verification["agreement"] >= 0.95, verification
    # where they part it is a near-tie that f16 rounding tipped over
    assert all(abs(m["logit_gap"]) < 0.05 for m in verification["mismatches"]), verification
    check_export(verification, 0.95)


def test_gguf_metadata_carries_the_tokenizer_and_chat_template(tiny_root: Path) -> None:
    folder = write_tiny_model_folder(tiny_root, "llama")
    out = tiny_root / "meta.gguf"
    write_gguf(folder, out, "q8_0", "tiny")
    reader = gguf.GGUFReader(str(out))

    def value(key: str) -> object:
        field = reader.get_field(key)
        assert field is not None, key
        return field.contents()

    assert value("general.architecture") == "llama"
    assert value("general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "gpt-2"
    assert (value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert value("tokenizer.ggml.add_bos_token") is False
    assert "<|im_start|>" in str(value("tokenizer.chat_template"))
    assert value("llama.attention.head_count_kv") == 2
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_transformers_reads_the_export_back_with_the_same_logits(tiny_root: Path) -> None:
    """transformers' GGUF loader, independent of llama.cpp, undoes the q/k reordering."""
    folder = write_tiny_model_folder(tiny_root, "llama")
    out = tiny_root / "back.gguf"
    write_gguf(folder, out, "f32", "tiny")
    ids = torch.tensor([read_sample_ids(folder, SAMPLE_PAGE, 32, "export.verify_tokens")])
    original = AutoModelForCausalLM.from_pretrained(folder)
    reread = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name)
    with torch.inference_mode():
        assert torch.allclose(original(ids).logits, reread(ids).logits, atol=1e-5)


@pytest.mark.parametrize("heads", [4, 2])
def test_rotary_reordering_is_the_one_transformers_undoes(heads: int) -> None:
    weights = np.arange(32 * 6, dtype=np.float32).reshape(32, 6)
    reordered = permute_rotary_rows(weights, heads)
    assert not np.array_equal(reordered, weights)
    undone = LlamaTensorProcessor()._reverse_permute_weights(reordered, heads, heads)
    assert np.array_equal(undone, weights)


def test_an_export_without_the_reordering_is_caught(
    tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_tiny_model_folder(tiny_root, "llama")
    llama = export_gguf.Recipe(gguf.MODEL_ARCH.LLAMA, permute_qk=False)
    monkeypatch.setitem(export_gguf.RECIPES, "llama", llama)
    out = tiny_root / "unpermuted.gguf"
    write_gguf(folder, out, "f16", "tiny")
    verification = verify_export(folder, out, 64)
    assert verification["agreement"] < 0.5, verification  # 0.05 when last measured
    with pytest.raises(ExportMismatch, match=r"export\.min_argmax_agreement: .* of 64 positions"):
        check_export(verification, 0.95)


def test_an_unmapped_architecture_fails_naming_it_and_the_supported_ones(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 64}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError) as err:
        write_gguf(folder, tmp_path / "out.gguf", "f16", "x")
    message = str(err.value)
    assert "'gpt2' model (GPT2LMHeadModel)" in message
    assert "['llama', 'qwen2', 'qwen3']" in message
    assert not (tmp_path / "out.gguf").exists()


def test_a_folder_without_config_names_export_model(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"export\.model: .* has no config\.json"):
        write_gguf(tmp_path, tmp_path / "out.gguf", "f16", "x")


def test_scaled_rotary_embeddings_are_refused(tiny_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scaled"
    shutil.copytree(write_tiny_model_folder(tiny_root, "llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="rope_type 'llama3'"):
        write_gguf(folder, tmp_path / "out.gguf", "f16", "x")


def test_an_unknown_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    spec = {"model": {"type": "BPE"}, "pre_tokenizer": {"type": "Metaspace"}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match=r"pre-tokenizers \['gpt-2', 'smollm'\]"):
        read_pre_tokenizer_name(tmp_path)


def test_the_agreement_check_names_its_key_and_a_tokenization_difference() -> None:
    ok = {"positions": 4, "matches": 4, "agreement": 1.0, "mismatches": [], "sample": "p.md"}
    split = {"tokens": 9, "llama_cpp_tokens": 10, "identical": False, "first_difference": {}}
    with pytest.raises(ExportMismatch, match=r"tokenizes p\.md otherwise"):
        check_export({**ok, "tokenization": split}, 0.95)
    check_export({"positions": 0, "skipped": "verify_tokens is 0"}, 0.95)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "floor"), [("f16", 0.99), ("q8_0", 0.95)])
def test_smollm2_exports_and_llama_cpp_agrees(tmp_path: Path, kind: str, floor: float) -> None:
    """The real SmolLM2-135M-Instruct, converted by the model stage (~1-2 min each)."""
    from tasks.core.tokens import find_smollm2_gguf
    from tasks.model.base import write_converted_gguf

    folder = tmp_path / "base"
    folder.mkdir()
    write_converted_gguf(find_smollm2_gguf(), folder)
    out = tmp_path / "model.gguf"
    write_gguf(folder, out, kind, "smollm2")
    verification = verify_export(folder, out, 256)
    assert verification["tokenization"]["identical"], verification
    assert verification["agreement"] >= floor, verification
