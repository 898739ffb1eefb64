"""A stale lock of a killed extension build is found, so the cpt flow can say why a run
waits instead of hanging without a word."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.cpt.launch import find_stale_build_locks, find_torch_extensions_dir


def test_an_old_build_lock_is_found_and_a_fresh_one_is_not(tmp_path: Path) -> None:
    old = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cpu" / "other_op" / "lock"
    flat = tmp_path / "third_op" / "lock"  # the layout under TORCH_EXTENSIONS_DIR
    for lock in (old, fresh, flat):
        lock.parent.mkdir(parents=True)
        lock.touch()
    now = old.stat().st_mtime
    for lock in (old, flat):
        os.utime(lock, (now - 3600, now - 3600))
    assert find_stale_build_locks(tmp_path, older_than_s=1200, now=now) == sorted([old, flat])
    assert find_stale_build_locks(tmp_path / "absent") == []


def test_the_extensions_folder_follows_torchs_environment_variables(tmp_path: Path) -> None:
    assert find_torch_extensions_dir({"TORCH_EXTENSIONS_DIR": str(tmp_path)}) == tmp_path
    cache = {"XDG_CACHE_HOME": str(tmp_path)}
    assert find_torch_extensions_dir(cache) == tmp_path / "torch_extensions"
