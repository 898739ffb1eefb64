"""The datasets stage in this process vs on a Dask LocalCluster, on the first N pages of a docs
site: `python -m tasks.bench.datasets --site .cache/sites/postgresql-15/html --pages 300 1000
--out reports/bench_datasets_dask.json`.

The stage's inputs are written from the site's HTML files as stand-ins for the earlier stages'
outputs (tasks.bench.scale_outputs): data/markdown with each page's text, tags stripped, under
the stage's front matter, and for each page two Q/A pairs and a good and a false-premise triple
cut from its text, so every set has rows. Params are params.yaml's `datasets:`, `cpt.phases` and
`synth.competency_mix`; the tokenizer is the base model's (models/base, else SmolLM2's).

Per size, in this order: the pages' MinHash signatures alone and their tokens alone (the work
the cluster takes over), the whole stage here, then the whole stage twice on a fresh cluster of
`--workers` single-threaded processes: the first run includes the workers' imports and the
tokenizer's unpickling, the second finds them done. Both cluster runs must write the same files,
byte for byte, and return the same report as the run here. The Prefect test server and the
cluster start before the clock does. Load averages (1, 5, 15 min) before and after each size say
what else the machine was doing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.bench.dask_cluster import local_cluster, prefect_test_server, read_tree
from tasks.bench.packing import find_base_model
from tasks.bench.scale_outputs import build_entry, render_markdown
from tasks.core.documents import parse_document, read_pages
from tasks.core.io import write_json_atomic, write_jsonl_atomic
from tasks.core.params import (
    ClusterParams,
    CptParams,
    DatasetsParams,
    PhaseParams,
    SynthParams,
    load_params,
)
from tasks.core.records import (
    Competency,
    MarkdownDoc,
    PreferenceTriple,
    QAPair,
    TripleKind,
    text_id,
)
from tasks.datasets.build import (
    DatasetDirs,
    TokenizerInfo,
    build_datasets,
    load_base_tokenizer,
    sign_batch,
)

BASE_URL = "http://127.0.0.1/"
STAND_IN_MODEL = "stand-in"
ANSWER_WORDS = 30
PAIRS_PER_PAGE = 2
COMPETENCIES = list(Competency)


@dataclass(frozen=True)
class StageInputs:
    markdown: Path
    qa: Path
    pref: Path


@dataclass(frozen=True)
class StageSettings:
    params: DatasetsParams
    phases: list[PhaseParams]
    synth: SynthParams
    base_model: Path
    tokenizer: TokenizerInfo


def render_stand_in_pairs(doc: MarkdownDoc, body: str) -> list[QAPair]:
    """Questions on the page's title, answered by consecutive spans of its words."""
    words = body.split()
    pairs = []
    for k in range(PAIRS_PER_PAGE):
        question = f"What does the page {doc.title!r} say, part {k + 1}?"
        span = " ".join(words[k * ANSWER_WORDS : (k + 1) * ANSWER_WORDS])
        answer = f"{span} (Source: {doc.url})".strip()
        pairs.append(
            QAPair(
                id=text_id(doc.id, question, answer),
                page_id=doc.id,
                url=doc.url,
                question=question,
                answer=answer,
                model=STAND_IN_MODEL,
                prompt_version=STAND_IN_MODEL,
            )
        )
    return pairs


def render_stand_in_triples(doc: MarkdownDoc, body: str, order: int) -> list[PreferenceTriple]:
    """A good and a false-premise triple on the page's title; competencies in turn over the
    pages, so the ORPO set's mix is near the target."""
    chosen = " ".join(body.split()[:ANSWER_WORDS])
    triples = []
    for k, kind in enumerate(TripleKind):
        prompt = f"What is {doc.title!r} about?" if k == 0 else f"Why is {doc.title!r} obsolete?"
        rejected = "The documentation does not say." if k == 0 else "Because it was removed."
        triples.append(
            PreferenceTriple(
                id=text_id(doc.id, kind, prompt, chosen, rejected),
                page_id=doc.id,
                url=doc.url,
                point=doc.title or doc.url,
                kind=kind,
                competency=COMPETENCIES[(2 * order + k) % len(COMPETENCIES)],
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                model=STAND_IN_MODEL,
                prompt_version=STAND_IN_MODEL,
            )
        )
    return triples


