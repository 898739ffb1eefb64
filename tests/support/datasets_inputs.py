"""Synthetic inputs of the datasets stage: pages whose every word carries the page's marker,
with their Q/A pairs and triples, and a word-level tokenizer, so leaked text is easy to find."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core.documents import render_document
from tasks.core.io import write_jsonl_atomic
from tasks.core.params import CompetencyMix, DatasetsParams, PhaseParams
from tasks.core.records import (
    Competency,
    MarkdownDoc,
    PreferenceTriple,
    QAPair,
    TripleKind,
    text_id,
)
from tasks.datasets.build import DatasetDirs, TokenizerInfo, build_datasets

PHASES = [PhaseParams(name="short", seq_len=64), PhaseParams(name="long", seq_len=256)]
MIX = CompetencyMix()
TAGS = list(Competency)


VOCAB: dict[str, int] = {}


def encode_words(texts: list[str]) -> list[list[int]]:
    """One id per distinct word (0 and 1 are EOS and padding), so token sets compare exactly."""
    return [[VOCAB.setdefault(w, 2 + len(VOCAB)) for w in t.split()] for t in texts]


WORDS = TokenizerInfo("words", eos_id=0, pad_id=1, encode=encode_words)


def page_body(n: int, words: int = 120) -> str:
    """A page whose every word carries its marker, so leaked text is easy to find."""
    return f"## Page {n}\n\n" + " ".join(f"p{n}w{i}" for i in range(words))


def write_inputs(root: Path, bodies: list[str], pairs_per_page: int = 2) -> DatasetDirs:
    dirs = DatasetDirs(
        *(root / n for n in ("md", "qa", "pref", "base", "eval", "cpt", "sft", "orpo"))
    )
    for d in (dirs.markdown, dirs.qa, dirs.pref):
        d.mkdir(parents=True)
    index, pairs, triples = [], [], []
    for n, body in enumerate(bodies):
        pid = f"{n:016x}"
        doc = MarkdownDoc(
            id=pid,
            url=f"http://docs.test/p{n}.html",
            title=f"Page {n}",
            product="Prod",
            version="1.0",
            sha="0" * 64,
            order=n,
        )
        (dirs.markdown / f"{pid}.md").write_text(render_document(doc, body), "utf-8")
        index.append(doc.model_dump())
        for k in range(pairs_per_page):
            q, a = f"What is p{n}w{k}?", f"p{n}w{k} is p{n}w{k + 1}. (Source: {doc.url})"
            pairs.append(
                QAPair(
                    id=text_id(pid, q, a),
                    page_id=pid,
                    url=doc.url,
                    question=q,
                    answer=a,
                    model="m",
                    prompt_version="v",
                )
            )
        for k, kind in enumerate(TripleKind):
            tag = TAGS[(2 * n + k) % len(TAGS)]
            prompt, chosen, rejected = f"Why p{n}w{k}?", f"Because p{n}w9.", f"No p{n}w8."
            triples.append(
                PreferenceTriple(
                    id=text_id(pid, kind, prompt),
                    page_id=pid,
                    url=doc.url,
                    point=f"p{n}w1",
                    kind=kind,
                    competency=tag,
                    prompt=prompt,
                    chosen=chosen,
                    rejected=rejected,
                    model="m",
                    prompt_version="v",
                )
            )
    write_jsonl_atomic(dirs.markdown / "index.jsonl", index)
    write_jsonl_atomic(dirs.qa / "pairs.jsonl", (p.model_dump() for p in pairs))
    write_jsonl_atomic(dirs.pref / "triples.jsonl", (t.model_dump(mode="json") for t in triples))
    return dirs


def training_text(dirs: DatasetDirs) -> str:
    """Everything a training stage can read: token rows decoded to markers, and the sets."""
    parts = [(dirs.cpt / "documents.jsonl").read_text()]
    for f in (*dirs.sft.glob("*.json"), *dirs.orpo.glob("*.json")):
        parts.append(f.read_text())
    return "\n".join(parts)


def build(dirs: DatasetDirs, **overrides: Any) -> dict[str, Any]:
    # No probes unless a test asks: the other tests count every pair and triple in the sets.
    defaults = {"pii": {"kinds": []}, "probe_fraction": 0.0}
    params = DatasetsParams(**{**defaults, **overrides})  # type: ignore[arg-type]
    return build_datasets(dirs, params, PHASES, MIX, WORDS)
