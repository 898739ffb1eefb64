"""The datasets stage on synthetic pages: the held-out split cannot leak, duplicates of
held-out pages go with everything generated from them, PII is masked and counted, and the
sets are written in the layouts their readers expect."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.documents import read_pages
from tasks.core.io import read_jsonl, write_jsonl_atomic
from tasks.core.packed import PAD_DOC, TOKEN_DTYPE, read_phase_meta, read_phase_rows
from tasks.core.params import DatasetsParams, ParamsError, load_params
from tasks.core.records import DOMAIN_PREF, TripleKind
from tasks.core.tokens import resolve_tokenizer
from tasks.datasets.build import (
    EncodeWithTransformers,
    attach_generated,
    build_corpus,
    interleave,
    load_base_tokenizer,
    page_draw,
    render_page_text,
    split_by_size,
    split_pages,
)
from tests.support.datasets_inputs import (
    MIX,
    PHASES,
    WORDS,
    build,
    encode_words,
    page_body,
    training_text,
    write_inputs,
)


def test_nearest_neighbour_chain_takes_the_most_similar_left_and_the_lowest_index_on_ties() -> None:
    from tasks.datasets.build import chain_nearest

    # Small integers: every dot product exact, so ties are real ties.
    vectors = np.random.default_rng(0).integers(-3, 4, (40, 8)).astype(np.float32)
    vectors[[7, 21]] = vectors[3]
    order, left = [0], list(range(1, len(vectors)))
    while left:  # the definition, one candidate at a time
        sims = [float(vectors[i] @ vectors[order[-1]]) for i in left]
        order.append(left.pop(sims.index(max(sims))))
    assert chain_nearest(vectors) == order
    assert order.index(7) < order.index(21)


@settings(max_examples=25, deadline=None)
@given(
    n_pages=st.integers(1, 12),
    fraction=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9]),
    seed=st.integers(0, 1000),
)
def test_nothing_from_a_held_out_page_reaches_training(
    n_pages: int, fraction: float, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_inputs(Path(tmp), [page_body(n) for n in range(n_pages)])
        report = build(dirs, eval_fraction=fraction, split_seed=seed)
        held = [json.loads(line) for line in (dirs.eval / "pages.jsonl").read_text().splitlines()]
        held_n = {int(p["id"], 16) for p in held}
        assert held_n == {
            int(i, 16) for i in split_pages([f"{n:016x}" for n in range(n_pages)], fraction, seed)
        }
        text = training_text(dirs)
        for n in range(n_pages):
            marker = f"p{n}w"
            assert (marker in text) == (n not in held_n), f"page {n} held={n in held_n}"
        eval_qa = list(read_jsonl(dirs.eval / "qa.jsonl"))
        assert {int(q["page_id"], 16) for q in eval_qa} == held_n
        # every training token row holds only training pages' tokens
        train_tokens = set()
        for n in set(range(n_pages)) - held_n:
            train_tokens.update(*encode_words([page_body(n)]))
        for phase in PHASES:
            for row in read_phase_rows(dirs.cpt / phase.name):
                body = {t for t in row.input_ids if t > 1}
                held_tokens = (
                    set().union(*encode_words([page_body(n) for n in held_n])) if held_n else set()
                )
                assert not (body & held_tokens - train_tokens)
        assert report["pages"] == {
            "total": n_pages,
            "train": n_pages - len(held_n),
            "eval": len(held_n),
        }


def test_split_is_stable_when_pages_are_added() -> None:
    ids = [f"{n:016x}" for n in range(200)]
    before = split_pages(ids[:100], 0.2, 7)
    after = split_pages(ids, 0.2, 7)
    assert before == {i for i in after if i in ids[:100]}
    assert 20 <= len(after) <= 60


@settings(max_examples=60, deadline=None)
@given(
    n_pages=st.integers(1, 40),
    fraction=st.sampled_from([0.05, 0.15, 0.3]),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_held_out_pages_have_questions_whenever_two_pages_have_them(
    n_pages: int, fraction: float, seed: int, data: st.DataObject
) -> None:
    ids = [f"{n:016x}" for n in range(n_pages)]
    with_items = set(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    drawn = split_pages(ids, fraction, seed)
    held = split_pages(ids, fraction, seed, with_items)
    if len(ids) >= 2:
        assert held  # a small site still gets an eval set
    if len(drawn) < len(ids):
        assert len(held) < len(ids)  # and something still trains
    if len(with_items) >= 2 and len(drawn) < len(ids) - 1:
        assert held & with_items  # the held-out pages can be asked about
        if not drawn & with_items:
            assert len(with_items - held) >= 1  # and a page with questions still trains
    if with_items in (set(), set(ids)) or drawn & with_items:
        assert held == drawn  # the draw alone decides whenever it already can
    elif held != drawn:
        assert len(held - drawn) == 1  # one page with questions, chosen by its draw
    if any(page_draw(i, seed) < fraction for i in ids):
        assert drawn <= held  # drawn pages stay held out; only the one-page fallback moves


def test_a_small_sites_held_out_page_is_one_with_questions(tmp_path: Path) -> None:
    ids = [f"{n:016x}" for n in range(7)]
    seed = next(s for s in range(1000) if min(page_draw(i, s) for i in ids) >= 0.15)
    fallback = min(ids, key=lambda i: page_draw(i, seed))
    silent = {fallback, *sorted(ids, key=lambda i: page_draw(i, seed))[1:3]}
    dirs = write_inputs(tmp_path, [page_body(n) for n in range(7)])
    for name in ("qa/pairs.jsonl", "pref/triples.jsonl"):
        path = tmp_path / name
        rows = [r for r in read_jsonl(path) if r["page_id"] not in silent]
        write_jsonl_atomic(path, rows)
    report = build(dirs, eval_fraction=0.15, split_seed=seed, probe_fraction=0.0)
    chosen = min(set(ids) - silent, key=lambda i: page_draw(i, seed))
    held = [p["id"] for p in read_jsonl(dirs.eval / "pages.jsonl")]
    assert held == [chosen]
    assert report["split"]["held_out_for_items"] == [chosen]
    assert report["split"]["held_out_with_items"] == 1
    assert report["eval"]["pairs"] == 2 and report["eval"]["triples"] == len(TripleKind)
    assert f"p{int(chosen, 16)}w" not in training_text(dirs)
    trained = {d["id"] for d in read_jsonl(dirs.cpt / "documents.jsonl")}
    assert trained == set(ids) - {chosen}  # the page without questions trains


def test_training_page_duplicating_a_held_out_page_goes_with_its_qa(tmp_path: Path) -> None:
    bodies = [page_body(n) for n in range(6)]
    held = split_pages([f"{n:016x}" for n in range(6)], 0.3, 0)
    h = int(sorted(held)[0], 16)
    copy = next(n for n in range(6) if f"{n:016x}" not in held)
    bodies[copy] = bodies[h].replace("## Page", "## Copied page")
    dirs = write_inputs(tmp_path, bodies)
    report = build(dirs, eval_fraction=0.3, split_seed=0)
    assert report["dropped_by_reason"]["cpt"]["near_duplicate_of_eval"] == 1
    assert report["dropped_by_reason"]["sft"]["page_near_duplicate_of_eval"] == 2
    text = training_text(dirs)
    assert f"p{copy}w" not in text and f"p{h}w" not in text
    excluded = [e["id"] for e in read_jsonl(dirs.cpt / "exclusions.jsonl")]
    assert f"{copy:016x}" in excluded


def test_pii_is_masked_everywhere_and_counted(tmp_path: Path) -> None:
    bodies = [
        page_body(n) + " mail admin@corp-internal.io or call +1 415 555 0142" for n in range(3)
    ]
    dirs = write_inputs(tmp_path, bodies)
    report = build(dirs, eval_fraction=0.0, pii={"kinds": ["email", "phone"]})
    assert report["pii"]["pages"] == {"email": 3, "phone": 3}
    assert "admin@corp-internal.io" not in training_text(dirs)
    docs = list(read_jsonl(dirs.cpt / "documents.jsonl"))
    assert len(docs) == 3


def test_sets_are_in_llamafactory_layout_and_packed_rows_mark_documents(tmp_path: Path) -> None:
    dirs = write_inputs(tmp_path, [page_body(n, words=40 + 30 * n) for n in range(5)])
    report = build(dirs, eval_fraction=0.0)
    info = json.loads((dirs.sft / "dataset_info.json").read_text())
    assert info["docs_sft"]["formatting"] == "sharegpt"
    rows = json.loads((dirs.sft / info["docs_sft"]["file_name"]).read_text())
    assert len(rows) == 10 and rows[0]["conversations"][0]["from"] == "human"
    assert rows[0]["system"] == DatasetsParams().system_prompt
    pref_info = json.loads((dirs.orpo / "dataset_info.json").read_text())["docs_pref"]
    assert pref_info["ranking"] is True
    pref = json.loads((dirs.orpo / pref_info["file_name"]).read_text())
    assert pref and {"chosen", "rejected", "conversations"} <= set(pref[0])
    docs = list(read_jsonl(dirs.cpt / "documents.jsonl"))
    # the Q/A pairs follow their page's text in the CPT document
    assert [d["pairs"] for d in docs] == [2] * 5
    for phase in PHASES:
        meta = read_phase_meta(dirs.cpt / phase.name)
        rows_ = list(read_phase_rows(dirs.cpt / phase.name))
        assert meta.rows == len(rows_) == report["cpt"]["phases"][phase.name]["rows"]
        lengths = {}
        for row in rows_:
            offset = 0
            for seg in row.segments:
                if seg.doc != PAD_DOC:
                    lengths[seg.doc] = lengths.get(seg.doc, 0) + seg.length
                    # the last piece of a document ends with EOS
                    if seg.start + seg.length == docs[seg.doc]["tokens"] + 1:
                        assert row.input_ids[offset + seg.length - 1] == WORDS.eos_id
                offset += seg.length
        assert lengths == {i: d["tokens"] + 1 for i, d in enumerate(docs)}


def test_competency_balance_follows_the_target_mix_when_asked_to_drop(tmp_path: Path) -> None:
    dirs = write_inputs(tmp_path, [page_body(n) for n in range(20)])
    report = build(dirs, eval_fraction=0.0, orpo_balance="drop")
    orpo = report["orpo"]
    assert orpo["balance"] == "drop" and orpo["upsampled"] == 0
    assert orpo["dropped_for_balance"] == orpo["triples_in"] - orpo["triples"] > 0
    for tag, share in MIX.model_dump().items():
        assert abs(orpo["competency_mix"][tag]["count"] - share * orpo["triples"]) <= 1
    excluded = list(read_jsonl(dirs.orpo / "exclusions.jsonl"))
    assert len(excluded) == orpo["dropped_for_balance"]
    assert {e["reason"] for e in excluded} == {"competency_balance"}


def test_every_triple_is_kept_by_default_and_the_mix_reported(tmp_path: Path) -> None:
    dirs = write_inputs(tmp_path, [page_body(n) for n in range(20)])
    orpo = build(dirs, eval_fraction=0.0)["orpo"]
    assert orpo["balance"] == "keep"
    assert orpo["triples"] == orpo["triples_in"] > 0
    assert orpo["dropped_for_balance"] == orpo["upsampled"] == 0
    mix = orpo["competency_mix"]
    assert {tag: m["target"] for tag, m in mix.items()} == MIX.model_dump()
    assert sum(m["count"] for m in mix.values()) == orpo["triples"]
    assert all(m["achieved"] == round(m["count"] / orpo["triples"], 4) for m in mix.values())
    assert len(json.loads((dirs.orpo / f"{DOMAIN_PREF}.json").read_text())) == orpo["triples"]


def test_keep_leaves_out_only_what_the_other_checks_drop(tmp_path: Path) -> None:
    dirs = write_inputs(tmp_path, [page_body(n) for n in range(12)])
    build(dirs, eval_fraction=0.3, probe_fraction=0.25)
    synthesized = {t["id"] for t in read_jsonl(dirs.pref / "triples.jsonl")}
    held = {t["id"] for t in read_jsonl(dirs.eval / "triples.jsonl")}
    probes = {t["id"] for t in read_jsonl(dirs.eval / "probe_triples.jsonl")}
    excluded = list(read_jsonl(dirs.orpo / "exclusions.jsonl"))
    assert held and probes and {e["reason"] for e in excluded} == {"knowledge_probe"}
    rows = json.loads((dirs.orpo / f"{DOMAIN_PREF}.json").read_text())
    assert sorted(r["id"] for r in rows) == sorted(synthesized - held - probes)


def test_upsampling_copies_under_represented_triples_until_the_mix_is_met(
    tmp_path: Path,
) -> None:
    dirs = write_inputs(tmp_path, [page_body(n) for n in range(20)])
    orpo = build(dirs, eval_fraction=0.0, orpo_balance="upsample")["orpo"]
    rows = json.loads((dirs.orpo / f"{DOMAIN_PREF}.json").read_text())
    synthesized = {t["id"] for t in read_jsonl(dirs.pref / "triples.jsonl")}
    assert orpo["balance"] == "upsample" and orpo["dropped_for_balance"] == 0
    assert orpo["triples"] == len(rows) == orpo["triples_in"] + orpo["upsampled"]
    assert orpo["upsampled"] > 0
    copies = Counter(r["id"] for r in rows)
    assert set(copies) == synthesized and max(copies.values()) == 2  # none dropped, none twice
    for tag, share in MIX.model_dump().items():
        assert abs(orpo["competency_mix"][tag]["count"] - share * len(rows)) <= 1
        assert abs(orpo["competency_mix"][tag]["achieved"] - share) < 0.02
    # the copies are the under-represented tags' (every tag has as many triples here)
    copied = {r["competency"] for r in rows if copies[r["id"]] > 1}
    assert copied == {t for t, s in MIX.model_dump().items() if s > min(MIX.model_dump().values())}
    build(dirs, eval_fraction=0.0, orpo_balance="upsample")
    assert json.loads((dirs.orpo / f"{DOMAIN_PREF}.json").read_text()) == rows


def test_an_unknown_balance_mode_names_the_value_and_the_allowed_ones(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("datasets:\n  orpo_balance: balanced\n")
    with pytest.raises(ParamsError) as err:
        load_params("datasets", DatasetsParams, path)
    assert (
        "datasets.orpo_balance: Input should be 'keep', 'drop' or 'upsample' (got 'balanced')"
        in str(err.value)
    )


def test_sets_below_the_minimum_are_reported(tmp_path: Path) -> None:
    dirs = write_inputs(tmp_path, [page_body(n) for n in range(2)])
    report = build(dirs, eval_fraction=0.0, min_examples=1000)
    assert report["below_minimum"] == {
        "sft": report["sft"]["domain_examples"],
        "orpo": report["orpo"]["triples"],
    }
    assert build(dirs, eval_fraction=0.0)["below_minimum"] == {}


def test_general_text_is_mixed_in_at_the_ratio(tmp_path: Path) -> None:
    general = tmp_path / "general.jsonl"
    write_jsonl_atomic(general, ({"text": " ".join(["gen"] * 30)} for _ in range(100)))
    dirs = write_inputs(tmp_path / "in", [page_body(n) for n in range(6)])
    report = build(dirs, eval_fraction=0.0, general_text={"file": str(general), "ratio": 0.3})
    share = report["cpt"]["general_share"]
    assert 0.3 <= share < 0.35
    kinds = [d["kind"] for d in read_jsonl(dirs.cpt / "documents.jsonl")]
    assert kinds[0] == "page" and "general" in kinds[: len(kinds) // 2 + 1]


def test_interleave_spreads_evenly_and_keeps_order() -> None:
    out = interleave([0, 1, 2, 3, 4, 5], [10, 11])
    assert [x for x in out if x < 10] == [0, 1, 2, 3, 4, 5]
    assert [x for x in out if x >= 10] == [10, 11]
    assert out.index(10) in (2, 3) and out.index(11) in (5, 6)


def test_nearest_neighbour_order_chains_similar_pages() -> None:
    """With the packaged embedding model, pages on one topic follow each other."""
    from tasks.datasets.build import chain_nearest, embed_texts, find_embedding_model

    texts = [
        "Configuring WAL archiving with archive_command for point-in-time recovery.",
        "Creating a B-tree index on a table column to speed up queries.",
        "Restoring a base backup and replaying archived WAL segments to a target time.",
        "Using a GIN index for full text search over tsvector columns.",
        "Continuous archiving: base backups plus WAL files make recovery possible.",
        "Partial indexes and expression indexes reduce index size.",
    ]
    order = chain_nearest(embed_texts(texts, find_embedding_model()))
    assert sorted(order) == list(range(6)) and order[0] == 0
    topics = ["backup" if i % 2 == 0 else "index" for i in order]
    assert topics == ["backup"] * 3 + ["index"] * 3


@settings(max_examples=25, deadline=None)
@given(
    n_pages=st.integers(1, 8),
    pairs_per_page=st.integers(0, 4),
    fraction=st.sampled_from([0.0, 0.25, 0.5, 0.9]),
    seed=st.integers(0, 1000),
)
def test_no_knowledge_probe_reaches_a_training_file(
    n_pages: int, pairs_per_page: int, fraction: float, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_inputs(Path(tmp), [page_body(n) for n in range(n_pages)], pairs_per_page)
        report = build(dirs, eval_fraction=0.2, probe_fraction=fraction, split_seed=seed)
        probe_qa = list(read_jsonl(dirs.eval / "probe_qa.jsonl"))
        probe_triples = list(read_jsonl(dirs.eval / "probe_triples.jsonl"))
        sets_text = "\n".join(
            f.read_text() for f in (*dirs.sft.glob("*.json"), *dirs.orpo.glob("*.json"))
        )
        row_tokens = {
            t
            for phase in PHASES
            for row in read_phase_rows(dirs.cpt / phase.name)
            for t in row.input_ids
        }
        for pair in probe_qa:
            assert json.dumps(pair["question"]) not in sets_text
            assert json.dumps(pair["answer"]) not in sets_text
            # the question's last word ("p3w1?") occurs in no page text, only in its Q/A block
            assert encode_words([pair["question"].split()[-1]])[0][0] not in row_tokens
        for triple in probe_triples:
            for name in ("prompt", "chosen", "rejected"):
                assert json.dumps(triple[name]) not in sets_text
        # a point's two triples are probes together, or trained on together
        points = {(t["page_id"], t["point"]) for t in probe_triples}
        assert len(probe_triples) == 2 * len(points)
        # probes come only from training pages, and every record is somewhere
        held = {p["id"] for p in read_jsonl(dirs.eval / "pages.jsonl")}
        assert not {r["page_id"] for r in (*probe_qa, *probe_triples)} & held
        sources = {p["id"] for p in read_jsonl(dirs.eval / "sources.jsonl")}
        assert sources == held | {r["page_id"] for r in (*probe_qa, *probe_triples)}
        assert (
            report["eval"]["probe_pairs"]
            + report["eval"]["pairs"]
            + report["sft"]["domain_examples"]
            == n_pages * pairs_per_page
        )
        if fraction == 0:
            assert not probe_qa and not probe_triples
        excluded = list(read_jsonl(dirs.sft / "exclusions.jsonl"))
        assert {e["id"] for e in excluded if e["reason"] == "knowledge_probe"} == {
            p["id"] for p in probe_qa
        }


def test_a_probe_stays_a_probe_when_records_are_added() -> None:
    from tasks.datasets.build import draw_probes

    keys = [f"{n:04d}" for n in range(200)]
    small = draw_probes(keys[:100], 0.25, 7)
    large = draw_probes(keys, 0.25, 7)
    assert small == {k for k in large if k in keys[:100]}
    assert 30 <= len(large) <= 70


def test_corpus_tokens_are_int32_arrays_of_the_encoded_ids(tmp_path: Path) -> None:
    # 4 bytes a token in memory, the type the shards hold, whatever the encoder returns
    dirs = write_inputs(tmp_path, [page_body(n) for n in range(3)])
    pages = attach_generated(read_pages(dirs.markdown), [], [])
    corpus = build_corpus(pages, [], DatasetsParams(), encode_words)
    assert all(isinstance(t, np.ndarray) and t.dtype == TOKEN_DTYPE for t in corpus.tokens)
    assert [t.tolist() for t in corpus.tokens] == encode_words([render_page_text(p) for p in pages])
    assert [d.tokens for d in corpus.documents] == [len(t) for t in corpus.tokens]


def test_the_base_tokenizer_encodes_slice_by_slice_into_the_ids_of_one_call() -> None:
    encode = load_base_tokenizer(
        resolve_tokenizer(None, Path(".cache/tokenizers"))[0].parent
    ).encode
    assert isinstance(encode, EncodeWithTransformers)
    texts = [page_body(n, words=3 * n) for n in range(7)] + ["", "naïve café ✓ `SELECT 1;`"]
    sliced = replace(encode, slice_chars=100)(texts)  # several slices of the nine texts
    assert all(t.dtype == TOKEN_DTYPE for t in sliced)
    whole = encode.tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert [t.tolist() for t in sliced] == whole


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(0, 50), max_size=30), chars=st.integers(1, 120))
def test_texts_go_to_the_tokenizer_whole_in_order_and_in_bounded_slices(
    lengths: list[int], chars: int
) -> None:
    texts = [str(k % 10) * n for k, n in enumerate(lengths)]
    slices = list(split_by_size(texts, chars))
    assert [t for piece in slices for t in piece] == texts
    assert all(piece for piece in slices)
    # a slice passes the bound only when it is one text longer than the bound by itself
    assert all(sum(map(len, p)) <= chars or len(p) == 1 for p in slices)
