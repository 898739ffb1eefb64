"""The model stage. A GGUF converted into a transformers folder reloads with plain
AutoModelForCausalLM / AutoTokenizer with the GGUF model's logits, its special tokens and chat
template, and predicts the same next tokens as the real llama.cpp server serving that GGUF:
quick on a tiny random Q4_1 GGUF written here, slow on the packaged SmolLM2-135M-Instruct.
A local folder (a tiny Llama built here) is copied into place; the staging folder keeps a
failed or killed run from leaving a half-written model; errors name the params key."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.core.agreement import (
    SAMPLE_PAGE,
    fetch_llama_next_tokens,
    read_sample_ids,
    summarize_agreement,
)
from tasks.core.env import HUB_DEFAULT_MARK, HUB_VARS, set_stage_defaults
from tasks.core.io import promote_folder, staging_folder
from tasks.core.tokens import find_smollm2_gguf
from tasks.model.base import (
    AgreementTooLow,
    ModelSource,
    ModelSourceError,
    check_agreement,
    describe_model_folder,
    resolve_model_source,
    verify_conversion,
    write_base_model,
    write_converted_gguf,
)
from tests.support.tiny_models import tiny_llama, write_tiny_gguf


@dataclass(frozen=True)
class Converted:
    gguf: Path
    folder: Path
    ids: torch.Tensor  # the start of the sample page
    gguf_logits: torch.Tensor  # of the model as transformers loaded it from the GGUF


@pytest.fixture(scope="module", params=["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Converted:
    """A tiny random GGUF (quick), and the packaged SmolLM2-135M-Instruct (~30-50 s to
    convert), each converted into a transformers folder."""
    root = tmp_path_factory.mktemp(request.param)
    gguf_file = (
        write_tiny_gguf(root / "tiny.gguf") if request.param == "tiny" else find_smollm2_gguf()
    )
    (root / "base").mkdir()
    gguf_model = write_converted_gguf(gguf_file, root / "base")
    ids = torch.tensor([read_sample_ids(root / "base", SAMPLE_PAGE, 64, "model.verify_tokens")])
    with torch.inference_mode():
        return Converted(gguf_file, root / "base", ids, gguf_model(ids).logits)


def test_converted_folder_reloads_with_the_gguf_models_logits(converted: Converted) -> None:
    model = AutoModelForCausalLM.from_pretrained(converted.folder)
    with torch.inference_mode():
        logits = model(converted.ids).logits
    assert model.dtype == torch.float32
    assert torch.equal(logits, converted.gguf_logits)
    config = json.loads((converted.folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    files = {p.name for p in converted.folder.iterdir()}
    assert {"model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    described = describe_model_folder(converted.folder)
    assert described["parameters"] == model.num_parameters()  # tied embeddings counted once
    assert described["dtype"] == "float32"
    assert described["bytes"] > 4 * described["parameters"]


def test_converted_tokenizer_has_the_chat_template_and_the_ggufs_special_tokens(
    converted: Converted,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(converted.folder)
    config = json.loads((converted.folder / "config.json").read_text())
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What does VACUUM FULL lock?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "<|im_start|>user\nWhat does VACUUM FULL lock?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    # transformers' GGUF tokenizer conversion alone would make eos <|im_start|>.
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", config["eos_token_id"])
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id) == (1, 2)
    assert tokenizer.model_max_length == config["max_position_embeddings"]


def test_converted_model_predicts_llama_cpps_next_tokens(converted: Converted) -> None:
    """Against the real llama.cpp server serving the same GGUF."""
    verification = verify_conversion(
        ModelSource("gguf", str(converted.gguf)), converted.folder, 256
    )
    assert verification["positions"] == 256
    assert verification["agreement"] >= 0.95, verification
    # Where they differ it is a near-tie that llama.cpp's quantized arithmetic tipped over.
    assert all(abs(m["logit_gap"]) < 0.5 for m in verification["mismatches"]), verification
    check_agreement(verification, 0.95)


def completion_server(
    next_token: Callable[[list[int]], int], seen: list[dict[str, object]]
) -> httpx.Client:
    """A client whose transport answers /completion as llama.cpp does (shape taken from a
    real reply), recording each request body."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        token = {"id": next_token(body["prompt"]), "token": "x", "logprob": -0.1}
        reply = {"content": "x", "stop_type": "limit"}
        return httpx.Response(
            200, json={**reply, "completion_probabilities": [{**token, "top_logprobs": [token]}]}
        )

    return httpx.Client(base_url="http://llama", transport=httpx.MockTransport(handle))


def test_llama_cpp_is_asked_greedily_for_each_prefix_as_token_ids() -> None:
    seen: list[dict[str, object]] = []
    with completion_server(lambda prompt: prompt[-1] + 1, seen) as client:
        assert fetch_llama_next_tokens(client, [5, 9, 2]) == [6, 10, 3]
    assert [body["prompt"] for body in seen] == [[5], [5, 9], [5, 9, 2]]
    assert all(b["n_predict"] == 1 and b["temperature"] == 0 for b in seen)
    assert all(b["cache_prompt"] is True and b["n_probs"] == 1 for b in seen)


def test_a_reply_without_probabilities_is_an_error() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"content": ""})

    client = httpx.Client(base_url="http://llama", transport=httpx.MockTransport(handle))
    with pytest.raises(ValueError, match="no tokens and no probabilities"):
        fetch_llama_next_tokens(client, [1])


