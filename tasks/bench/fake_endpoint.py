"""An OpenAI-compatible endpoint that answers every synth prompt with a well-formed, grounded
reply after a fixed delay: a stand-in for a GPU server whose time per request does not depend
on this machine's CPU, so what the synth bench measures with one, two or a killed endpoint is
the stage's own scheduling. Runs in a process of its own, so killing it is a real kill:

    python -m tasks.bench.fake_endpoint --port 8841 --delay-s 0.5

The replies are built from the sentences of the page the prompt carries (the tests' scripted
client gives the same ones).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from tasks.core.documents import parse_document
from tasks.core.procs import free_port, start_process, stop_process_group

# A sentence ends at a stop before a space: cut at the dot of 15.4 or of a URL, it would quote
# a literal the page does not hold.
SENTENCE_RE = re.compile(r"[A-Z](?:[^.!?\n`|#]|[.!?](?=\S)){30,200}[.!?](?=\s|$)")


def document_of(messages: list[dict[str, str]]) -> str:
    """The page text the prompt carried, without its front matter."""
    page = messages[-1]["content"].split("Document:\n", 1)[1]
    _, body = parse_document(page.split("\nEnd of the document.", 1)[0] + "\n")
    return body


def sentences_of(messages: list[dict[str, str]]) -> list[str]:
    paragraphs = re.sub(r"(?<!\n)\n(?!\n)", " ", document_of(messages))  # wrapped lines joined
    found = [m.group(0).strip() for m in SENTENCE_RE.finditer(paragraphs)]
    return found or ["The page documents one procedure for administrators."]


JUDGE_MARK = 'Reply with JSON only: {"supported"'


def is_judge_prompt(messages: list[dict[str, str]]) -> bool:
    return JUDGE_MARK in messages[-1]["content"]


def judged_answer(messages: list[dict[str, str]]) -> str:
    """The answer a faithfulness prompt asks about."""
    return messages[-1]["content"].rsplit("\nAnswer: ", 1)[1].split("\n", 1)[0]


def scripted_reply(messages: list[dict[str, str]]) -> str:
    """A well-formed, grounded reply to any synth prompt, built from the page's sentences; the
    faithfulness judge says yes."""
    user = messages[-1]["content"]
    if is_judge_prompt(messages):
        return '{"supported": "yes"}'
    sentences = sentences_of(messages)
    if "<POINT> main point <END>" in user:
        k = int(re.search(r"List the (\d+) main points", user).group(1))  # type: ignore[union-attr]
        return "".join(f"<POINT> {s} <END>\n" for s in (sentences * k)[:k])
    if "<QUE> question <ANS>" in user:
        n = int(re.search(r"Generate exactly (\d+)", user).group(1))  # type: ignore[union-attr]
        pairs = [
            f"<QUE> What should an administrator know about item {i}: {s[:60]}? <ANS> {s} <END>\n"
            for i, s in enumerate((sentences * n)[:n])
        ]
        return "".join(pairs)
    point = user.split("Main point: ", 1)[1].split("\n", 1)[0]
    kind = "corrective" if "corrective answer" in user else "good"
    return (
        f"<QUE> Is it true ({kind}) that {point[:80]}? <GOOD> {point} "
        f"<BAD> No, that never happens in any release. <END>\n"
    )


def render_completion(model: str, text: str, prompt_words: int) -> str:
    reply = {
        "id": f"chatcmpl-bench-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": len(text.split()),
            "total_tokens": prompt_words + len(text.split()),
        },
    }
    return json.dumps(reply)


class DelayedServer(ThreadingHTTPServer):
    daemon_threads = True
    model: str
    delay_s: float


class DelayedHandler(BaseHTTPRequestHandler):
    server: DelayedServer
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM and llama.cpp

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_json(self, code: int, text: str) -> None:
        data = text.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            entry = {"id": self.server.model, "object": "model", "owned_by": "bench"}
            self.send_json(200, json.dumps({"object": "list", "data": [entry]}))
        else:
            self.send_json(404, '{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.send_json(404, '{"error": {"message": "not found"}}')
            return
        messages: list[dict[str, str]] = json.loads(raw)["messages"]
        time.sleep(self.server.delay_s)
        words = sum(len(m["content"].split()) for m in messages)
        text = render_completion(self.server.model, scripted_reply(messages), words)
        self.send_json(200, text)


def serve(port: int, model: str, delay_s: float) -> None:
    server = DelayedServer(("127.0.0.1", port), DelayedHandler)
    server.model, server.delay_s = model, delay_s
    server.serve_forever()


@contextmanager
def start_fake_endpoint(
    model: str, delay_s: float, ready_timeout_s: float = 30.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The endpoint in a process of its own on a free port: (base URL, process). Kill the
    process to take the endpoint down mid-run; it is stopped on exit either way."""
    port = free_port()
    argv = [sys.executable, "-m", __name__, "--port", str(port), "--model", model]
    proc = start_process([*argv, "--delay-s", str(delay_s)], stdout=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(base_url, proc, ready_timeout_s)
        yield base_url, proc
    finally:
        stop_process_group(proc, grace_s=5)


def wait_until_up(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the fake endpoint for {base_url} exited with {proc.returncode}")
        try:
            if requests.get(f"{base_url}/models", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the fake endpoint at {base_url} did not answer in {timeout_s:g} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--delay-s", type=float, default=0.5)
    args = parser.parse_args(argv)
    serve(args.port, args.model, args.delay_s)


if __name__ == "__main__":
    main()
