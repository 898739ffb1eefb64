"""The packed-row shards that carry tokens from the datasets stage to the CPT trainer:
data/cpt/<phase>/shard-NNNNN.parquet plus meta.json.

Each row records its segments (document, offset in the document, length; document -1 is
padding), so training can reset positions and mask attention at document boundaries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.io import replace_folder, write_json_atomic

PAD_DOC = -1


@dataclass(frozen=True)
class Segment:
    doc: int  # index into the packed document list; PAD_DOC for padding
    start: int  # offset of this piece in the document's tokens (EOS included at the end)
    length: int


@dataclass
class PackedRow:
    input_ids: list[int] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class PhaseMeta:
    """data/cpt/<phase>/meta.json: what the trainer needs besides the rows."""

    phase: str
    seq_len: int
    eos_id: int
    pad_id: int
    tokenizer: str
    rows: int
    shards: list[str]
    stats: dict[str, float | int]


SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("segment_docs", pa.list_(pa.int32())),
        ("segment_starts", pa.list_(pa.int32())),
        ("segment_lengths", pa.list_(pa.int32())),
    ]
)


def render_table(rows: Sequence[PackedRow]) -> pa.Table:
    return pa.table(
        {
            "input_ids": [r.input_ids for r in rows],
            "segment_docs": [[s.doc for s in r.segments] for r in rows],
            "segment_starts": [[s.start for s in r.segments] for r in rows],
            "segment_lengths": [[s.length for s in r.segments] for r in rows],
        },
        schema=SCHEMA,
    )


def write_phase(
    phase_dir: Path, rows: Sequence[PackedRow], meta: PhaseMeta, shard_rows: int
) -> PhaseMeta:
    """Shards and meta.json into a fresh folder that replaces phase_dir in one rename, so a
    killed run leaves the previous phase or the new one, never a mix."""
    starts = range(0, len(rows), shard_rows)
    shards = [f"shard-{n:05d}.parquet" for n in range(len(starts))]
    written = PhaseMeta(**{**asdict(meta), "shards": shards, "rows": len(rows)})

    def fill(folder: Path) -> None:
        for name, first in zip(shards, starts, strict=True):
            pq.write_table(render_table(rows[first : first + shard_rows]), folder / name)
        write_json_atomic(folder / "meta.json", asdict(written))

    replace_folder(phase_dir, fill)
    return written


def read_phase_meta(phase_dir: Path) -> PhaseMeta:
    try:
        raw = json.loads((phase_dir / "meta.json").read_text("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{phase_dir}/meta.json not found: run `dvc repro datasets` first"
        ) from None
    return PhaseMeta(**raw)


def read_phase_rows(phase_dir: Path) -> Iterator[PackedRow]:
    """The packed rows of one phase in order, as the datasets stage wrote them."""
    for name in read_phase_meta(phase_dir).shards:
        table = pq.read_table(phase_dir / name, schema=SCHEMA).to_pydict()
        for ids, docs, starts, lengths in zip(
            table["input_ids"],
            table["segment_docs"],
            table["segment_starts"],
            table["segment_lengths"],
            strict=True,
        ):
            segments = [Segment(*s) for s in zip(docs, starts, lengths, strict=True)]
            yield PackedRow(list(ids), segments)
