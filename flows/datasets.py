"""datasets: build every training set, and the held-out eval split, from pages and synth output.

Run with `dvc repro datasets` (or `python -m flows.datasets`). Reads params `datasets:`,
`cpt.phases` and `synth.competency_mix`; data/markdown, data/qa, data/pref and the base model's
tokenizer (models/base). Writes data/eval (held-out pages with their Q/A and triples),
data/cpt (documents.jsonl, and per phase Parquet shards of packed rows with document
boundaries), data/sft and data/orpo (LlamaFactory sets + dataset_info.json), an
exclusions.jsonl in each, and reports/datasets.json. Pages' MinHash signatures and tokens are
computed in this process, or in batches on the Dask cluster named by params `cluster.address`
(same outputs, byte for byte).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task

from flows import run_name
from tasks.core.cluster import require_scheduler
from tasks.core.params import (
    ClusterParams,
    CompetencyMix,
    DatasetsParams,
    PathsParams,
    PhaseParams,
    load_stage_params,
)
from tasks.core.report import finish_report
from tasks.datasets.build import DatasetDirs, build_datasets, load_base_tokenizer


@task(name="build-datasets")
def build(
    dirs: DatasetDirs,
    params: DatasetsParams,
    phases: list[PhaseParams],
    mix: CompetencyMix,
    cluster: ClusterParams,
) -> dict[str, Any]:
    tokenizer = load_base_tokenizer(dirs.base_model)
    return build_datasets(dirs, params, phases, mix, tokenizer, cluster)


@flow(name="datasets", flow_run_name=run_name("datasets"))
def datasets_flow(
    paths: PathsParams,
    params: DatasetsParams,
    phases: list[PhaseParams],
    mix: CompetencyMix,
    cluster: ClusterParams | None = None,
) -> dict[str, Any]:
    """Split, clean and pack the documents and synthetic data into the training sets."""
    started = time.monotonic()
    dirs = DatasetDirs(
        paths.markdown,
        paths.qa,
        paths.pref,
        paths.base_model,
        paths.eval,
        paths.cpt,
        paths.sft,
        paths.orpo,
    )
    report = build(dirs, params, phases, mix, cluster or ClusterParams())
    return finish_report(paths.reports, "datasets", report, started)


if __name__ == "__main__":
    params = load_stage_params()
    require_scheduler(params.cluster)
    datasets_flow(
        params.paths,
        params.datasets,
        params.cpt.phases,
        params.synth.competency_mix,
        params.cluster,
    )
