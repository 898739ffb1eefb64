"""The terminal chat, driven the way a person uses it: through a pseudo-terminal, a question
typed, the model's reply printed after `model> `, the next prompt, and a clean exit on Ctrl-D.
The streamed text is the model's greedy answer; /reset and /exit do what they say; an unknown
model names the stages that exist. A tiny random model keeps it quick."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest
import torch

from tasks.services.chat import (
    MODEL_PROMPT,
    USER_PROMPT,
    ChatSetupError,
    load_chat_model,
    resolve_model_folder,
    run_chat,
    stream_reply,
)
from tests.support.tiny_models import write_tiny_model_folder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_folder(tmp_path_factory.mktemp("chat"), "llama")


def read_until(fd: int, marker: str, timeout_s: float = 120.0) -> str:
    """What the terminal prints from now until `marker` appears."""
    text, deadline = "", time.monotonic() + timeout_s
    while marker not in text:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {marker!r} within {timeout_s} s; the terminal shows {text!r}")
        if select.select([fd], [], [], 1.0)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            text += chunk.decode("utf-8", "replace")
    return text


def test_a_question_typed_in_a_terminal_gets_a_reply_and_ctrl_d_ends(tiny: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat, as a person starts it
        os.chdir(REPO)
        args = ["--model", str(tiny), "--system", "Be brief.", "--max-new-tokens", "12"]
        os.execv(sys.executable, [sys.executable, "-m", "tasks.services.chat", *args])
    try:
        shown = read_until(fd, USER_PROMPT)
        assert "chatting with" in shown
        os.write(fd, b"What does VACUUM FULL lock?\n")
        after = read_until(fd, USER_PROMPT)
        assert "What does VACUUM FULL lock?" in after  # the terminal echoes what was typed
        assert MODEL_PROMPT in after
        os.write(fd, b"\x04")  # Ctrl-D: end of input
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        os.close(fd)


def test_the_streamed_reply_is_the_models_greedy_answer(tiny: Path) -> None:
    model, tokenizer = load_chat_model(tiny)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "the lock"}]
    pieces: list[str] = []
    reply = stream_reply(model, tokenizer, messages, 16, pieces.append)
    assert reply == "".join(pieces) and reply
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=2)
    start = inputs["input_ids"].shape[1]
    assert reply == tokenizer.decode(out[0, start:], skip_special_tokens=True)


def test_reset_forgets_and_exit_ends() -> None:
    lines = iter(["first", "/reset", "second", "/exit", "never read"])
    seen: list[list[dict[str, str]]] = []

    def reply(messages: list[dict[str, str]]) -> str:
        seen.append([dict(m) for m in messages])
        return "ok"

    written: list[str] = []
    run_chat(reply, "SYS", read_line=lambda _: next(lines), write=written.append)
    assert [[m["content"] for m in s] for s in seen] == [["SYS", "first"], ["SYS", "second"]]
    assert "(conversation cleared)\n" in written
    assert next(lines) == "never read"


def test_an_unknown_model_names_the_stages(tmp_path: Path) -> None:
    stages = {"base": tmp_path / "base", "orpo": tmp_path / "orpo/model"}
    with pytest.raises(ChatSetupError, match=r"--model sft: .* one of \['base', 'orpo'\]"):
        resolve_model_folder("sft", stages)
    (tmp_path / "orpo/model").mkdir(parents=True)
    (tmp_path / "orpo/model/config.json").write_text("{}")
    assert resolve_model_folder("orpo", stages) == tmp_path / "orpo/model"
