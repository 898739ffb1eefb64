"""Reading one version of the outputs: the workspace from disk, a git revision through DVC (the
local cache first, then the DVC remote). Every failure is one line naming the revision, the
path and the command that fixes it."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

WORKSPACE = "workspace"


class DiffInputError(RuntimeError):
    """A version cannot be read; the message is one line that says why and what to run."""


class VersionReader(Protocol):
    label: str

    def read_bytes(self, path: str) -> bytes | None:
        """The file's bytes, or None when this version has no such file."""

    def hash_files(self, folder: str) -> dict[str, str]:
        """md5 of each file directly inside `folder` by name; {} when there is no folder."""


def run_git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def resolve_commit(root: Path, rev: str) -> str:
    done = run_git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if done.returncode != 0:
        raise DiffInputError(
            f"unknown git revision {rev!r}: give a tag, branch or commit (`git tag`, `git log`)"
        )
    return done.stdout.strip()


def find_latest_tag(root: Path, before: str | None) -> str:
    """The release `before` follows: the newest tag on its parents (so B=v2 compares with the
    tag before v2), or for the workspace (None) the newest tag on HEAD itself."""
    done = run_git(root, "describe", "--tags", "--abbrev=0", f"{before}^" if before else "HEAD")
    if done.returncode != 0:
        raise DiffInputError(
            "no git tag to compare with: tag the release first (`git tag v1 && dvc push`) "
            "or name the older revision (`make diff A=<revision>`)"
        )
    return done.stdout.strip()


def check_has_lock(root: Path, commit: str, rev: str) -> None:
    if run_git(root, "cat-file", "-e", f"{commit}:dvc.lock").returncode != 0:
        raise DiffInputError(
            f"{rev}: no dvc.lock at this revision, so it records no pipeline outputs to compare; "
            "pick a revision committed after a `dvc repro`"
        )


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class WorkspaceReader:
    """The files on disk: what `dvc repro` last wrote, committed or not."""

    root: Path
    label: str = WORKSPACE

    def read_bytes(self, path: str) -> bytes | None:
        file = self.root / path
        return file.read_bytes() if file.is_file() else None

    def hash_files(self, folder: str) -> dict[str, str]:
        where = self.root / folder
        if not where.is_dir():
            return {}
        return {p.name: md5_hex(p.read_bytes()) for p in where.iterdir() if p.is_file()}


def render_missing(label: str, path: str) -> str:
    return (
        f"{label}: {path} is in neither the local DVC cache nor the DVC remote; fetch it with "
        f"`dvc fetch --all-tags` (or `git checkout {label} && dvc pull`), or, where it was "
        f"built, push it: `dvc push` from a checkout of {label} (do this at every release)"
    )


class RevisionReader:
    """A git revision's files through DVC: git-tracked ones from the commit, DVC-tracked ones
    by the hashes its dvc.lock records, from the cache or the remote."""

    def __init__(self, root: Path, label: str, commit: str, config: dict[str, Any]) -> None:
        from dvc.api import DVCFileSystem

        self.label = label
        self.fs = DVCFileSystem(str(root), rev=commit, config=config or None)

    def read_bytes(self, path: str) -> bytes | None:
        from dvc.exceptions import DvcException
        from dvc_data.index import DataIndexError

        try:
            return bytes(self.fs.cat_file(path))
        except DataIndexError as exc:  # the folder's listing (.dir) is in no storage
            raise DiffInputError(render_missing(self.label, path)) from exc
        except FileNotFoundError as exc:
            # A path the revision does not have is named in the error; a file whose bytes
            # are in no storage ("No storage files available") is not.
            if exc.filename is not None:
                return None
            raise DiffInputError(render_missing(self.label, path)) from exc
        except DvcException as exc:  # e.g. a remote that cannot be reached or read
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DiffInputError(
                f"{self.label}: {path} could not be read through DVC ({why}); check the "
                "remote with `dvc remote list` and `dvc fetch`"
            ) from exc

    def hash_files(self, folder: str) -> dict[str, str]:
        from dvc_data.index import DataIndexError

        try:
            if not self.fs.isdir(folder):
                return {}
            entries = self.fs.ls(folder, detail=True)
        except (FileNotFoundError, DataIndexError) as exc:
            raise DiffInputError(render_missing(self.label, folder)) from exc
        return {
            Path(e["name"]).name: str(e.get("md5") or "")
            for e in entries
            if e.get("type") == "file"
        }


def read_remote_config(root: Path) -> dict[str, Any]:
    """The workspace's DVC remotes (config and config.local), to read old revisions with: a
    remote added after a release was tagged is not in that tag's .dvc/config."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        remotes = {name: dict(conf) for name, conf in repo.config["remote"].items()}
        default = repo.config["core"].get("remote")
    if not remotes:
        return {}
    return {"remote": remotes, **({"core": {"remote": default}} if default else {})}


def resolve_revisions(root: Path, a: str | None, b: str | None) -> str:
    """Check both revisions before any work (each failure one line) and return A's name: the
    one given, or the newest tag before B."""
    if b is not None:
        check_has_lock(root, resolve_commit(root, b), b)
    a = a or find_latest_tag(root, b)
    check_has_lock(root, resolve_commit(root, a), a)
    return a


def open_version(root: Path, rev: str | None, config: dict[str, Any]) -> VersionReader:
    """The workspace when `rev` is None, else that revision, checked to exist and to hold a
    dvc.lock."""
    if rev is None:
        return WorkspaceReader(root)
    commit = resolve_commit(root, rev)
    check_has_lock(root, commit, rev)
    return RevisionReader(root, rev, commit, config)
