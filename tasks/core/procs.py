"""Child processes of a stage (the DeepSpeed launcher, llamafactory-cli, llama.cpp's server):
started in their own process group and tied to the flow's life, their output streamed line by
line, and stopped as a group. Every stage that launches a process goes through here, so a
killed stage never leaves a trainer writing into the folder its rerun resumes from."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


class ProcessFailed(RuntimeError):
    """A child exited non-zero; `tail` holds its last output lines."""

    def __init__(self, message: str, code: int, tail: list[str]) -> None:
        super().__init__(message)
        self.code = code
        self.tail = tail


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies, however it
    dies (SIGKILL included), so no child outlives its stage."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_process(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group (so a stop reaches every worker it forks) that
    dies with this process; stderr goes where stdout goes."""
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def stop_process_group(proc: subprocess.Popen[Any], grace_s: float = 30) -> None:
    """SIGTERM to the child's process group (every rank or worker), then SIGKILL after
    `grace_s` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def split_lines(buffer: bytes) -> tuple[list[str], bytes]:
    """Complete lines (ended by \\n or a progress bar's \\r) and the unfinished rest."""
    *lines, rest = re.split(rb"\r\n|\r|\n", buffer)
    return [line.decode("utf-8", "replace") for line in lines if line.strip()], rest


def stream_process(
    argv: Sequence[str],
    env: Mapping[str, str],
    sink: Callable[[str], None],
    check_line: Callable[[str], None] | None = None,
    tail: int = 40,
) -> tuple[int, list[str]]:
    """Run `argv`, handing each output line (stdout and stderr merged) to `sink` as it comes;
    returns the exit code and the last `tail` lines. `check_line` may raise to stop the run at
    once; an exception here (Ctrl-C included) stops the whole process group."""
    proc = start_process(argv, env)
    assert proc.stdout is not None
    last: deque[str] = deque(maxlen=tail)
    buffer = b""
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            lines, buffer = split_lines(buffer + chunk)
            for line in lines:
                last.append(line)
                sink(line)
                if check_line is not None:
                    check_line(line)
        if buffer.strip():
            last.append(buffer.decode("utf-8", "replace"))
            sink(last[-1])
        return proc.wait(), list(last)
    finally:
        stop_process_group(proc)
        proc.stdout.close()


def run_checked(
    argv: Sequence[str],
    env: Mapping[str, str],
    sink: Callable[[str], None],
    what: str,
    check_line: Callable[[str], None] | None = None,
) -> None:
    """stream_process, raising ProcessFailed with the last lines when the exit code is not 0."""
    code, last = stream_process(argv, env, sink, check_line)
    if code != 0:
        raise ProcessFailed(
            f"{what} exited with status {code}; its last lines:\n" + "\n".join(last), code, last
        )
