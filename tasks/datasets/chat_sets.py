"""The SFT and preference sets in LlamaFactory's layout: sharegpt rows plus the
dataset_info.json that tells LlamaFactory how to read each file.

A folder with dataset_info.json is what LlamaFactory calls a `dataset_dir`; the sft and orpo
stages point their generated YAML at data/sft and data/orpo and name the sets listed here.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.core.params import CompetencyMix, GeneralSftParams, OrpoBalance
from tasks.core.records import (
    Competency,
    PreferenceTriple,
    QAPair,
)

SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
}


def render_sft_row(pair: QAPair, system: str) -> dict[str, Any]:
    return {
        "conversations": [
            {"from": "human", "value": pair.question},
            {"from": "gpt", "value": pair.answer},
        ],
        "system": system,
        "id": pair.id,
        "url": pair.url,
    }


def render_pref_row(triple: PreferenceTriple, system: str) -> dict[str, Any]:
    return {
        "conversations": [{"from": "human", "value": triple.prompt}],
        "chosen": {"from": "gpt", "value": triple.chosen},
        "rejected": {"from": "gpt", "value": triple.rejected},
        "system": system,
        "id": triple.id,
        "kind": triple.kind.value,
        "competency": triple.competency.value,
        "url": triple.url,
    }


def sft_info(file_name: str) -> dict[str, Any]:
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": SHAREGPT_COLUMNS,
        "tags": SHAREGPT_TAGS,
    }


def pref_info(file_name: str) -> dict[str, Any]:
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {**SHAREGPT_COLUMNS, "chosen": "chosen", "rejected": "rejected"},
        "tags": SHAREGPT_TAGS,
    }


def general_info(params: GeneralSftParams, file_name: str | None) -> dict[str, Any]:
    """The off-the-shelf set's entry: a copied local file, or the hub id LlamaFactory fetches."""
    entry: dict[str, Any] = {"formatting": params.formatting, "columns": dict(params.columns)}
    if file_name is not None:
        entry["file_name"] = file_name
    else:
        entry["hf_hub_url"] = params.hub_id
    return entry


def read_general_sft(path: Path) -> list[dict[str, Any]]:
    """A local instruction set as LlamaFactory reads it: a JSON array or JSON lines."""
    if not path.is_file():
        raise FileNotFoundError(f"datasets.general_sft.file: {path} not found")
    text = path.read_text("utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else parse_json_lines(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"datasets.general_sft.file: {path} is not JSON or JSONL: {exc}") from exc
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"datasets.general_sft.file: {path} must hold JSON objects")
    return rows


def parse_json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sample_general(rows: list[dict[str, Any]], domain: int, ratio: float, seed: int) -> list:
    """As many general examples as make them `ratio` of the mix, drawn without replacement
    (all of them when the file has fewer)."""
    want = math.ceil(domain * ratio / (1 - ratio)) if ratio > 0 else 0
    if want >= len(rows):
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), want))
    return [rows[i] for i in picked]


def balance_orpo(
    triples: Sequence[PreferenceTriple], mix: CompetencyMix, mode: OrpoBalance, seed: int
) -> tuple[list[PreferenceTriple], list[PreferenceTriple]]:
    """The preference set under datasets.orpo_balance; returns (rows, dropped). The mix is
    what synth aims its competency tags at: by default no paid-for triple is thrown away to
    follow it more closely (on a small site that can leave ORPO nothing to train on)."""
    if mode == "drop":
        return balance_competencies(triples, mix)
    if mode == "upsample":
        return upsample_competencies(triples, mix, seed), []
    return list(triples), []


def balance_competencies(
    triples: Sequence[PreferenceTriple], mix: CompetencyMix
) -> tuple[list[PreferenceTriple], list[PreferenceTriple]]:
    """The largest subset whose competency shares follow the target mix (each tag's count
    rounded), keeping the first triples of each tag; returns (kept, dropped)."""
    shares = {Competency(k): v for k, v in mix.model_dump().items()}
    have = Counter(t.competency for t in triples)
    total = len(triples)
    while total > 0 and any(round(s * total) > have[c] for c, s in shares.items()):
        total -= 1
    quota = {c: round(s * total) for c, s in shares.items()}
    kept, dropped = [], []
    for triple in triples:
        if quota[triple.competency] > 0:
            quota[triple.competency] -= 1
            kept.append(triple)
        else:
            dropped.append(triple)
    return kept, dropped


def upsample_competencies(
    triples: Sequence[PreferenceTriple], mix: CompetencyMix, seed: int
) -> list[PreferenceTriple]:
    """Every triple, then copies of the under-represented competencies' triples until each
    tag's count is its share of the total (rounded). A tag's copies go round a seeded shuffle
    of its triples, so no triple is copied twice before all of them once. Tags without a
    share or without triples are left as they are: copies cannot bring them to the mix, and
    the other tags' shares are taken relative to each other."""
    by_tag: dict[Competency, list[PreferenceTriple]] = {}
    for triple in triples:
        by_tag.setdefault(triple.competency, []).append(triple)
    target = {Competency(k): v for k, v in mix.model_dump().items()}
    weights = {c: target[c] for c in Competency if target[c] > 0 and c in by_tag}
    shares = {c: w / sum(weights.values()) for c, w in weights.items()}
    total = sum(len(by_tag[c]) for c in shares)
    while any(round(s * total) < len(by_tag[c]) for c, s in shares.items()):
        total += 1
    rng = random.Random(seed)
    copies = []
    for tag, share in shares.items():
        pool = rng.sample(by_tag[tag], len(by_tag[tag]))
        copies += [pool[i % len(pool)] for i in range(round(share * total) - len(pool))]
    return [*triples, *copies]


def summarize_competencies(
    triples: Sequence[PreferenceTriple], mix: CompetencyMix
) -> dict[str, dict[str, float | int]]:
    """Per competency: its target share, the share it reached in the set, and its count."""
    have = Counter(t.competency.value for t in triples)
    return {
        tag: {
            "target": share,
            "achieved": round(have[tag] / len(triples), 4) if triples else 0.0,
            "count": have[tag],
        }
        for tag, share in mix.model_dump().items()
    }


def render_dataset_info(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return dict(sorted(entries.items()))
