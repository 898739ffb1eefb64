"""Atomic writes: readers see the old file or the new one, and the file gets the permissions
any file written by the user's process would get."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tasks.core.io import replace_folder, write_text_atomic


def test_an_atomic_write_honours_the_umask(tmp_path: Path) -> None:
    # The umask is read once at import, so check it in a process started with a known one.
    code = (
        "import sys; from pathlib import Path; from tasks.core.io import write_text_atomic; "
        "write_text_atomic(Path(sys.argv[1]), 'x')"
    )
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        path = tmp_path / f"out-{umask:o}.txt"
        subprocess.run(
            [sys.executable, "-c", code, str(path)],
            check=True,
            preexec_fn=lambda mask=umask: os.umask(mask),  # type: ignore[misc]
        )
        assert stat.S_IMODE(path.stat().st_mode) == mode, oct(umask)


def test_a_replaced_folder_is_whole_and_leaves_no_staging(tmp_path: Path) -> None:
    final = tmp_path / "sets"
    write_text_atomic(final / "old.txt", "old")
    replace_folder(final, lambda folder: write_text_atomic(folder / "new.txt", "new"))
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sets"]
