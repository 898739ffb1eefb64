"""The base model every training stage starts from: where it comes from (a GGUF file, a local
transformers folder or a Hugging Face hub id), how it becomes a plain transformers folder, what
the report says about it, and the check that a GGUF conversion predicts what llama.cpp predicts.

The folder is built in a temporary sibling of its final path and renamed into place only when
complete (and, for a GGUF, verified), so a killed run never leaves a half-written model behind.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tasks.core.agreement import (
    SAMPLE_PAGE,
    compute_next_token_logits,
    fetch_llama_cpp_predictions,
    read_sample_ids,
    summarize_agreement,
)
from tasks.core.env import describe_hub_block, hub_env
from tasks.core.procs import stream_process
from tasks.core.tokens import find_smollm2_gguf

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


class ModelSourceError(RuntimeError):
    """params `model:` name a source that does not exist or cannot be fetched."""


class AgreementTooLow(RuntimeError):
    """The converted model predicts other next tokens than llama.cpp serving the same GGUF."""


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["gguf", "folder", "hub"]
    location: str  # GGUF file, folder path or hub id
    revision: str | None = None

    def describe(self) -> dict[str, Any]:
        if self.kind == "hub":
            return {"kind": "hub", "id": self.location, "revision": self.revision}
        if self.kind == "gguf":  # the file name: a site-packages path differs per machine
            return {"kind": "gguf", "file": Path(self.location).name}
        return {"kind": self.kind, "path": self.location}


def resolve_gguf(gguf: str | None) -> Path:
    if gguf is None:
        try:
            return find_smollm2_gguf()
        except FileNotFoundError as exc:
            raise ModelSourceError(
                f"model.gguf: null means the packaged SmolLM2, but {exc}"
            ) from None
    path = Path(gguf).expanduser()
    if not path.is_file():
        raise ModelSourceError(f"model.gguf: {gguf} not found")
    return path


def resolve_model_source(base: str | None, gguf: str | None, revision: str | None) -> ModelSource:
    """base null → the GGUF; an existing folder → a copy of it; otherwise a hub id."""
    if base is None:
        return ModelSource("gguf", str(resolve_gguf(gguf)))
    folder = Path(base).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelSourceError(
                f"model.base: {base} is a folder without config.json, not a transformers model"
            )
        return ModelSource("folder", str(folder))
    if folder.exists() or not HUB_ID.fullmatch(base):
        raise ModelSourceError(
            f"model.base: {base!r} is neither a model folder nor a Hugging Face id (org/name)"
        )
    return ModelSource("hub", base, revision)


def read_gguf_model(gguf: Path) -> PreTrainedModel:
    """The GGUF's weights dequantized into an fp32 transformers model, ready to save."""
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are plain fp32 tensors by now, but the model still carries the GGUF
    # quantizer (save_pretrained refuses to save it) and the config would claim a quantization
    # that the saved weights do not have.
    model.hf_quantizer = None  # type: ignore[assignment]  # (nn.Module types attributes as tensors)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch.float32
    return model


