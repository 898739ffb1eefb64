"""Micro-batches for the CPT trainer from the packed rows of one phase (tasks.datasets.packing).

The rows are read in the order the datasets stage packed them (its curriculum order), never
shuffled. The data position is one counter, the cursor: the number of micro-batches taken so
far, the same on every rank; micro-batch `cursor` of data-parallel replica d holds rows
(cursor * replicas + d) * micro_batch ... + micro_batch - 1, wrapping around for later epochs.
A checkpoint stores the cursor, so a resumed run reads exactly the rows it would have read.

Labels follow transformers' unshifted convention; padding never has one. With attention
stopped at document boundaries, positions restart at each segment (transformers then builds
the block-diagonal causal mask from the position ids) and the first token of each segment has
no label, since nothing it may attend to predicts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks.core.packed import PAD_DOC, SCHEMA, PackedRow, Segment, read_phase_meta
from tasks.cpt.zigzag import IGNORE_INDEX


class PackedRows:
    """The rows of one phase, kept as Arrow columns (int32) and turned into lists on demand."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> PackedRow:
        row = self.table.slice(index, 1).to_pylist()[0]
        segments = [
            Segment(*s)
            for s in zip(
                row["segment_docs"], row["segment_starts"], row["segment_lengths"], strict=True
            )
        ]
        return PackedRow(row["input_ids"], segments)


def read_packed_rows(phase_dir: Path) -> PackedRows:
    meta = read_phase_meta(phase_dir)
    tables = [pq.read_table(phase_dir / name, schema=SCHEMA) for name in meta.shards]
    if not tables or sum(t.num_rows for t in tables) == 0:
        raise ValueError(f"{phase_dir}: the phase has no packed rows")
    return PackedRows(pa.concat_tables(tables).combine_chunks())


def micro_batch_rows(
    cursor: int, micro_batch: int, replica: int, replicas: int, n_rows: int
) -> list[int]:
    """Indices of the rows in micro-batch `cursor` of data-parallel replica `replica`."""
    first = (cursor * replicas + replica) * micro_batch
    return [(first + j) % n_rows for j in range(micro_batch)]


@dataclass(frozen=True)
class MicroBatch:
    input_ids: torch.Tensor  # (batch, length) int64
    labels: torch.Tensor  # unshifted targets, IGNORE_INDEX where none
    position_ids: torch.Tensor  # (batch, length)
    tokens: int  # slots computed on, padding included
    label_tokens: int  # tokens that are someone's target after the shift


def padded_length(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def render_labels(row: PackedRow, restart_at_documents: bool) -> list[int]:
    labels: list[int] = []
    for seg in row.segments:
        piece = row.input_ids[len(labels) : len(labels) + seg.length]
        if seg.doc == PAD_DOC:
            labels.extend([IGNORE_INDEX] * seg.length)
        elif restart_at_documents:
            labels.extend([IGNORE_INDEX, *piece[1:]])
        else:
            labels.extend(piece)
    return labels


def render_positions(row: PackedRow, restart_at_documents: bool) -> list[int]:
    if not restart_at_documents:
        return list(range(len(row.input_ids)))
    return [p for seg in row.segments for p in range(seg.length)]


def pad_row(row: PackedRow, length: int, pad_id: int) -> PackedRow:
    gap = length - len(row.input_ids)
    if gap <= 0:
        return row
    return PackedRow([*row.input_ids, *[pad_id] * gap], [*row.segments, Segment(PAD_DOC, 0, gap)])


def collate_rows(
    rows: Sequence[PackedRow],
    *,
    pad_id: int,
    multiple: int = 1,
    restart_at_documents: bool,
) -> MicroBatch:
    """One micro-batch; rows shorter than the longest (the phase's last) are padded on the right,
    and the length is padded up to `multiple` (2 * sequence_parallel for the zigzag split)."""
    length = padded_length(max(len(r.input_ids) for r in rows), multiple)
    padded = [pad_row(r, length, pad_id) for r in rows]
    labels = torch.tensor([render_labels(r, restart_at_documents) for r in padded])
    return MicroBatch(
        input_ids=torch.tensor([r.input_ids for r in padded], dtype=torch.long),
        labels=labels,
        position_ids=torch.tensor([render_positions(r, restart_at_documents) for r in padded]),
        tokens=length * len(rows),
        label_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()),
    )
