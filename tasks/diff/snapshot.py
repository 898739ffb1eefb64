"""One version's records, as the diff needs them: the crawl manifest and exclusions, the
markdown index with each page file's hash (bodies are read only for pages that differ), the
Q/A pairs and triples, the stage reports its dvc.lock names, and its params.

Rows are read as plain mappings, not validated records: an older release may predate a field
added since, and a diff must still read it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from tasks.core.params import PathsParams
from tasks.diff.versions import WORKSPACE, DiffInputError, VersionReader

Row = dict[str, Any]


@dataclass
class Snapshot:
    label: str
    params: dict[str, Any]
    manifest: list[Row]
    crawl_exclusions: list[Row]
    pages: list[Row]  # the markdown index, in reading order
    page_hashes: dict[str, str]  # page id -> md5 of its .md file
    markdown_exclusions: list[Row]
    pairs: list[Row]
    triples: list[Row]
    reports: dict[str, dict[str, Any]]  # report name (crawl, cpt_short, ...) -> its JSON
    markdown_dir: str
    bodies: dict[str, str] = field(default_factory=dict)


def parse_jsonl(data: bytes | None, where: str) -> list[Row]:
    rows = []
    for number, line in enumerate((data or b"").decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}, line {number}: not valid JSON ({exc.msg})") from None
    return rows


def parse_paths(params: dict[str, Any]) -> PathsParams:
    """The version's `paths:` group; keys this code does not know are ignored."""
    given = params.get("paths") or {}
    return PathsParams(**{k: v for k, v in given.items() if k in PathsParams.model_fields})


def list_report_files(lock: dict[str, Any], reports_dir: str) -> list[str]:
    """The JSON files under the reports folder that dvc.lock records: the stage reports."""
    found = []
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            path = str(out.get("path", ""))
            if path.startswith(reports_dir.rstrip("/") + "/") and path.endswith(".json"):
                found.append(path)
    return sorted(set(found))


def report_name(path: str) -> str:
    return path.rsplit("/", 1)[-1].removesuffix(".json")


def read_yaml(reader: VersionReader, path: str) -> dict[str, Any]:
    data = reader.read_bytes(path)
    loaded = yaml.safe_load(data) if data else None
    return loaded if isinstance(loaded, dict) else {}


def read_rows(reader: VersionReader, path: str) -> list[Row]:
    return parse_jsonl(reader.read_bytes(path), f"{reader.label}:{path}")


def read_reports(reader: VersionReader, reports_dir: str) -> dict[str, dict[str, Any]]:
    lock = read_yaml(reader, "dvc.lock")
    reports = {}
    for path in list_report_files(lock, reports_dir):
        data = reader.read_bytes(path)
        if data:
            reports[report_name(path)] = json.loads(data)
    return reports


def require_index(reader: VersionReader, md: str) -> None:
    """Without the markdown stage's index there are no pages to compare: a workspace not yet
    checked out or built, or a revision whose dvc.lock has no markdown output."""
    if reader.read_bytes(f"{md}/index.jsonl") is None:
        fix = "`dvc checkout` or `dvc repro`" if reader.label == WORKSPACE else "a later revision"
        raise DiffInputError(f"{reader.label}: no {md}/index.jsonl (the pages to compare); {fix}")


def read_snapshot(reader: VersionReader) -> Snapshot:
    params = read_yaml(reader, "params.yaml")
    paths = parse_paths(params)
    md = str(paths.markdown)
    require_index(reader, md)
    return Snapshot(
        label=reader.label,
        params=params,
        manifest=read_rows(reader, f"{paths.raw}/manifest.jsonl"),
        crawl_exclusions=read_rows(reader, f"{paths.raw}/exclusions.jsonl"),
        pages=read_rows(reader, f"{md}/index.jsonl"),
        page_hashes={
            name.removesuffix(".md"): md5
            for name, md5 in reader.hash_files(md).items()
            if name.endswith(".md")
        },
        markdown_exclusions=read_rows(reader, f"{md}/exclusions.jsonl"),
        pairs=read_rows(reader, f"{paths.qa}/pairs.jsonl"),
        triples=read_rows(reader, f"{paths.pref}/triples.jsonl"),
        reports=read_reports(reader, str(paths.reports)),
        markdown_dir=md,
    )


def split_body(text: str) -> str:
    """A page file's body without its front matter (the layout of tasks.core.documents, read
    without validating the front matter, which older releases may spell differently)."""
    end = text.find("\n---\n", 3) if text.startswith("---\n") else -1
    body = text[end + 5 :] if end >= 0 else text
    return body.removeprefix("\n").removesuffix("\n")


def read_bodies(reader: VersionReader, snapshot: Snapshot, page_ids: set[str]) -> dict[str, str]:
    """The Markdown bodies (without front matter) of the given pages, kept on the snapshot."""
    for page_id in sorted(page_ids - set(snapshot.bodies)):
        data = reader.read_bytes(f"{snapshot.markdown_dir}/{page_id}.md")
        if data is not None:
            snapshot.bodies[page_id] = split_body(data.decode("utf-8"))
    return snapshot.bodies
