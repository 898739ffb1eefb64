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

The rows and their shard format live in tasks.core.packed, which the CPT trainer reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.core.packed import PAD_DOC, PackedRow, Segment


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
