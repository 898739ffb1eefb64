"""Atomic writes of files and folders, and the JSON/JSONL helpers, shared by every stage."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not thread-safe.
UMASK = read_umask()


class DiskFull(OSError):
    """A write found no space left: the message names the file and the free space."""


def raise_if_disk_full(exc: OSError, path: Path) -> None:
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    raise DiskFull(
        exc.errno,
        f"{path}: no space left on the device ({free}); nothing half-written was left, and "
        "what earlier steps finished is kept: free some space and rerun",
    ) from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes it 0600; a plain open() would not
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise_if_disk_full(exc, path)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write only when the bytes differ, so unchanged outputs keep their mtime and hash."""
    if path.is_file() and path.read_bytes() == data:
        return False
    write_bytes_atomic(path, data)
    return True


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, dumps_json(obj))


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(row, sort_keys=True, ensure_ascii=False) for row in rows]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Each non-blank line's JSON object. A line that is not one raises ValueError naming the
    file, the line number and what is wrong, so a torn or hand-edited file is found at once."""
    fix = "repair or delete the line, or rerun the stage that writes the file"
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where}: not UTF-8 (byte {exc.start}); {fix}") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{where}: not valid JSON ({exc.msg} at column {exc.colno}): "
                    f"{line[:120]!r}; {fix}"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: a JSON {type(row).__name__}, not an object; {fix}")
            yield row


def remove_stale_staging(final: Path) -> None:
    """Staging folders a killed run left beside `final` (DVC runs one stage at a time)."""
    for leftover in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def staging_folder(final: Path) -> Iterator[Path]:
    """An empty folder beside `final` (same filesystem, so promote_folder is a rename); it is
    removed when the block ends unless promote_folder moved it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    staging.chmod(0o777 & ~UMASK)  # mkdtemp makes it private; outputs are for every user
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def promote_folder(staging: Path, final: Path) -> None:
    """Move the finished folder into place; an old one is moved aside first, then deleted.
    `final` is the old folder or the new one, or for the instant between two renames absent,
    but never a half-written one. A staging folder on another filesystem is first copied
    beside `final`, so the swap itself is always a rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if staging.parent.resolve() != final.parent.resolve():
        beside = final.with_name(f".{final.name}.moving.tmp")
        shutil.rmtree(beside, ignore_errors=True)
        shutil.move(staging, beside)
        staging = beside
    old = final.with_name(f".{final.name}.old.tmp")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def replace_folder(final: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder with `fill(staging)` beside `final`, then swap it in: readers see the old
    folder or the new one, never half of one."""
    with staging_folder(final) as staging:
        fill(staging)
        promote_folder(staging, final)