def read_gguf_tokenizer(gguf: Path, config: PretrainedConfig) -> PreTrainedTokenizerBase:
    """The GGUF's tokenizer and chat template, with bos/eos/pad taken from the model config
    (which holds the GGUF's ids): transformers 5.6's GGUF tokenizer conversion makes eos the
    bos token and drops pad (SmolLM2 would get eos = <|im_start|>), and training stages end
    every example with eos."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for name in ("bos", "eos", "pad"):
        token_id = getattr(config, f"{name}_token_id", None)
        if isinstance(token_id, int):
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
    # Unset, it would be 1e30; the model's own context length is what truncation should use.
    tokenizer.model_max_length = config.max_position_embeddings
    return tokenizer


def write_converted_gguf(gguf: Path, out: Path) -> PreTrainedModel:
    """Convert the GGUF into a transformers folder: fp32 safetensors, config, generation
    config, tokenizer and chat template. Returns the model as loaded from the GGUF."""
    model = read_gguf_model(gguf)
    model.save_pretrained(str(out))
    read_gguf_tokenizer(gguf, model.config).save_pretrained(str(out))
    return model


def write_copied_folder(src: Path, out: Path) -> None:
    shutil.copytree(src, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))


def download_hub_model(
    repo_id: str, revision: str | None, out: Path, environ: Mapping[str, str]
) -> None:
    """The repo's weights, configs and tokenizer into `out`, downloaded by a child process that
    has the hub switched on (the stage itself runs offline; a user's own HF_*_OFFLINE wins)."""
    command = [sys.executable, "-m", "tasks.model.hub", repo_id, str(out)]
    command += ["--revision", revision] if revision else []
    code, tail = stream_process(command, hub_env(True, environ), lambda line: None, tail=8)
    if code != 0:
        at = f" at revision {revision!r}" if revision else ""
        fix = describe_hub_block(environ) or (
            "a download needs internet access, and HF_TOKEN set in the environment for a gated "
            "or private model"
        )
        raise ModelSourceError(
            f"model.base: {repo_id!r} is no local folder, and downloading it{at} from the "
            f"Hugging Face hub failed: {tail[-1] if tail else f'exit status {code}'}. Fix: "
            f"{fix}; or set model.base to a local transformers folder."
        )
    shutil.rmtree(out / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
    if not (out / "config.json").is_file() or not any(out.glob("*.safetensors")):
        raise ModelSourceError(
            f"model.base: hub repo {repo_id!r} has no config.json or no safetensors weights"
        )


def write_base_model(
    source: ModelSource, out: Path, environ: Mapping[str, str] | None = None
) -> None:
    if source.kind == "gguf":
        write_converted_gguf(Path(source.location), out)
    elif source.kind == "folder":
        write_copied_folder(Path(source.location), out)
    else:
        download_hub_model(source.location, source.revision, out, environ or os.environ)


def describe_model_folder(folder: Path) -> dict[str, Any]:
    """Parameter count and dtype read from the safetensors headers (no weights loaded), and
    the folder's size on disk."""
    parameters, dtypes = 0, set()
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensor = weights.get_slice(name)
                parameters += math.prod(tensor.get_shape())
                dtypes.add(DTYPE_NAMES.get(tensor.get_dtype(), tensor.get_dtype()))
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"parameters": parameters, "dtype": ",".join(sorted(dtypes)), "bytes": size}


def verify_conversion(source: ModelSource, folder: Path, positions: int) -> dict[str, Any]:
    """For a GGUF source, compare the converted folder's next-token argmax with llama.cpp's
    on the first `positions` tokens of the sample page."""
    if source.kind != "gguf" or positions == 0:
        reason = "verify_tokens is 0" if positions == 0 else f"source is a {source.kind}"
        return {"positions": 0, "skipped": reason}
    started = time.monotonic()
    ids = read_sample_ids(folder, SAMPLE_PAGE, positions, "model.verify_tokens")
    logits = compute_next_token_logits(folder, ids)
    theirs, _ = fetch_llama_cpp_predictions(Path(source.location), ids)
    summary = summarize_agreement(logits, theirs)
    summary["sample"] = SAMPLE_PAGE.name
    summary["wall_s"] = round(time.monotonic() - started, 2)
    return summary


def check_agreement(verification: dict[str, Any], minimum: float) -> None:
    if verification["positions"] and verification["agreement"] < minimum:
        raise AgreementTooLow(
            f"model.min_argmax_agreement: the converted model's next-token argmax matched "
            f"llama.cpp's at {verification['matches']} of {verification['positions']} positions "
            f"of {verification['sample']} ({verification['agreement']:.4f}), below {minimum}; "
            f"first mismatches: {verification['mismatches'][:3]}"
        )
