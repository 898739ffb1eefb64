"""Chat with a model the pipeline trained, in the terminal, its reply streamed as it is generated.

    python -m tasks.services.chat [--model orpo|sft|base|cpt/PHASE|FOLDER] [--system TEXT]
                                  [--max-new-tokens 256]
    make chat [MODEL=sft]

The default is the final model (orpo) under the SFT system prompt (params.yaml
`datasets.system_prompt`), as it was trained and evaluated; `--model base` in a second terminal
puts the starting model beside it. Greedy decoding, so the same question gets the same answer.
Type a question; /reset forgets the conversation; /exit or Ctrl-D ends.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from threading import Thread
from typing import TYPE_CHECKING, Any

from tasks.core.env import set_stage_defaults

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

USER_PROMPT = "you> "
MODEL_PROMPT = "model> "


class ChatSetupError(SystemExit):
    """The model or the system prompt cannot be found; the message says what exists."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", default="orpo", help="a pipeline stage's model or a folder")
    parser.add_argument("--system", help="system prompt; default params.yaml's SFT one")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    return parser.parse_args(argv)


def resolve_model_folder(spec: str, stages: dict[str, Path]) -> Path:
    """A stage name (as the eval report names models) or a transformers folder."""
    folder = stages.get(spec, Path(spec))
    if not (folder / "config.json").is_file():
        raise ChatSetupError(
            f"error: --model {spec}: no transformers model at {folder}; a folder, or one of "
            f"{sorted(stages)} once its stage has run (dvc repro)"
        )
    return folder


def read_settings(args: argparse.Namespace) -> tuple[Path, str]:
    """The model folder and system prompt; params.yaml is read only for what args leave out."""
    if args.system is not None and Path(args.model, "config.json").is_file():
        return Path(args.model), args.system
    from tasks.core.params import load_stage_params

    params = load_stage_params()
    system = params.datasets.system_prompt if args.system is None else args.system
    return resolve_model_folder(args.model, params.model_folders()), system


def load_chat_model(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    model.eval()
    return model, tokenizer


def stream_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    max_new_tokens: int,
    write: Callable[[str], None],
) -> str:
    """Generate the assistant's next turn, passing each piece of text to `write` as soon as
    the streamer has it; returns the whole reply."""
    from transformers import TextIteratorStreamer

    inputs: Any = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    settings = {
        **inputs,
        "streamer": streamer,
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
    }
    # generate() fills the streamer from its own thread while this one prints what arrives.
    worker = Thread(target=generate, args=(model, settings), daemon=True)
    worker.start()
    pieces = []
    for piece in streamer:
        write(piece)
        pieces.append(piece)
    worker.join()
    return "".join(pieces)


def generate(model: Any, settings: dict[str, Any]) -> None:
    model.generate(**settings)


def write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_chat(
    reply: Callable[[list[dict[str, str]]], str],
    system: str,
    read_line: Callable[[str], str] = input,
    write: Callable[[str], None] = write_now,
) -> None:
    """The conversation loop: a line in, the streamed reply out, until /exit or end of input."""
    messages = [{"role": "system", "content": system}]
    while True:
        try:
            line = read_line(USER_PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if line == "/exit":
            return
        if line == "/reset":
            del messages[1:]
            write("(conversation cleared)\n")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        write(MODEL_PROMPT)
        messages.append({"role": "assistant", "content": reply(messages).strip()})
        write("\n")


def main(argv: list[str] | None = None) -> int:
    set_stage_defaults(os.environ)
    args = parse_args(argv)
    folder, system = read_settings(args)
    write_now(f"loading {folder} ...\n")
    model, tokenizer = load_chat_model(folder)
    write_now(f"chatting with {folder}; /reset clears, /exit or Ctrl-D ends\n")
    run_chat(
        lambda messages: stream_reply(model, tokenizer, messages, args.max_new_tokens, write_now),
        system,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