def test_agreement_summary_and_gate() -> None:
    logits = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 1.9], [0.0, 0.0, 5.0]])
    summary = summarize_agreement(logits, [1, 2, 2])
    assert summary["positions"] == 3 and summary["matches"] == 2
    assert summary["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["mismatches"] == [
        {"position": 1, "ours": 0, "llama_cpp": 2, "logit_gap": pytest.approx(0.1)}
    ]
    summary["sample"] = "page.md"
    check_agreement(summary, 0.6)
    with pytest.raises(AgreementTooLow, match=r"model\.min_argmax_agreement: .* 2 of 3 positions"):
        check_agreement(summary, 0.95)
    check_agreement({"positions": 0, "skipped": "verify_tokens is 0"}, 0.95)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    tiny_llama().save_pretrained(folder)
    return folder


def test_a_local_folder_is_copied_into_place(tiny_model: Path, tmp_path: Path) -> None:
    source = resolve_model_source(str(tiny_model), gguf=None, revision=None)
    assert source.describe() == {"kind": "folder", "path": str(tiny_model)}
    final = tmp_path / "models" / "base"
    with staging_folder(final) as staging:
        write_base_model(source, staging)
        described = describe_model_folder(staging)
        promote_folder(staging, final)
    assert [p.name for p in final.parent.iterdir()] == ["base"]  # no staging left behind
    original = AutoModelForCausalLM.from_pretrained(tiny_model)
    copy = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.inference_mode():
        assert torch.equal(original(ids).logits, copy(ids).logits)
    assert described["parameters"] == sum(p.numel() for p in copy.parameters())
    assert described["dtype"] == "float32"
    assert verify_conversion(source, final, 256) == {
        "positions": 0,
        "skipped": "source is a folder",
    }


def test_a_rerun_replaces_the_old_model_whole(tiny_model: Path, tmp_path: Path) -> None:
    final = tmp_path / "base"
    final.mkdir()
    (final / "stale.safetensors").write_text("from an older model")
    with staging_folder(final) as staging:
        write_base_model(ModelSource("folder", str(tiny_model)), staging)
        promote_folder(staging, final)
    assert not (final / "stale.safetensors").exists()
    assert (final / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_run_leaves_the_old_model_and_no_staging(tiny_model: Path, tmp_path: Path) -> None:
    final = tmp_path / "base"
    shutil.copytree(tiny_model, final)
    before = sorted(p.name for p in final.iterdir())
    with pytest.raises(RuntimeError, match="interrupted"), staging_folder(final) as staging:
        write_base_model(ModelSource("folder", str(tiny_model)), staging)
        (staging / "config.json").unlink()  # half-written
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in final.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "tiny"]


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path: Path) -> None:
    leftover = tmp_path / ".base.x1y2.tmp"  # SIGKILL skips every cleanup
    leftover.mkdir()
    (leftover / "model.safetensors").write_text("partial")
    with staging_folder(tmp_path / "base"):
        assert not leftover.exists()


def test_a_folder_without_config_json_names_model_base(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"model\.base: .* without config\.json"):
        resolve_model_source(str(tmp_path), gguf=None, revision=None)


def test_a_missing_gguf_names_model_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"model\.gguf: .*missing\.gguf not found"):
        resolve_model_source(None, gguf=str(tmp_path / "missing.gguf"), revision=None)


@pytest.mark.parametrize("base", ["./models/missing", "not a/hub id", "a/b/c"])
def test_neither_a_folder_nor_a_hub_id_names_model_base(base: str) -> None:
    with pytest.raises(ModelSourceError, match=r"model\.base: .* neither a model folder"):
        resolve_model_source(base, gguf=None, revision=None)


@contextmanager
def fake_hub() -> Iterator[tuple[str, list[str]]]:
    """A hub endpoint on 127.0.0.1 that knows no repo (404) and records every request path."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def stage_environ(endpoint: str, **extra: str) -> dict[str, str]:
    """The environment a flow runs with (tasks.core.env's defaults), the hub at `endpoint`."""
    environ = {k: v for k, v in os.environ.items() if k not in HUB_VARS}
    environ.pop(HUB_DEFAULT_MARK, None)
    environ |= {"HF_ENDPOINT": endpoint, "HF_HOME": "/nonexistent-hf-home", **extra}
    if not extra:
        set_stage_defaults(environ)
    return environ


def test_a_hub_id_is_downloaded_with_the_hub_on_though_stages_run_offline(tmp_path: Path) -> None:
    source = resolve_model_source("HuggingFaceTB/SmolLM2-135M", gguf=None, revision="main")
    assert source.describe() == {
        "kind": "hub",
        "id": "HuggingFaceTB/SmolLM2-135M",
        "revision": "main",
    }
    with fake_hub() as (endpoint, seen), pytest.raises(ModelSourceError) as error:
        write_base_model(source, tmp_path, stage_environ(endpoint))
    assert any("HuggingFaceTB/SmolLM2-135M" in path for path in seen), seen
    message = str(error.value)
    assert "model.base: 'HuggingFaceTB/SmolLM2-135M' is no local folder" in message
    assert "downloading it at revision 'main' from the Hugging Face hub failed" in message
    assert "internet" in message and "HF_TOKEN" in message


def test_a_users_own_offline_setting_wins_and_the_error_names_it(tmp_path: Path) -> None:
    source = resolve_model_source("HuggingFaceTB/SmolLM2-135M", gguf=None, revision=None)
    with fake_hub() as (endpoint, seen), pytest.raises(ModelSourceError) as error:
        write_base_model(source, tmp_path, stage_environ(endpoint, HF_HUB_OFFLINE="1"))
    assert seen == []
    assert "HF_HUB_OFFLINE=1 is set in your environment; unset it" in str(error.value)
