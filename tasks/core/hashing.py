"""Content hashes of files and folders, for the fingerprints that decide whether a training
run resumes from its checkpoints or starts afresh."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def hash_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_paths(paths: Iterable[Path]) -> str:
    """sha256 over every file under the given folders (relative names and bytes), or of the
    given files (names and bytes), in a stable order."""
    digest = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            name = path.relative_to(root) if root.is_dir() else path.name
            digest.update(f"{name}\0{hash_file(path)}\n".encode())
    return digest.hexdigest()


def hash_folder(folder: Path) -> str:
    return hash_paths([folder])
