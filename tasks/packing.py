"""Packing tokenized documents into fixed-length training sequences, and the shards that
carry them from the datasets stage to the CPT trainer.

Each document is its tokens followed by one EOS. Documents go into rows of `seq_len` tokens in
order, whole where they fit. When the next document does not fit the row's gap, a few later
documents that do fit are tried first (`lookahead`); a gap still left is padded only when it is
small (at most `max_pad_fraction` of the row) and the document would fit a fresh row whole;
otherwise the document starts in the gap and continues in the next row. Documents longer than a
row are always continued. So every row but the last is exactly `seq_len` tokens with at most
`max_pad_fraction` padding; the last row is as long as what is left, never padded, and runs as
is (micro-batches of long sequences hold one row).

Each row records its segments (document, offset in the document, length; document -1 is
padding), so training can reset positions and mask attention at document boundaries.
"""

from __future__ import annotations

import json
import shutil
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io import write_json_atomic

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
class PackStats:
    seq_len: int
    rows: int
    real_tokens: int  # document tokens plus their EOS
    pad_tokens: int
    slots: int  # tokens the trainer computes on: every row's length, padding included
    efficiency: float  # real_tokens / slots
    documents: int
    documents_whole: int  # in one row
    documents_split: int  # continued across rows
    documents_moved: int  # placed ahead of an earlier document to fill a gap


class RowBuilder:
    """The rows so far and the one being filled."""

    def __init__(self, seq_len: int, pad_id: int) -> None:
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.rows: list[PackedRow] = []
        self.row = PackedRow()

    @property
    def space(self) -> int:
        return self.seq_len - len(self.row.input_ids)

    def add(self, doc: int, tokens: Sequence[int], start: int, length: int) -> None:
        self.row.input_ids.extend(tokens[start : start + length])
        self.row.segments.append(Segment(doc, start, length))
        if self.space == 0:
            self.close()

    def pad(self) -> None:
        gap = self.space
        self.row.input_ids.extend([self.pad_id] * gap)
        self.row.segments.append(Segment(PAD_DOC, 0, gap))
        self.close()

    def close(self) -> None:
        if self.row.input_ids:
            self.rows.append(self.row)
        self.row = PackedRow()


def with_eos(docs: Sequence[Sequence[int]], eos_id: int) -> list[list[int]]:
    return [[*d, eos_id] for d in docs]


def find_filler(streams: list[list[int]], pending: deque[int], space: int, window: int) -> int:
    """The first of the next `window` pending documents (after the head) that fits the gap."""
    for k in range(1, min(window + 1, len(pending))):
        if len(streams[pending[k]]) <= space:
            return k
    return -1


def pack_documents(
    docs: Sequence[Sequence[int]],
    *,
    seq_len: int,
    eos_id: int,
    pad_id: int,
    max_pad_fraction: float = 0.02,
    lookahead: int = 8,
) -> tuple[list[PackedRow], PackStats]:
    """Rows of at most seq_len tokens holding every document (+ EOS) exactly once."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    streams = with_eos(docs, eos_id)
    out = RowBuilder(seq_len, pad_id)
    pending = deque(range(len(streams)))
    max_gap = int(max_pad_fraction * seq_len)
    moved = split = 0
    while pending:
        head = pending[0]
        n = len(streams[head])
        if n <= out.space:
            out.add(pending.popleft(), streams[head], 0, n)
            continue
        k = find_filler(streams, pending, out.space, lookahead)
        if k > 0:
            doc = pending[k]
            del pending[k]
            out.add(doc, streams[doc], 0, len(streams[doc]))
            moved += 1
        elif n <= seq_len and out.space <= max_gap:
            out.pad()
        else:
            pending.popleft()
            split += 1
            start = 0
            while start < n:
                take = min(out.space, n - start)
                out.add(head, streams[head], start, take)
                start += take
    out.close()
    return out.rows, summarize_rows(out.rows, seq_len, len(streams), split, moved)


def summarize_rows(
    rows: Sequence[PackedRow], seq_len: int, documents: int, split: int, moved: int
) -> PackStats:
    pad = sum(s.length for r in rows for s in r.segments if s.doc == PAD_DOC)
    slots = sum(len(r.input_ids) for r in rows)
    real = slots - pad
    return PackStats(
        seq_len=seq_len,
        rows=len(rows),
        real_tokens=real,
        pad_tokens=pad,
        slots=slots,
        efficiency=round(real / slots, 6) if slots else 1.0,
        documents=documents,
        documents_whole=documents - split,
        documents_split=split,
        documents_moved=moved,
    )


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
    tmp = phase_dir.with_name(f".{phase_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards = []
    for n, first in enumerate(range(0, len(rows), shard_rows)):
        name = f"shard-{n:05d}.parquet"
        pq.write_table(render_table(rows[first : first + shard_rows]), tmp / name)
        shards.append(name)
    meta = PhaseMeta(**{**asdict(meta), "shards": shards, "rows": len(rows)})
    write_json_atomic(tmp / "meta.json", asdict(meta))
    shutil.rmtree(phase_dir, ignore_errors=True)
    tmp.rename(phase_dir)
    return meta


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
