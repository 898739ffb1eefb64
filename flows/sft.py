"""sft: supervised fine-tuning with LlamaFactory on the domain Q/A, mixed with a general
instruction set when the datasets stage wrote one.

Run with `dvc repro sft` (or `python -m flows.sft`). Reads params `sft:` (LlamaFactory's own
keys under `sft.train`), `cpt.output` + `cpt.phases` (the starting model: the last phase's
folder unless `sft.model` names one), `datasets.general_sft.ratio` (the mix), and data/sft.
Writes models/sft/ (train.yaml, export.yaml, adapter/ for LoRA, model/: the merged model plain
transformers loads), the run's checkpoints under `sft.checkpoints` (kept, so a killed run
resumes), reports/sft.json, reports/sft_loss.csv (step, loss, eval_loss) and
reports/sft_eval_loss.csv (DVC plots). LlamaFactory's output is streamed into the Prefect run
log; a NaN loss stops the stage.
LlamaFactory splits `sft.train.val_size` off the training mix and evaluates every `eval_steps`
(`early_stopping_steps` stops the run once eval loss stops falling); a set with fewer rows than
`sft.validation_min_rows` trains on every row without a split. The report gives the rows held
out (or why none), the last and best eval loss, and whether eval loss rose while train loss
fell (`overfitting`, with the steps).
A set with fewer rows than `datasets.min_examples` is not trained on: the stage passes its
starting model on as model/ and its report says why (the set, its size, what the datasets
stage dropped, and the fix).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import run_name
from tasks.core.params import PathsParams, SftParams, load_stage_params
from tasks.core.records import DOMAIN_SFT, GENERAL_SFT
from tasks.core.report import finish_report
from tasks.finetune.llamafactory import (
    StageLayout,
    check_model_folder,
    check_set_size,
    count_set_rows,
    describe_config,
    export_model,
    pass_model_on,
    prepare_run,
    read_dataset_names,
    read_train_results,
    render_mix,
    render_train_config,
    summarize_run,
    train_model,
)
from tasks.finetune.validation import (
    plan_validation,
    read_max_steps,
    summarize_validation,
    write_loss_curves,
)


@flow(name="sft", flow_run_name=run_name("sft"))
def sft_flow(
    paths: PathsParams,
    params: SftParams,
    cpt_model: Path,
    general_ratio: float,
    min_examples: int = 1,
    hub: bool = False,
) -> dict[str, Any]:
    """Fine-tune on the domain Q/A (mixed with a general instruction set) with LlamaFactory."""
    started = time.monotonic()
    model = check_model_folder(params.model or cpt_model, "sft.model", "cpt")
    datasets = read_dataset_names(paths.sft, [DOMAIN_SFT], optional=[GENERAL_SFT])
    layout = StageLayout(params.output, params.checkpoints)
    if params.rank_of_node > 0:
        # Not node 0: only this node's share of the training, on the train.yaml node 0 wrote
        # (node 0 starts first); node 0 exports the model and writes the report.
        train_model(layout, params.processes_per_node, "sft", hub=hub, nodes=params)
        return {"node_rank": params.rank_of_node}
    reason = check_set_size(paths.sft, DOMAIN_SFT, min_examples)
    if reason is not None:
        write_loss_curves(paths.reports, "sft", [])
        return finish_report(paths.reports, "sft", pass_model_on(layout, model, reason), started)
    rows, minimum = count_set_rows(paths.sft, DOMAIN_SFT), params.validation_min_rows
    validation = plan_validation(params.train, rows, minimum, "sft", DOMAIN_SFT)
    if validation.skipped:
        get_run_logger().warning("%s", validation.skipped)
    mix = render_mix(datasets, params.train, general_ratio)
    config = render_train_config(
        "sft",
        model,
        datasets,
        paths.sft,
        layout,
        params.train,
        deepspeed=params.deepspeed is not None,
        extra=mix | validation.overrides,
    )
    comment = f"llamafactory-cli train {layout.train_yaml}: written by flows/sft.py from params"
    config = prepare_run(
        layout, config, params.deepspeed, params.processes_per_node, [model, paths.sft], comment
    )
    history = train_model(layout, params.processes_per_node, "sft", hub=hub, nodes=params)
    export_model(layout, config, params.export)

    write_loss_curves(paths.reports, "sft", history)
    report = describe_config(config) | summarize_run(
        history, read_train_results(layout.checkpoints)
    )
    max_steps = read_max_steps(layout.checkpoints)
    report["validation"] = summarize_validation(history, validation, config, max_steps)
    return finish_report(paths.reports, "sft", report, started)


if __name__ == "__main__":
    params = load_stage_params()
    cpt = params.cpt
    sft_flow(
        params.paths,
        params.sft,
        cpt.output / cpt.phases[-1].name,
        params.datasets.general_sft.ratio,
        params.datasets.min_examples,
        hub=params.datasets.general_sft.hub_id is not None,  # LlamaFactory downloads it
    )
