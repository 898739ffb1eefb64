"""A folder of small JSON results keyed by the hash of everything that decides them (model
hash, prompt, settings): a rerun with nothing changed reads them instead of running a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.core.io import write_json_atomic
from tasks.core.records import text_id


class ResultCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path(key).read_text("utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            self.misses += 1
            return None
        self.hits += 1
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        write_json_atomic(self.path(key), value)


def result_key(kind: str, *parts: object) -> str:
    return text_id(kind, *(json.dumps(p, sort_keys=True, default=str) for p in parts))
