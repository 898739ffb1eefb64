"""Download a model repo from the Hugging Face hub: `python -m tasks.model.hub REPO OUT
[--revision R]`.

The model stage runs this as a child process with the hub switched on for it alone:
huggingface_hub reads its offline switch once, when it is imported, and the stage itself runs
offline. The last line printed on failure is the reason, for the stage's error message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# What a training stage needs from a hub repo: safetensors weights, configs, the tokenizer and
# its chat template; not the .bin/.pth/.gguf/ONNX copies many repos also carry.
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download a model repo from the hub.")
    parser.add_argument("repo_id")
    parser.add_argument("out", type=Path)
    parser.add_argument("--revision")
    args = parser.parse_args(argv)
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            args.repo_id, revision=args.revision, local_dir=args.out, allow_patterns=HUB_FILES
        )
    except Exception as exc:  # the reason goes to the parent as this process's last line
        print(f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
