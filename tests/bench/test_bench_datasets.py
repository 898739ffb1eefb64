"""The datasets benchmark's stand-in inputs: pages the stage reads in the site's order, with
their tags stripped, and Q/A pairs and triples enough for every set to have rows."""

from __future__ import annotations

from pathlib import Path

from tasks.bench.datasets import write_stage_inputs
from tasks.core.documents import read_pages
from tasks.core.params import DatasetsParams
from tasks.core.records import TripleKind
from tasks.datasets.build import (
    DatasetDirs,
    attach_generated,
    build_datasets,
    read_synth_outputs,
)
from tests.support.datasets_inputs import MIX, PHASES, WORDS


def write_site(folder: Path, pages: int) -> list[Path]:
    folder.mkdir()
    files = []
    for n in range(pages):
        words = " ".join(f"p{n}w{i}" for i in range(80))
        html = f"<html>\n<title>Page &amp; {n}</title>\n<body><p>{words}</p></body>\n</html>"
        files.append(folder / f"page{n:02d}.html")
        files[-1].write_text(html, "utf-8")
    return files


def test_the_stand_ins_are_pages_in_order_with_their_pairs_and_triples(tmp_path: Path) -> None:
    files = write_site(tmp_path / "site", 4)
    inputs = write_stage_inputs(files, tmp_path / "in")
    docs = read_pages(inputs.markdown)
    assert [doc.url for doc, _ in docs] == [f"http://127.0.0.1/{f.name}" for f in files]
    assert docs[1][0].title == "Page & 1"
    assert "<p>" not in docs[1][1] and "p1w79" in docs[1][1]
    pages = attach_generated(docs, *read_synth_outputs(inputs.qa, inputs.pref))
    assert [len(p.pairs) for p in pages] == [2] * 4
    assert [{t.kind for t in p.triples} for p in pages] == [set(TripleKind)] * 4
    assert (
        pages[2].pairs[0].answer.startswith("Page & 2 p2w0 p2w1 ")
        and "(Source: http" in pages[2].pairs[0].answer
    )
    assert len({t.competency for p in pages for t in p.triples}) == 4


def test_every_set_of_the_stage_has_rows(tmp_path: Path) -> None:
    inputs = write_stage_inputs(write_site(tmp_path / "site", 8), tmp_path / "in")
    named = (tmp_path / "out" / n for n in ("eval", "cpt", "sft", "orpo"))
    dirs = DatasetDirs(inputs.markdown, inputs.qa, inputs.pref, tmp_path / "base", *named)
    report = build_datasets(dirs, DatasetsParams(), PHASES, MIX, WORDS)
    assert report["pages"]["eval"] > 0 and report["cpt"]["tokens"]["page"] > 0
    assert report["sft"]["domain_examples"] > 0 and report["orpo"]["triples"] > 0
    assert report["eval"]["probe_pairs"] > 0 and not report["below_minimum"]
