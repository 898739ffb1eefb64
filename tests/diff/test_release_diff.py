"""The release diff on a real git + DVC repo: two tagged releases of a small docs site, each
built by crawl → markdown → synth → datasets (tests/support/release_repo.py), read back through
DVC at their tags, from the cache or from a local-path remote. The diff names exactly the pages
that were added, removed, changed, moved and broken, and the Q/A pairs that follow from them;
bad revisions and data missing from cache and remote fail in one line that names the fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.diff.build import build_release_diff
from tasks.diff.health import SHRINK_THRESHOLD
from tasks.diff.versions import (
    DiffInputError,
    open_version,
    read_remote_config,
    resolve_revisions,
)
from tests.support.release_repo import REPO, Releases, build_releases, run_tool


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


def diff_of(
    repo: Path, a: str, b: str | None, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    config = {} if config is None else config
    return build_release_diff(
        open_version(repo, a, config), open_version(repo, b, config), SHRINK_THRESHOLD
    )


def names(rows: list[dict[str, Any]], key: str = "url") -> list[str]:
    return sorted(Path(r[key]).name for r in rows)


def test_the_diff_names_each_page_change_and_the_qa_that_follow(releases: Releases) -> None:
    diff = diff_of(releases.repo, "v1", "v2")
    pages = diff["pages"]
    assert names(pages["added"]) == ["security.html"]
    assert names(pages["removed"]) == ["backup.html"]
    assert names(pages["changed"]) == ["configure.html", "tuning.html"]
    assert [(Path(m["old_url"]).name, Path(m["new_url"]).name) for m in pages["moved"]] == [
        ("upgrade.html", "upgrade-guide.html")
    ]
    assert len(pages["unchanged"]) == 1  # install.html
    configure = next(c for c in pages["changed"] if c["url"].endswith("configure.html"))
    assert configure["headings_added"] == ["Checking the file", "Reloading and validation"]
    assert configure["headings_removed"] == ["Reloading"]
    # The template change that hid the tuning page's text is a crawl-health finding.
    assert names(diff["health"]["shrunk"]) == ["tuning.html"]
    assert diff["health"]["newly_failing"] == [] and diff["health"]["newly_excluded"] == []

    # Q/A pairs follow their pages: new on the added and the moved page (its answers cite the
    # new URL), gone with the removed, moved and broken pages, kept where the text is the same.
    by_page = {Path(p["url"]).name: p for p in diff["qa"]["by_page"]}
    assert {n: (len(p["added"]), len(p["removed"])) for n, p in by_page.items()} == {
        "security.html": (1, 0),
        "upgrade-guide.html": (1, 0),
        "backup.html": (0, 1),
        "upgrade.html": (0, 1),
        "tuning.html": (0, 1),
    }
    qa = diff["summary"]["qa"]
    assert qa["added_by_source"] == {"changed_pages": 1, "new_pages": 1}
    assert qa["removed_by_source"] == {"changed_pages": 2, "removed_pages": 1}
    assert qa["kept_by_source"] == {"changed_pages": 1, "unchanged_pages": 1}

    synth = {r["figure"]: (r["before"], r["after"]) for r in diff["synth"]}
    assert synth["calls reused"][0] == 0 and synth["calls reused"][1] > 0  # install.html's
    assert synth["calls made"][1] > 0  # the changed, moved and added pages'
    assert [p["key"] for p in diff["params"]] == ["crawl.start_urls"]
    tokens = {t["set"]: t for t in diff["tokens"]}
    # The broken page's text is gone. (Not asserted on the CPT sets: which page is held out
    # for eval follows the hash of its URL, and the served site's port changes per run.)
    assert tokens["Markdown pages (tokens)"]["delta"] < 0
    assert "CPT short (tokens)" in tokens


def test_defaults_are_the_workspace_against_the_newest_tag(releases: Releases) -> None:
    assert resolve_revisions(releases.repo, None, None) == "v2"  # HEAD is the v2 release
    assert resolve_revisions(releases.repo, None, "v2") == "v1"
    workspace = diff_of(releases.repo, "v1", None)
    assert workspace["b"] == "workspace"
    assert workspace["summary"] == diff_of(releases.repo, "v1", "v2")["summary"]


def test_old_releases_are_read_from_a_local_remote_once_the_cache_is_gone(
    releases: Releases, tmp_path: Path
) -> None:
    repo = tmp_path / "clone"
    shutil.copytree(releases.repo, repo, symlinks=True)
    run_tool(repo, "dvc", "remote", "add", "--local", "-d", "store", str(tmp_path / "remote"))
    run_tool(repo, "dvc", "push", "-q", "--all-tags")
    shutil.rmtree(repo / ".dvc" / "cache")
    assert diff_of(repo, "v1", "v2")["summary"] == diff_of(releases.repo, "v1", "v2")["summary"]

    # A remote named in .dvc/config only after the releases were tagged is not in their
    # .dvc/config: the workspace's remotes are passed on when reading them.
    (repo / ".dvc" / "config.local").unlink()
    run_tool(repo, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
    config = read_remote_config(repo)
    assert diff_of(repo, "v1", "v2", config)["summary"]["pages"]["moved"] == 1
    with pytest.raises(DiffInputError):
        diff_of(repo, "v1", "v2", {})


def test_data_in_neither_cache_nor_remote_fails_naming_revision_path_and_fix(
    releases: Releases, tmp_path: Path
) -> None:
    repo = tmp_path / "clone"
    shutil.copytree(releases.repo, repo, symlinks=True)
    shutil.rmtree(repo / ".dvc" / "cache")
    with pytest.raises(DiffInputError) as caught:
        diff_of(repo, "v1", "v2")
    message = str(caught.value)
    assert message.startswith("v1: data/markdown/index.jsonl is in neither the local DVC cache")
    assert "dvc fetch" in message and "dvc push" in message and "\n" not in message


def test_bad_revisions_fail_in_one_line(releases: Releases, tmp_path: Path) -> None:
    with pytest.raises(DiffInputError, match="unknown git revision 'v9'"):
        resolve_revisions(releases.repo, "v9", None)
    bare = tmp_path / "bare"
    bare.mkdir()
    run_tool(bare, "git", "init", "-q")
    (bare / "README").write_text("docs\n")
    run_tool(bare, "git", "add", "README")
    run_tool(bare, "git", "commit", "-q", "-m", "start")
    with pytest.raises(DiffInputError, match="no git tag to compare with"):
        resolve_revisions(bare, None, None)
    with pytest.raises(DiffInputError, match=r"HEAD: no dvc\.lock at this revision"):
        resolve_revisions(bare, "HEAD", None)


def test_the_command_prints_one_error_line(releases: Releases) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows.diff", "v9"],
        cwd=releases.repo,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(releases.repo)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: unknown git revision 'v9': give a tag, branch or commit (`git tag`, `git log`)"
    ]


def test_the_flow_writes_the_three_files_and_an_artifact(
    releases: Releases, prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.diff import diff_flow

    paths = diff_flow(releases.repo, "v1", "v2", SHRINK_THRESHOLD, tmp_path, 25)
    assert sorted(p.name for p in paths.values()) == ["v1..v2.html", "v1..v2.json", "v1..v2.md"]
    markdown = paths["md"].read_text()
    assert "# Release diff: v1 → v2" in markdown and "tuning.html" in markdown
    where = ArtifactFilter(key=ArtifactFilterKey(any_=["release-diff"]))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=where)
    assert artifacts and "Release diff: v1 → v2" in str(artifacts[-1].data)
