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

Packing decides only where each piece goes (a row's segments: document, offset, length), from
the documents' lengths. Tokens stay in the documents, one int32 array each, until a shard is
written: then that shard's rows are copied out of them, the EOS put at each document's end on
the way, so neither the corpus with its EOS nor a phase's rows is ever held a second time.

The rows and their shard format live in tasks.core.packed, which the CPT trainer reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks.core.packed import (
    PAD_DOC,
    TOKEN_DTYPE,
    PackedRow,
    PhaseMeta,
    Segment,
    TokenIds,
    render_columns,
    write_phase_tables,
)


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
    """The rows so far, as segments, and the one being filled. Rows hold no tokens: they are
    copied out of the documents when a shard is written (render_tokens)."""

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len
        self.rows: list[list[Segment]] = []
        self.row: list[Segment] = []
        self.filled = 0

    @property
    def space(self) -> int:
        return self.seq_len - self.filled

    def add(self, doc: int, start: int, length: int) -> None:
        self.row.append(Segment(doc, start, length))
        self.filled += length
        if self.space == 0:
            self.close()

    def pad(self) -> None:
        gap = self.space
        self.row.append(Segment(PAD_DOC, 0, gap))
        self.filled += gap
        self.close()

    def close(self) -> None:
        if self.filled:
            self.rows.append(self.row)
        self.row, self.filled = [], 0


def find_filler(streams: Sequence[int], pending: deque[int], space: int, window: int) -> int:
    """The first of the next `window` pending documents (after the head) whose stream (tokens
    and EOS) fits the gap."""
    for k in range(1, min(window + 1, len(pending))):
        if streams[pending[k]] <= space:
            return k
    return -1


def layout_documents(
    docs: Sequence[Sized],
    *,
    seq_len: int,
    max_pad_fraction: float = 0.02,
    lookahead: int = 8,
) -> tuple[list[list[Segment]], PackStats]:
    """Each row's segments, for rows of at most seq_len tokens holding every document (+ EOS)
    exactly once; only the documents' lengths matter."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    streams = [len(d) + 1 for d in docs]
    out = RowBuilder(seq_len)
    pending = deque(range(len(streams)))
    max_gap = int(max_pad_fraction * seq_len)
    moved = split = 0
    while pending:
        head = pending[0]
        n = streams[head]
        if n <= out.space:
            out.add(pending.popleft(), 0, n)
            continue
        k = find_filler(streams, pending, out.space, lookahead)
        if k > 0:
            doc = pending[k]
            del pending[k]
            out.add(doc, 0, streams[doc])
            moved += 1
        elif n <= seq_len and out.space <= max_gap:
            out.pad()
        else:
            pending.popleft()
            split += 1
            start = 0
            while start < n:
                take = min(out.space, n - start)
                out.add(head, start, take)
                start += take
    out.close()
    return out.rows, summarize_rows(out.rows, seq_len, len(streams), split, moved)


def render_tokens(
    docs: Sequence[Sequence[int] | TokenIds],
    rows: Sequence[Sequence[Segment]],
    eos_id: int,
    pad_id: int,
) -> TokenIds:
    """The rows' tokens end to end, copied out of the documents. Documents are stored without
    their EOS: a segment that runs one token past its document's end ends with the EOS."""
    out = np.empty(sum(s.length for row in rows for s in row), dtype=TOKEN_DTYPE)
    pos = 0
    for row in rows:
        for seg in row:
            end = pos + seg.length
            if seg.doc == PAD_DOC:
                out[pos:end] = pad_id
            else:
                body = docs[seg.doc][seg.start : seg.start + seg.length]
                out[pos : pos + len(body)] = body
                if len(body) < seg.length:
                    out[end - 1] = eos_id
            pos = end
    return out


def pack_documents(
    docs: Sequence[Sequence[int] | TokenIds],
    *,
    seq_len: int,
    eos_id: int,
    pad_id: int,
    max_pad_fraction: float = 0.02,
    lookahead: int = 8,
) -> tuple[list[PackedRow], PackStats]:
    """Rows of at most seq_len tokens holding every document (+ EOS) exactly once, each row's
    tokens as a list (as read_phase_rows gives them back). The datasets stage itself writes
    from the layout (write_packed_phase) and never holds a phase's rows as lists."""
    layout, stats = layout_documents(
        docs, seq_len=seq_len, max_pad_fraction=max_pad_fraction, lookahead=lookahead
    )
    rows = [PackedRow(render_tokens(docs, [row], eos_id, pad_id).tolist(), row) for row in layout]
    return rows, stats


def write_packed_phase(
    phase_dir: Path,
    docs: Sequence[TokenIds],
    layout: Sequence[Sequence[Segment]],
    meta: PhaseMeta,
    shard_rows: int,
) -> PhaseMeta:
    """The phase's shards, each shard's tokens copied out of the documents as it is written,
    so only one shard's tokens exist beside the documents at a time."""

    def render_shard(first: int, stop: int) -> pa.Table:
        rows = layout[first:stop]
        return render_columns(render_tokens(docs, rows, meta.eos_id, meta.pad_id), rows)

    return write_phase_tables(phase_dir, len(layout), render_shard, meta, shard_rows)


def summarize_rows(
    rows: Sequence[Sequence[Segment]], seq_len: int, documents: int, split: int, moved: int
) -> PackStats:
    pad = sum(s.length for row in rows for s in row if s.doc == PAD_DOC)
    slots = sum(s.length for row in rows for s in row)
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
