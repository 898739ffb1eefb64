"""orpo: preference training with LlamaFactory's ORPO loss (odds-ratio preference
optimization: `stage: dpo` with `pref_loss: orpo`; no reference model) on the preference
triples, starting from the merged SFT model.

Run with `dvc repro orpo` (or `python -m flows.orpo`). Reads params `orpo:` (LlamaFactory's
own keys under `orpo.train`, pref_beta among them), `sft.output` (the starting model is its
model/ unless `orpo.model` names one) and data/orpo. Writes models/orpo/ (train.yaml,
export.yaml, adapter/ for LoRA, model/: the merged model), the run's checkpoints under
`orpo.checkpoints` (kept, so a killed run resumes), reports/orpo.json, reports/orpo_loss.csv
(step, loss, eval_loss), reports/orpo_eval_loss.csv and reports/orpo_margins.csv (chosen -
rejected reward per step; DVC plots).
LlamaFactory splits `orpo.train.val_size` off the triples and evaluates every `eval_steps`
(`early_stopping_steps` stops the run once eval loss stops falling); a set with fewer rows than
`orpo.validation_min_rows` trains on every row without a split. The report gives the rows held
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
from tasks.core.params import OrpoParams, PathsParams, load_stage_params
from tasks.core.records import DOMAIN_PREF
from tasks.core.report import finish_report
from tasks.finetune.llamafactory import (
    StageLayout,
    check_model_folder,
    check_set_size,
    count_set_rows,
    describe_config,
    export_model,
    extract_curve,
    pass_model_on,
    prepare_run,
    read_dataset_names,
    read_train_results,
    render_train_config,
    summarize_curve,
    summarize_run,
    train_model,
    write_curve,
)
from tasks.finetune.validation import (
    plan_validation,
    read_max_steps,
    summarize_validation,
    write_loss_curves,
)

MARGINS = {
    "margin": "rewards/margins",
    "chosen": "rewards/chosen",
    "rejected": "rewards/rejected",
    "accuracy": "rewards/accuracies",
}


@flow(name="orpo", flow_run_name=run_name("orpo"))
def orpo_flow(
    paths: PathsParams, params: OrpoParams, sft_model: Path, min_examples: int = 1
) -> dict[str, Any]:
    """Preference-train the SFT model with LlamaFactory's ORPO loss."""
    started = time.monotonic()
    model = check_model_folder(params.model or sft_model, "orpo.model", "sft")
    datasets = read_dataset_names(paths.orpo, [DOMAIN_PREF])
    layout = StageLayout(params.output, params.checkpoints)
    if params.rank_of_node > 0:
        # Not node 0: only this node's share of the training, on the train.yaml node 0 wrote
        # (node 0 starts first); node 0 exports the model and writes the report.
        train_model(layout, params.processes_per_node, "orpo", nodes=params)
        return {"node_rank": params.rank_of_node}
    reason = check_set_size(paths.orpo, DOMAIN_PREF, min_examples)
    if reason is not None:
        write_loss_curves(paths.reports, "orpo", [])
        write_curve(paths.reports / "orpo_margins.csv", [], list(MARGINS))
        return finish_report(paths.reports, "orpo", pass_model_on(layout, model, reason), started)
    rows, minimum = count_set_rows(paths.orpo, DOMAIN_PREF), params.validation_min_rows
    validation = plan_validation(params.train, rows, minimum, "orpo", DOMAIN_PREF)
    if validation.skipped:
        get_run_logger().warning("%s", validation.skipped)
    config = render_train_config(
        "dpo",
        model,
        datasets,
        paths.orpo,
        layout,
        params.train,
        deepspeed=params.deepspeed is not None,
        extra={"pref_loss": "orpo", **validation.overrides},
    )
    comment = f"llamafactory-cli train {layout.train_yaml}: written by flows/orpo.py from params"
    config = prepare_run(
        layout, config, params.deepspeed, params.processes_per_node, [model, paths.orpo], comment
    )
    history = train_model(layout, params.processes_per_node, "orpo", nodes=params)
    export_model(layout, config, params.export)

    margins = extract_curve(history, MARGINS)
    write_loss_curves(paths.reports, "orpo", history)
    write_curve(paths.reports / "orpo_margins.csv", margins, list(MARGINS))
    report = describe_config(config) | summarize_run(
        history, read_train_results(layout.checkpoints)
    )
    max_steps = read_max_steps(layout.checkpoints)
    report["validation"] = summarize_validation(history, validation, config, max_steps)
    report["pref_beta"] = config.get("pref_beta")
    report["margin"] = summarize_curve([r["margin"] for r in margins])
    return finish_report(paths.reports, "orpo", report, started)


if __name__ == "__main__":
    params = load_stage_params()
    orpo_flow(params.paths, params.orpo, params.sft.output / "model", params.datasets.min_examples)