def write_stage_inputs(html_files: Sequence[Path], root: Path) -> StageInputs:
    """data/markdown, data/qa and data/pref stand-ins for the pages, in the given order."""
    inputs = StageInputs(root / "markdown", root / "qa", root / "pref")
    inputs.markdown.mkdir(parents=True)
    index, pairs, triples = [], [], []
    for order, path in enumerate(html_files):
        text = path.read_text("utf-8", errors="replace")
        doc, document = render_markdown(
            build_entry(BASE_URL + path.name, order, text.encode()), text
        )
        (inputs.markdown / f"{doc.id}.md").write_text(document, "utf-8")
        index.append(doc.model_copy(update={"order": order}).model_dump())
        body = parse_document(document)[1]
        pairs += render_stand_in_pairs(doc, body)
        triples += render_stand_in_triples(doc, body, order)
    write_jsonl_atomic(inputs.markdown / "index.jsonl", index)
    write_jsonl_atomic(inputs.qa / "pairs.jsonl", (p.model_dump() for p in pairs))
    write_jsonl_atomic(inputs.pref / "triples.jsonl", (t.model_dump(mode="json") for t in triples))
    return inputs


def output_dirs(inputs: StageInputs, base_model: Path, out: Path) -> DatasetDirs:
    named = (out / n for n in ("eval", "cpt", "sft", "orpo"))
    return DatasetDirs(inputs.markdown, inputs.qa, inputs.pref, base_model, *named)


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = work()
    return result, round(time.perf_counter() - started, 2)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_stage(
    inputs: StageInputs, settings: StageSettings, out: Path, cluster: ClusterParams | None = None
) -> tuple[dict[str, Any], float]:
    """The stage's report and its wall seconds."""
    dirs = output_dirs(inputs, settings.base_model, out)
    s, mix = settings, settings.synth.competency_mix
    return timed(lambda: build_datasets(dirs, s.params, s.phases, mix, s.tokenizer, cluster))


def time_size(
    html_files: Sequence[Path], settings: StageSettings, workers: int, root: Path
) -> dict[str, Any]:
    inputs = write_stage_inputs(html_files, root / "in")
    bodies = [body for _, body in read_pages(inputs.markdown)]
    permutations = settings.params.minhash_permutations
    result: dict[str, Any] = {
        "pages": len(bodies),
        "words": sum(len(b.split()) for b in bodies),
        "load_average_before": load_average(),
    }
    _, result["minhash_s"] = timed(lambda: sign_batch(permutations, bodies))
    _, result["tokenize_s"] = timed(lambda: settings.tokenizer.encode(bodies))
    here, result["here_s"] = run_stage(inputs, settings, root / "here")
    result["cpt_tokens"] = here["cpt"]["tokens"]
    here_files = read_tree(root / "here")
    runs = []
    with local_cluster(workers) as cluster:
        result["batch_pages"] = cluster.batch_pages
        for name in ("dask_first", "dask_second"):
            report, seconds = run_stage(inputs, settings, root / name, cluster)
            same_files = read_tree(root / name) == here_files
            runs.append({"s": seconds, "same_files": same_files, "same_report": report == here})
    result["dask_first"], result["dask_second"] = runs
    result["load_average_after"] = load_average()
    return result


def load_settings() -> StageSettings:
    base_model = find_base_model()
    return StageSettings(
        params=load_params("datasets", DatasetsParams),
        phases=load_params("cpt", CptParams).phases,
        synth=load_params("synth", SynthParams),
        base_model=base_model,
        tokenizer=load_base_tokenizer(base_model),
    )


def run_benchmark(site: Path, sizes: Sequence[int], workers: int) -> dict[str, Any]:
    html_files = sorted(site.glob("*.html"))
    if not html_files:
        raise FileNotFoundError(f"{site}: no .html files")
    settings = load_settings()
    result: dict[str, Any] = {
        "site": str(site),
        "site_pages": len(html_files),
        "tokenizer": settings.tokenizer.name,
        "phases": {p.name: p.seq_len for p in settings.phases},
        "cpu_count": os.cpu_count(),
        "workers": workers,
        "threads_per_worker": 1,
        "sizes": [],
    }
    with prefect_test_server():
        for size in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                timing = time_size(html_files[:size], settings, workers, Path(tmp))
            result["sizes"].append(timing)
            print(json.dumps(timing), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--site", type=Path, default=Path(".cache/sites/postgresql-15/html"))
    parser.add_argument("--pages", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("reports/bench_datasets_dask.json"))
    args = parser.parse_args(argv)
    if min(args.pages) < 1 or args.workers < 1:
        parser.error("--pages and --workers must be at least 1")
    result = run_benchmark(args.site, args.pages, args.workers)
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
