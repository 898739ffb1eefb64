"""The datasets stage on a Dask cluster (a LocalCluster of two worker processes here): MinHash
signatures and tokens computed there give the same files, byte for byte, and the same report
as the default run in this process; an unreachable scheduler fails before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.cluster import ClusterError
from tasks.core.io import read_jsonl, write_jsonl_atomic
from tasks.core.params import ClusterParams, DatasetsParams, PathsParams
from tasks.core.procs import free_port
from tasks.core.tokens import resolve_tokenizer
from tasks.datasets.build import DatasetDirs, build_datasets, load_base_tokenizer
from tests.support.cluster import read_task_runs, without_timings
from tests.support.datasets_inputs import MIX, PHASES, page_body, write_inputs

TOKENIZER_CACHE = Path(".cache/tokenizers")
GENERAL_TEXTS = 5


@pytest.fixture(scope="module")
def base_model() -> Path:
    """SmolLM2's tokenizer, as the base model folder holds it."""
    return resolve_tokenizer(None, TOKENIZER_CACHE)[0].parent


def write_stage_inputs(root: Path) -> tuple[DatasetDirs, DatasetsParams]:
    """Eight pages (one a near-copy of another, one with an e-mail address) and general text,
    so that every step has work: split, probes, PII, near duplicates, mixing and packing."""
    bodies = [page_body(n, words=60 + 25 * n) for n in range(8)]
    bodies[5] = bodies[2].replace("## Page 2", "## Page 5")
    bodies[3] += " Write to admin@corp-internal.io for access."
    dirs = write_inputs(root / "in", bodies)
    general = root / "general.jsonl"
    rows = (
        {"text": f"General text {k}: " + "plain words " * (20 + k)} for k in range(GENERAL_TEXTS)
    )
    write_jsonl_atomic(general, rows)
    params = DatasetsParams(eval_fraction=0.25, general_text={"file": str(general), "ratio": 0.2})
    return dirs, params


def output_dirs(dirs: DatasetDirs, base_model: Path, out: Path) -> DatasetDirs:
    named = {n: out / n for n in ("eval", "cpt", "sft", "orpo")}
    return DatasetDirs(dirs.markdown, dirs.qa, dirs.pref, base_model, **named)


def snapshot(dirs: DatasetDirs) -> dict[str, bytes]:
    """Every output file of the stage by its path under the outputs' parent folder."""
    root = dirs.eval.parent
    files = (f for d in (dirs.eval, dirs.cpt, dirs.sft, dirs.orpo) for f in d.rglob("*"))
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(files) if f.is_file()}


def count_runs(names: list[str], task_name: str) -> tuple[int, int]:
    """(setup runs, batch runs) of a task run on the cluster."""
    setups = [name for name in names if name.startswith(f"{task_name}-setup")]
    batches = [name for name in names if name.startswith(f"{task_name}-")]
    return len(setups), len(batches) - len(setups)


def test_the_stage_on_a_dask_cluster_writes_the_same_files_as_in_this_process(
    tmp_path: Path, scheduler: str, base_model: Path, prefect_harness: None
) -> None:
    from flows.datasets import datasets_flow

    inputs, params = write_stage_inputs(tmp_path)
    here_dirs = output_dirs(inputs, base_model, tmp_path / "here")
    tokenizer = load_base_tokenizer(base_model)
    here = build_datasets(here_dirs, params, PHASES, MIX, tokenizer)
    # batches of 3 texts: full batches and a partial one
    cluster = ClusterParams(address=scheduler, batch_pages=3)
    paths = PathsParams(
        markdown=inputs.markdown,
        qa=inputs.qa,
        pref=inputs.pref,
        base_model=base_model,
        **{n: tmp_path / "dask" / n for n in ("eval", "cpt", "sft", "orpo")},
        reports=tmp_path,
    )
    state = datasets_flow(paths, params, PHASES, MIX, cluster, return_state=True)

    dask_files = snapshot(output_dirs(inputs, base_model, tmp_path / "dask"))
    assert dask_files == snapshot(here_dirs)
    assert without_timings(state.result()) == here
    saved = json.loads((tmp_path / "datasets.json").read_text())
    assert without_timings(saved) == json.loads(json.dumps(here))
    # the fixture exercises what the cluster computes: a near duplicate found by its
    # signature, general text mixed in by its token count, PII masked, rows packed
    dropped = here["dropped_by_reason"]["cpt"]
    assert dropped.get("near_duplicate", 0) + dropped.get("near_duplicate_of_eval", 0) == 1
    assert here["cpt"]["tokens"]["general"] > 0 and here["pii"]["pages"] == {"email": 1}
    assert all(here["cpt"]["phases"][p.name]["rows"] > 0 for p in PHASES)
    assert any(name.endswith(".parquet") for name in dask_files)
    # each batch is a task run of the stage's flow run, the settings shared once per task
    names = [run.name for run in read_task_runs(state)]
    pages_in_cpt = sum(d["kind"] == "page" for d in read_jsonl(here_dirs.cpt / "documents.jsonl"))
    assert count_runs(names, "sign-batch") == (1, 3), names  # 8 pages
    assert count_runs(names, "encode-batch") == (1, -(-(pages_in_cpt + GENERAL_TEXTS) // 3))


def test_an_unreachable_scheduler_fails_before_anything_is_written(
    tmp_path: Path, base_model: Path
) -> None:
    inputs, params = write_stage_inputs(tmp_path)
    dirs = output_dirs(inputs, base_model, tmp_path / "out")
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    cluster = ClusterParams(address=address, connect_timeout_s=1)
    with pytest.raises(ClusterError) as err:
        build_datasets(dirs, params, PHASES, MIX, load_base_tokenizer(base_model), cluster)
    message = str(err.value)
    assert message.startswith("cluster.address: ") and address in message
    assert not (tmp_path / "out").exists()
