"""Child processes die with the stage that started them, however the stage dies: a SIGKILLed
flow runs no cleanup, and a trainer left running would write into the checkpoint folder its
rerun resumes from. Every launch path of the project goes through tasks.core.procs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
CHILD = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
# How each stage starts its child, with the child replaced by one that reports its pid.
LAUNCHERS = {
    # the cpt flow's DeepSpeed launcher and the model stage's hub download
    "stream_process": (
        "import sys; from tasks.core.procs import stream_process; "
        "stream_process([sys.executable, '-c', CHILD], {}, lambda l: print(l, flush=True))"
    ),
    # sft and orpo: llamafactory-cli
    "run_streamed": (
        "import sys; from tasks.finetune.llamafactory import run_streamed; "
        "run_streamed([sys.executable, '-c', CHILD], {}, lambda l: print(l, flush=True))"
    ),
    # the llama.cpp and Prefect servers: output to a file, the parent polls
    "start_process": (
        "import sys, time; from tasks.core.procs import start_process; "
        "p = start_process([sys.executable, '-c', CHILD], stdout=None); time.sleep(120)"
    ),
}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_child_dies_with_its_sigkilled_stage(launcher: str) -> None:
    code = f"CHILD = {CHILD!r}; " + LAUNCHERS[launcher]
    stage = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert stage.stdout is not None
    pid = int(stage.stdout.readline())
    assert alive(pid)
    stage.kill()
    stage.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    assert not alive(pid)


def test_stopping_reaches_every_process_the_child_forked() -> None:
    from tasks.core.procs import start_process, stop_process_group

    grandchild = (
        f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {CHILD!r}]).wait()"
    )
    proc = start_process([sys.executable, "-c", grandchild])
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    stop_process_group(proc, grace_s=5)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    assert not alive(pid)
    proc.stdout.close()
