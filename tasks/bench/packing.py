"""Packing efficiency of the CPT corpus at each phase length:
`python -m tasks.bench.packing [--site .cache/sites/postgresql-15/html]`.

Two corpora, tokenized with the base model's tokenizer (models/base, else SmolLM2's):
- builtin: the training pages of the built-in default as the datasets stage renders them
  (data/markdown with data/qa), packed at the phase lengths in params `cpt.phases`;
- site: every page of the whole built-in documentation site converted to Markdown, packed at
  the default phase lengths and at the production ones (8K, 32K, 128K).

Efficiency is real tokens / token slots (tasks.datasets.packing). Beside ours, the same
documents packed one per row (each padded to the row; what a trainer without packing does)
give the baseline.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any

from tasks.core.documents import read_pages
from tasks.core.io import write_json_atomic
from tasks.core.params import CptParams, DatasetsParams, MarkdownParams, load_params
from tasks.core.tokens import resolve_tokenizer
from tasks.datasets.build import (
    TokenizerInfo,
    attach_generated,
    load_base_tokenizer,
    read_synth_outputs,
    render_page_text,
    split_pages,
)
from tasks.datasets.packing import layout_documents
from tasks.markdown.convert import convert_page

PRODUCTION_LENGTHS = [8192, 32768, 131072]


def read_builtin_texts(params: DatasetsParams) -> list[str]:
    pairs, triples = read_synth_outputs(Path("data/qa"), Path("data/pref"))
    pages = attach_generated(read_pages(Path("data/markdown")), pairs, triples)
    held = split_pages([p.doc.id for p in pages], params.eval_fraction, params.split_seed)
    return [render_page_text(p) for p in pages if p.doc.id not in held]


def read_site_texts(site: Path, params: MarkdownParams) -> list[str]:
    texts = []
    for path in sorted(site.glob("*.html")):
        converted = convert_page(path.read_bytes(), f"http://127.0.0.1/{path.name}", params)
        if converted.markdown.strip():
            texts.append(converted.markdown)
    return texts


def padded_one_per_row(lengths: list[int], seq_len: int) -> float:
    """Efficiency when every document starts a fresh row and its last row is padded."""
    slots = sum(-(-n // seq_len) * seq_len for n in lengths)
    return round(sum(lengths) / slots, 6) if slots else 1.0


def measure(tokens: Sequence[Sized], lengths: list[int], p: DatasetsParams):
    out: dict[str, Any] = {}
    for seq_len in lengths:
        _, stats = layout_documents(
            tokens,
            seq_len=seq_len,
            max_pad_fraction=p.max_pad_fraction,
            lookahead=p.lookahead,
        )
        baseline = padded_one_per_row([len(t) + 1 for t in tokens], seq_len)
        out[str(seq_len)] = {
            "rows": stats.rows,
            "efficiency": stats.efficiency,
            "one_per_row_efficiency": baseline,
            "documents_split": stats.documents_split,
            "documents_moved": stats.documents_moved,
            "pad_tokens": stats.pad_tokens,
        }
    return out


def find_base_model() -> Path:
    """models/base when it holds a tokenizer, else the folder of SmolLM2's packaged one."""
    base = Path("models/base")
    if (base / "tokenizer_config.json").is_file():
        return base
    return resolve_tokenizer(None, Path(".cache/tokenizers"))[0].parent


def load_tokenizer() -> TokenizerInfo:
    return load_base_tokenizer(find_base_model())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--site", type=Path, default=Path(".cache/sites/postgresql-15/html"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench_packing.json"))
    args = parser.parse_args(argv)
    params = load_params("datasets", DatasetsParams)
    phases = [p.seq_len for p in load_params("cpt", CptParams).phases]
    tok = load_tokenizer()
    result: dict[str, Any] = {"tokenizer": tok.name, "max_pad_fraction": params.max_pad_fraction}
    builtin = tok.encode(read_builtin_texts(params))
    result["builtin"] = {
        "documents": len(builtin),
        "tokens": sum(map(len, builtin)),
        "phases": measure(builtin, phases, params),
    }
    if args.site.is_dir():
        site = tok.encode(read_site_texts(args.site, load_params("markdown", MarkdownParams)))
        result["site"] = {
            "documents": len(site),
            "tokens": sum(map(len, site)),
            "phases": measure(site, phases + PRODUCTION_LENGTHS, params),
        }
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
