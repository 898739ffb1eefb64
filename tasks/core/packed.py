"""The packed-row shards that carry tokens from the datasets stage to the CPT trainer:
data/cpt/<phase>/shard-NNNNN.parquet plus meta.json.

Each row records its segments (document, offset in the document, length; document -1 is
padding), so training can reset positions and mask attention at document boundaries.

Token ids are int32 (TOKEN_DTYPE) in the shards and, on the writing side, in memory: a shard's
table can be rendered from its rows' tokens as one array (render_columns) as well as from
PackedRow lists (render_table), the same bytes either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.io import replace_folder, write_json_atomic

PAD_DOC = -1
TOKEN_DTYPE = np.int32  # every tokenizer's vocabulary fits; a quarter of a Python int's size
TokenIds = npt.NDArray[np.int32]


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
        ("input_ids", pa.list_(pa.from_numpy_dtype(TOKEN_DTYPE))),
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


def render_columns(input_ids: TokenIds, rows: Sequence[Sequence[Segment]]) -> pa.Table:
    """The table render_table makes of the same rows, from their tokens end to end and each
    row's segments: the tokens go to Arrow as one array, never one Python int each."""
    lengths = np.array([sum(s.length for s in row) for row in rows], dtype=np.int64)
    if int(lengths.sum()) != len(input_ids):
        raise ValueError(f"{len(input_ids)} token ids for rows of {int(lengths.sum())} tokens")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()),  # raises rather than wraps past 2^31 tokens
        pa.array(np.asarray(input_ids, dtype=TOKEN_DTYPE)),
    )
    segments = {
        "segment_docs": [[s.doc for s in row] for row in rows],
        "segment_starts": [[s.start for s in row] for row in rows],
        "segment_lengths": [[s.length for s in row] for row in rows],
    }
    columns = [ids, *(pa.array(v, type=pa.list_(pa.int32())) for v in segments.values())]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def write_phase(
    phase_dir: Path, rows: Sequence[PackedRow], meta: PhaseMeta, shard_rows: int
) -> PhaseMeta:
    """Shards and meta.json into a fresh folder that replaces phase_dir in one rename, so a
    killed run leaves the previous phase or the new one, never a mix."""
    return write_phase_tables(
        phase_dir, len(rows), lambda first, stop: render_table(rows[first:stop]), meta, shard_rows
    )


def write_phase_tables(
    phase_dir: Path,
    n_rows: int,
    render_shard: Callable[[int, int], pa.Table],
    meta: PhaseMeta,
    shard_rows: int,
) -> PhaseMeta:
    """write_phase for rows that exist only one shard at a time: `render_shard(first, stop)`
    is the table of rows first..stop-1, rendered when its shard is written."""
    starts = range(0, n_rows, shard_rows)
    shards = [f"shard-{n:05d}.parquet" for n in range(len(starts))]
    written = PhaseMeta(**{**asdict(meta), "shards": shards, "rows": n_rows})

    def fill(folder: Path) -> None:
        for name, first in zip(shards, starts, strict=True):
            table = render_shard(first, min(first + shard_rows, n_rows))
            pq.write_table(table, folder / name)
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
