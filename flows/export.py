"""export: ship the final model as one GGUF file for llama.cpp and Ollama, with a model card.

Run with `dvc repro export` (or `python -m flows.export`). Reads params `export:` (which model
folder, the GGUF type, the verification) and, for the card, the data stages' dvc.lock hashes,
reports/{model,markdown,synth,eval,gate}.json and the training configs in the model folders.
Writes models/export/ (model.gguf, Modelfile for Ollama, README.md: the Hugging Face model card),
built beside it and renamed into place only once llama.cpp serving the GGUF picks the
transformers model's next token on a real page often enough, and reports/export.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import run_name
from tasks.core.io import promote_folder, staging_folder, write_text_atomic
from tasks.core.params import ExportParams, Params, load_stage_params
from tasks.core.report import finish_report
from tasks.export.card import read_card_inputs, read_chat_probe, render_model_card, render_modelfile
from tasks.export.gguf import ExportError, write_gguf
from tasks.export.verify import ExportMismatch, check_export, verify_export

GGUF_FILE = "model.gguf"


@task(name="write-gguf", cache_policy=NO_CACHE)
def export_gguf(settings: ExportParams, out: Path) -> dict[str, Any]:
    started = time.monotonic()
    written = write_gguf(settings.model, out, settings.type, settings.name)
    return {"file": out.name, **written, "write_s": round(time.monotonic() - started, 2)}


@task(name="verify-against-llama-cpp", cache_policy=NO_CACHE)
def verify(settings: ExportParams, gguf: Path) -> dict[str, Any]:
    return verify_export(settings.model, gguf, settings.verify_tokens)


@task(name="write-card-and-modelfile", cache_policy=NO_CACHE)
def write_card(params: Params, export: dict[str, Any], folder: Path) -> None:
    rendered, stop = read_chat_probe(params.export.model)
    modelfile = render_modelfile(GGUF_FILE, rendered, params.datasets.system_prompt, stop)
    write_text_atomic(folder / "Modelfile", modelfile)
    write_text_atomic(folder / "README.md", render_model_card(read_card_inputs(params, export)))


@flow(name="export", flow_run_name=run_name("export"))
def export_flow(params: Params) -> dict[str, Any]:
    """Write the chosen model as GGUF, verify it against transformers, write card and Modelfile."""
    started, settings, paths = time.monotonic(), params.export, params.paths
    with staging_folder(paths.export) as staging:
        report = {"model": str(settings.model), **export_gguf(settings, staging / GGUF_FILE)}
        report["verification"] = verify(settings, staging / GGUF_FILE)
        write_card(params, report, staging)
        finish_report(paths.reports, "export", report, started)
        check_export(report["verification"], settings.min_argmax_agreement)
        promote_folder(staging, paths.export)
    return report


if __name__ == "__main__":
    try:
        export_flow(load_stage_params())
    except (ExportError, ExportMismatch) as exc:  # a model or check the message explains
        sys.exit(f"error: {exc}")
