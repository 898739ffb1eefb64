"""Packing documents into training rows: nothing lost or duplicated, boundaries where
documents end, efficiency computed from what was written, and shards read back intact, the
same bytes whether written from int32 document arrays (as the datasets stage does) or from
rows of Python lists."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.packed import (
    PAD_DOC,
    TOKEN_DTYPE,
    PackedRow,
    PhaseMeta,
    read_phase_meta,
    read_phase_rows,
    write_phase,
)
from tasks.datasets.packing import layout_documents, pack_documents, write_packed_phase

EOS, PAD = 0, 1


def make_docs(lengths: list[int]) -> list[list[int]]:
    """Distinct token values per document and position, so any loss or copy shows."""
    return [[1000 * (d + 1) + i for i in range(n)] for d, n in enumerate(lengths)]


def reassemble(rows: list[PackedRow], n_docs: int) -> list[list[int]]:
    pieces: dict[int, list[tuple[int, list[int]]]] = {d: [] for d in range(n_docs)}
    for row in rows:
        offset = 0
        for seg in row.segments:
            tokens = row.input_ids[offset : offset + seg.length]
            offset += seg.length
            if seg.doc == PAD_DOC:
                assert tokens == [PAD] * seg.length
            else:
                pieces[seg.doc].append((seg.start, tokens))
        assert offset == len(row.input_ids)
    out = []
    for d in range(n_docs):
        parts = sorted(pieces[d])
        starts = [s for s, _ in parts]
        lengths = [len(t) for _, t in parts]
        # pieces tile the document: each starts where the previous ended
        assert starts == [sum(lengths[:i]) for i in range(len(parts))]
        out.append([tok for _, t in parts for tok in t])
    return out


lengths_st = st.lists(st.integers(0, 300), min_size=0, max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    lengths=lengths_st,
    seq_len=st.integers(8, 256),
    pad_fraction=st.sampled_from([0.0, 0.02, 0.1, 0.5]),
    lookahead=st.integers(0, 4),
)
def test_every_token_once_rows_full_and_efficiency_exact(
    lengths: list[int], seq_len: int, pad_fraction: float, lookahead: int
) -> None:
    docs = make_docs(lengths)
    rows, stats = pack_documents(
        docs,
        seq_len=seq_len,
        eos_id=EOS,
        pad_id=PAD,
        max_pad_fraction=pad_fraction,
        lookahead=lookahead,
    )
    assert reassemble(rows, len(docs)) == [[*d, EOS] for d in docs]
    assert all(len(r.input_ids) == seq_len for r in rows[:-1])
    assert not rows or 0 < len(rows[-1].input_ids) <= seq_len
    assert not rows or all(s.doc != PAD_DOC for s in rows[-1].segments)
    real = sum(lengths) + len(lengths)
    pads = sum(s.length for r in rows for s in r.segments if s.doc == PAD_DOC)
    assert stats.real_tokens == real and stats.pad_tokens == pads
    assert stats.slots == real + pads == sum(len(r.input_ids) for r in rows)
    # padding only closes a row whose gap was within the allowed fraction
    for row in rows:
        gap = sum(s.length for s in row.segments if s.doc == PAD_DOC)
        assert gap <= int(pad_fraction * seq_len)
    if rows:
        assert stats.efficiency >= 1 - pad_fraction - 1e-9


def test_documents_stay_whole_and_in_order_when_they_fit() -> None:
    rows, stats = pack_documents(
        make_docs([3, 3, 3, 3]), seq_len=8, eos_id=EOS, pad_id=PAD, max_pad_fraction=0.25
    )
    # 4-token streams: two per row, in order, boundaries at 4 and 8
    assert [[s.doc for s in r.segments] for r in rows] == [[0, 1], [2, 3]]
    assert [[s.length for s in r.segments] for r in rows] == [[4, 4], [4, 4]]
    assert stats.documents_whole == 4 and stats.documents_split == 0
    assert stats.efficiency == 1.0


def test_small_gap_is_padded_but_large_gap_is_filled_by_continuing_the_document() -> None:
    docs = make_docs([6, 6])  # 7-token streams in rows of 8
    padded, stats = pack_documents(docs, seq_len=8, eos_id=EOS, pad_id=PAD, max_pad_fraction=0.2)
    assert [[s.doc for s in r.segments] for r in padded] == [[0, PAD_DOC], [1]]
    assert stats.pad_tokens == 1 and stats.documents_split == 0
    assert stats.efficiency == round(14 / 15, 6)
    split, stats = pack_documents(docs, seq_len=8, eos_id=EOS, pad_id=PAD, max_pad_fraction=0.0)
    assert [[(s.doc, s.start, s.length) for s in r.segments] for r in split] == [
        [(0, 0, 7), (1, 0, 1)],
        [(1, 1, 6)],
    ]
    assert stats.documents_split == 1 and stats.pad_tokens == 0


def test_a_later_document_fills_a_gap_the_next_one_does_not_fit() -> None:
    docs = make_docs([4, 6, 1])  # streams 5, 7, 2 in rows of 8
    rows, stats = pack_documents(
        docs, seq_len=8, eos_id=EOS, pad_id=PAD, max_pad_fraction=0.0, lookahead=2
    )
    assert [[s.doc for s in r.segments] for r in rows] == [[0, 2, 1], [1]]
    assert stats.documents_moved == 1


def test_shards_round_trip(tmp_path: Path) -> None:
    rows, stats = pack_documents(make_docs([50, 7, 300, 12]), seq_len=64, eos_id=EOS, pad_id=PAD)
    meta = PhaseMeta("short", 64, EOS, PAD, "test", 0, [], {"efficiency": stats.efficiency})
    written = write_phase(tmp_path / "short", rows, meta, shard_rows=2)
    assert written.rows == len(rows) and len(written.shards) == (len(rows) + 1) // 2
    assert read_phase_meta(tmp_path / "short") == written
    assert list(read_phase_rows(tmp_path / "short")) == rows
    # rewriting replaces the folder whole: no stale shard survives
    write_phase(tmp_path / "short", rows[:1], meta, shard_rows=2)
    assert sorted(p.name for p in (tmp_path / "short").iterdir()) == [
        "meta.json",
        "shard-00000.parquet",
    ]


def render_rows_as_lists(docs: list[list[int]], seq_len: int, lookahead: int) -> list[PackedRow]:
    """The rows of the layout the straightforward way: every document copied with its EOS,
    each row's tokens a list of its segments' slices."""
    layout, _ = layout_documents(docs, seq_len=seq_len, max_pad_fraction=0.1, lookahead=lookahead)
    streams = [[*d, EOS] for d in docs]
    rows = []
    for segments in layout:
        ids: list[int] = []
        for s in segments:
            ids += [PAD] * s.length if s.doc == PAD_DOC else streams[s.doc][s.start :][: s.length]
        rows.append(PackedRow(ids, list(segments)))
    return rows


@settings(max_examples=60, deadline=None)
@given(
    lengths=lengths_st,
    seq_len=st.integers(8, 256),
    lookahead=st.integers(0, 4),
    shard_rows=st.integers(1, 5),
)
def test_shards_written_from_int32_documents_are_the_bytes_of_rows_written_as_lists(
    lengths: list[int], seq_len: int, lookahead: int, shard_rows: int
) -> None:
    # ids up to the top of int32, so a narrower or sign-changing copy would show
    docs = [[2**31 - 1 - t for t in doc] for doc in make_docs(lengths)]
    arrays = [np.array(d, dtype=TOKEN_DTYPE) for d in docs]
    layout, stats = layout_documents(
        arrays, seq_len=seq_len, max_pad_fraction=0.1, lookahead=lookahead
    )
    expected = render_rows_as_lists(docs, seq_len, lookahead)
    meta = PhaseMeta("p", seq_len, EOS, PAD, "test", 0, [], {"rows": stats.rows})
    with tempfile.TemporaryDirectory() as tmp:
        lists = write_phase(Path(tmp) / "lists", expected, meta, shard_rows)
        written = write_packed_phase(Path(tmp) / "arrays", arrays, layout, meta, shard_rows)
        assert written == lists and written.rows == len(expected)
        for name in [*written.shards, "meta.json"]:
            assert (Path(tmp) / "arrays" / name).read_bytes() == (
                Path(tmp) / "lists" / name
            ).read_bytes()
        assert list(read_phase_rows(Path(tmp) / "arrays")) == expected
