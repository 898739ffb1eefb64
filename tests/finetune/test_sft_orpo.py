"""The sft and orpo stages: YAML generated from params, LlamaFactory run as a subprocess with
its output in the Prefect run log, a merged model plain transformers loads, ORPO's margin
growing on a separable set, resume after a kill, a NaN loss failing the stage, and the
overfitting watch (a validation split where the set can spare it, eval loss in the curves,
eval loss rising while train loss falls flagged in the report).

The stage runs train a 2-layer Llama (hidden 64) for a few steps, ~30 s each; the SmolLM2
runs are marked slow."""

from __future__ import annotations

import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import yaml

from flows.orpo import orpo_flow
from flows.sft import sft_flow
from tasks.core.params import (
    OrpoParams,
    ParamsError,
    PathsParams,
    SftParams,
    load_params,
    parse_section,
)
from tasks.core.records import DOMAIN_PREF, DOMAIN_SFT
from tasks.finetune.llamafactory import (
    FINGERPRINT_FILE,
    LlamaFactoryError,
    NonFiniteLoss,
    StageLayout,
    check_finite_losses,
    check_model_folder,
    extract_curve,
    parse_nonfinite_loss,
    prepare_checkpoints,
    read_dataset_names,
    read_log_history,
    render_export_config,
    render_fingerprint,
    render_mix,
    render_train_config,
    run_streamed,
)
from tasks.finetune.validation import (
    EVAL_OFF,
    ValidationPlan,
    count_validation_rows,
    find_overfitting,
    plan_validation,
    summarize_validation,
    write_loss_curves,
)
from tests.support.lf_inputs import (
    orpo_params,
    sft_params,
    write_sets,
    write_thin_set,
    write_tiny_model,
)

REPO = Path(__file__).resolve().parents[2]


def test_shipped_params_are_valid() -> None:
    sft = load_params("sft", SftParams, REPO / "params.yaml")
    orpo = load_params("orpo", OrpoParams, REPO / "params.yaml")
    assert sft.finetuning_type == orpo.finetuning_type == "lora"
    assert sft.output != orpo.output and sft.checkpoints != orpo.checkpoints
    # the demo's sets of 5-10 rows hold one row out for validation; smaller ones train on all
    for shipped in (sft, orpo):
        minimum = shipped.validation_min_rows
        held_out = [plan_validation(shipped.train, n, minimum, "s", "x").rows for n in (4, 5, 10)]
        assert held_out == [0, 1, 1]


@pytest.mark.parametrize(
    ("section", "model", "raw", "words"),
    [
        ("sft", SftParams, {"train": {"output_dir": "x"}}, "output_dir is set by the flow"),
        ("sft", SftParams, {"train": {"dataset": "x"}}, "dataset is set by the flow"),
        ("sft", SftParams, {"train": {"deepspeed": "ds.json"}}, "sft.deepspeed"),
        ("sft", SftParams, {"train": {"finetuning_type": "qlora"}}, "lora"),
        ("sft", SftParams, {"export": {"export_dir": "x"}}, "sft.output/model"),
        ("sft", SftParams, {"epochs": 3}, "Extra inputs are not permitted"),
        ("orpo", OrpoParams, {"train": {"pref_loss": "sigmoid"}}, "always orpo"),
        ("orpo", OrpoParams, {"train": {"pref_beta": 0}}, "pref_beta"),
        ("orpo", OrpoParams, {"train": {"model_name_or_path": "m"}}, "orpo.model"),
        ("sft", SftParams, {"train": {"eval_dataset": "x"}}, "val_size"),
        ("sft", SftParams, {"train": {"val_size": 1}}, "LlamaFactory reads 1 as the whole set"),
        ("sft", SftParams, {"train": {"val_size": -0.1}}, "val_size must be"),
        ("orpo", OrpoParams, {"train": {"early_stopping_steps": 3}}, "needs evaluations"),
        (
            "sft",
            SftParams,
            {"train": {"val_size": 0.1, "eval_strategy": "steps", "early_stopping_steps": 0}},
            "integer >= 1",
        ),
        ("orpo", OrpoParams, {"validation_min_rows": 1}, "validation_min_rows"),
    ],
)
def test_keys_the_flow_sets_are_rejected_in_params(
    section: str, model: type, raw: dict, words: str
) -> None:
    with pytest.raises(ParamsError) as err:
        parse_section(section, raw, model)
    assert f"{section}." in str(err.value) and words in str(err.value)


def test_train_yaml_passes_llamafactory_keys_through(tmp_path: Path) -> None:
    layout = StageLayout(tmp_path / "out", tmp_path / "ckpt")
    train = {"lora_rank": 64, "lora_target": "q_proj,v_proj", "neftune_noise_alpha": 5}
    config = render_train_config(
        "dpo",
        Path("m"),
        ["docs_pref"],
        Path("data/orpo"),
        layout,
        train,
        True,
        {"pref_loss": "orpo"},
    )
    assert {k: config[k] for k in train} == train  # verbatim: no second schema
    assert config["stage"] == "dpo" and config["pref_loss"] == "orpo"
    assert config["report_to"] == "none" and config["logging_nan_inf_filter"] is False
    assert config["output_dir"] == str(layout.checkpoints)
    assert config["deepspeed"] == str(layout.deepspeed_json)


def test_general_set_is_interleaved_at_the_datasets_ratio() -> None:
    both = ["docs_sft", "general_sft"]
    interleave = {"mix_strategy": "interleave_under"}
    assert render_mix(both, interleave, 0.3) == {"interleave_probs": "0.7,0.3"}
    assert render_mix(both, {**interleave, "interleave_probs": "0.9,0.1"}, 0.3) == {}
    assert render_mix(both, {"mix_strategy": "concat"}, 0.3) == {}
    # one set: a probability list from params would not match it, so it is dropped
    assert render_mix(["docs_sft"], {**interleave, "interleave_probs": "0.9,0.1"}, 0.3) == {
        "interleave_probs": None
    }


@pytest.mark.parametrize(("rows", "val_size"), [(5, 0.1), (11, 0.1), (7, 0.25), (20, 3.0)])
def test_validation_rows_match_the_split_llamafactory_makes(rows: int, val_size: float) -> None:
    from datasets import Dataset

    # LlamaFactory 0.9.5's own call (data_utils.split_dataset)
    test_size = int(val_size) if val_size > 1 else val_size
    split = Dataset.from_dict({"i": list(range(rows))}).train_test_split(test_size=test_size)
    assert len(split["test"]) == count_validation_rows(rows, val_size)


def test_a_set_too_small_to_split_trains_on_every_row_without_evaluation() -> None:
    train = {"val_size": 0.1, "eval_strategy": "steps", "early_stopping_steps": 3}
    plan = plan_validation(train, 10, 5, "sft", DOMAIN_SFT)
    # early stopping watches eval loss unless params name another metric
    assert plan == ValidationPlan(1, None, {"metric_for_best_model": "eval_loss"})
    small = plan_validation(train, 4, 5, "sft", DOMAIN_SFT)
    assert small.rows == 0 and small.overrides == EVAL_OFF
    assert small.skipped == (
        f"no validation split: set {DOMAIN_SFT} has 4 row(s), fewer than "
        "sft.validation_min_rows (5); every row trains"
    )
    whole = plan_validation({"val_size": 8, "eval_strategy": "epoch"}, 8, 5, "orpo", DOMAIN_PREF)
    assert whole.skipped and "val_size 8 would take all 8 row(s)" in whole.skipped
    off = plan_validation({"val_size": 0, "eval_strategy": "steps"}, 8, 5, "orpo", DOMAIN_PREF)
    assert off.skipped == "no validation split: orpo.train.val_size is 0"
    unused = plan_validation({"val_size": 0.1, "eval_strategy": "no"}, 8, 5, "sft", DOMAIN_SFT)
    assert unused.skipped and "eval_strategy is no" in unused.skipped
    # what LlamaFactory and transformers would refuse without an eval set is turned off
    layout = StageLayout(Path("out"), Path("ckpt"))
    config = render_train_config(
        "sft", Path("m"), [DOMAIN_SFT], Path("d"), layout, train, False, small.overrides
    )
    assert config["eval_strategy"] == "no"
    assert not {"val_size", "do_eval", "early_stopping_steps"} & config.keys()


# a training loss falling by 0.1 a step, logged every step; evaluations every other step
FALLING = [(s, round(3.0 - 0.1 * s, 2)) for s in range(1, 11)]
RISING = [(s, round(1.0 + 0.1 * s, 2)) for s in range(1, 11)]


@pytest.mark.parametrize(
    ("evals", "train", "found"),
    [
        ([(2, 2.0), (4, 1.7), (6, 1.8), (8, 1.9), (10, 2.2)], FALLING, (4, 10)),
        ([(2, 2.0), (4, 1.8), (6, 1.7), (8, 1.6), (10, 1.5)], FALLING, None),  # both fall
        ([(2, 2.0), (4, 1.8), (6, 1.7), (8, 1.6), (10, 1.9)], FALLING, None),  # one rise: noise
        ([(2, 2.0), (4, 1.7), (6, 1.8), (8, 1.9), (10, 1.7)], FALLING, None),  # back to best
        ([(2, 2.0), (4, 1.7), (6, 1.8), (8, 1.9), (10, 2.2)], RISING, None),  # both rise
        ([], FALLING, None),
    ],
)
def test_overfitting_is_eval_loss_rising_while_train_loss_falls(
    evals: list[tuple[int, float]], train: list[tuple[int, float]], found: tuple[int, int] | None
) -> None:
    assert find_overfitting(evals, train, patience=2) == found


def test_the_report_and_curves_carry_the_eval_loss(tmp_path: Path) -> None:
    evals = [(2, 2.0), (4, 1.7), (6, 1.8), (8, 1.9), (10, 2.2)]
    history = [{"step": s, "loss": v} for s, v in FALLING] + [
        {"step": s, "eval_loss": v} for s, v in evals
    ]
    history.append({"step": 10, "train_loss": 2.4, "train_runtime": 9.0})  # the run's summary
    config = {"early_stopping_steps": 3}
    report = summarize_validation(history, ValidationPlan(1), config, max_steps=12)
    assert report == {
        "rows": 1,
        "skipped": None,
        "evaluations": 5,
        "eval_loss_last": 2.2,
        "eval_loss_best": 1.7,
        "best_step": 4,
        "overfitting": True,
        "overfitting_from_step": 4,
        "overfitting_to_step": 10,
        "early_stopping_patience": 3,
        "stopped_early": True,  # 10 of 12 steps
    }
    skipped = ValidationPlan(0, "no validation split: why")
    report = summarize_validation(history[:10], skipped, {}, max_steps=10)
    assert report["overfitting"] is None and report["skipped"] == skipped.skipped
    write_loss_curves(tmp_path, "sft", history[:3] + history[10:11])
    loss_csv = (tmp_path / "sft_loss.csv").read_text()
    assert loss_csv == "step,loss,eval_loss\n1,2.9,\n2,2.8,2.0\n3,2.7,\n"  # blank: no eval
    assert (tmp_path / "sft_eval_loss.csv").read_text() == "step,eval_loss\n2,2.0\n"


def test_export_merges_lora_and_resaves_full(tmp_path: Path) -> None:
    layout = StageLayout(tmp_path / "out", tmp_path / "ckpt")
    lora = render_export_config(
        {"model_name_or_path": "m", "output_dir": "o", "template": "llama3"}, layout, {}
    )
    assert lora["model_name_or_path"] == "m" and lora["adapter_name_or_path"] == str(layout.adapter)
    assert lora["template"] == "llama3" and lora["export_dir"] == str(layout.staging)
    full = render_export_config(
        {"model_name_or_path": "m", "output_dir": "o", "finetuning_type": "full"}, layout, {}
    )
    assert full["model_name_or_path"] == "o" and "adapter_name_or_path" not in full


def test_missing_inputs_name_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(LlamaFactoryError, match=r"sft\.model: .* `dvc repro cpt`"):
        check_model_folder(tmp_path / "models/cpt/long", "sft.model", "cpt")
    with pytest.raises(LlamaFactoryError, match="dvc repro datasets"):
        read_dataset_names(tmp_path, ["docs_sft"])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"docs_sft": {}}))
    assert read_dataset_names(tmp_path, ["docs_sft"], ["general_sft"]) == ["docs_sft"]


def write_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"w")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_resume_picks_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    assert prepare_checkpoints(tmp_path, "a") == (None, "starting afresh (no earlier run)")
    write_checkpoint(tmp_path, 2)
    write_checkpoint(tmp_path, 10)
    write_checkpoint(tmp_path, 12, complete=False)  # killed while saving
    resume, why = prepare_checkpoints(tmp_path, "a")
    assert resume == tmp_path / "checkpoint-10" and why == "resuming from checkpoint-10"
    assert not (tmp_path / "checkpoint-12").exists()


def test_changed_settings_or_inputs_start_afresh(tmp_path: Path) -> None:
    prepare_checkpoints(tmp_path, "a")
    write_checkpoint(tmp_path, 4)
    assert prepare_checkpoints(tmp_path, "b") == (
        None,
        "starting afresh (settings or inputs changed)",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [FINGERPRINT_FILE]


def test_only_run_length_keys_keep_the_fingerprint() -> None:
    base = {"learning_rate": 1e-4, "max_steps": 10, "save_steps": 5}
    extra = {"inputs": "x"}
    longer = render_fingerprint({**base, "max_steps": 20, "save_steps": 10}, extra)
    assert longer == render_fingerprint(base, extra)
    assert render_fingerprint({**base, "learning_rate": 2e-4}, extra) != longer
    assert render_fingerprint(base, {"inputs": "y"}) != longer


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("{'loss': 'nan', 'grad_norm': 'nan', 'learning_rate': '0.001', 'epoch': '0.5'}", "loss"),
        ("{'loss': '10.5', 'sft_loss': 'inf', 'odds_ratio_loss': '0.7'}", "sft_loss"),
        ('{"current_steps": 3, "loss": NaN, "lr": 0.001}', "loss"),
        ("{'loss': '10.5', 'grad_norm': 'nan'}", None),
        ("  train_loss               =    10.7784", None),
        ("loading file nan_handling.py", None),
    ],
)
def test_nan_loss_lines_are_recognised(line: str, found: str | None) -> None:
    problem = parse_nonfinite_loss(line)
    assert (problem.split()[0] if problem else None) == found


def test_nan_in_the_trainer_log_fails_with_the_step(tmp_path: Path) -> None:
    log = tmp_path / "trainer_log.jsonl"
    rows = [{"current_steps": 1, "loss": 2.5}, {"current_steps": 2, "loss": math.nan}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes NaN bare
    history = read_log_history(tmp_path)
    with pytest.raises(NonFiniteLoss, match=r"sft: loss is nan at step 2; the run diverged"):
        check_finite_losses(history, "sft")
    check_finite_losses(history[:1], "sft")


def test_a_nan_line_stops_the_run_at_once() -> None:
    script = (
        "import time; print('step 1', flush=True); "
        "print(\"{'loss': 'nan', 'epoch': '0.5'}\", flush=True); time.sleep(60)"
    )
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(NonFiniteLoss, match="loss is nan"):
        run_streamed([sys.executable, "-c", script], {}, lines.append, what="sft")
    assert time.monotonic() - started < 30
    assert lines[0] == "step 1"


def test_a_failed_run_reports_its_last_lines() -> None:
    script = "import sys; print('ValueError: bad key', flush=True); sys.exit(3)"
    with pytest.raises(LlamaFactoryError, match=r"status 3; its last lines:\nValueError: bad key"):
        run_streamed([sys.executable, "-c", script], {}, lambda _: None)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PathsParams]:
    root = tmp_path_factory.mktemp("lf")
    return root, write_tiny_model(root / "tiny"), write_sets(root / "data")


def run_logs(state: Any) -> list[str]:
    """The flow run's log lines, as the Prefect UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs travel to the server in batches
    where = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(where, limit=200, offset=len(lines)):
            lines += [log.message for log in page]
    return lines


@pytest.fixture(scope="module")
def stages(prefect_harness: None, inputs: tuple[Path, Path, PathsParams]) -> dict[str, Any]:
    """sft on the tiny model, then orpo from sft's merged model, as `dvc repro` chains them."""
    root, tiny, paths = inputs
    sft = sft_params(root, tiny)
    sft_state = sft_flow(paths, sft, Path("unused"), 0.5, return_state=True)
    # early stopping on, with a patience longer than the run: LlamaFactory accepts the wiring
    orpo = orpo_params(root, sft.output / "model", max_steps=8, early_stopping_steps=10)
    orpo_state = orpo_flow(paths, orpo, Path("unused"), return_state=True)
    return {
        "paths": paths,
        "tiny": tiny,
        "sft": (sft, sft_state.result(), run_logs(sft_state)),
        "orpo": (orpo, orpo_state.result(), run_logs(orpo_state)),
    }


def weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {k: v for f in folder.glob("*.safetensors") for k, v in load_file(f).items()}


def generate(folder: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is p0w0?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    return str(tokenizer.decode(out[0]))


@pytest.mark.parametrize("stage", ["sft", "orpo"])
def test_stage_trains_and_writes_a_merged_model(stages: dict[str, Any], stage: str) -> None:
    params, report, logs = stages[stage]
    layout = StageLayout(params.output, params.checkpoints)
    start = stages["tiny"] if stage == "sft" else stages["sft"][0].output / "model"
    assert report["steps"] == params.train["max_steps"] and report["resumed_from"] is None
    assert (
        math.isfinite(report["loss"]["last"]) and report["loss"]["last"] < report["loss"]["first"]
    )
    # the exact YAMLs beside the model, and what they say
    train = yaml.safe_load(layout.train_yaml.read_text())
    assert train["model_name_or_path"] == str(start)
    assert train["stage"] == ("sft" if stage == "sft" else "dpo")
    assert train["lora_rank"] == 8 and train["report_to"] == "none"
    assert yaml.safe_load(layout.export_yaml.read_text())["adapter_name_or_path"] == str(
        layout.adapter
    )
    assert (layout.adapter / "adapter_model.safetensors").is_file()
    assert not layout.staging.exists()
    # merging changed the weights LoRA targeted, and plain transformers loads the result
    before, after = weights(start), weights(layout.model)
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)
    assert generate(layout.model)
    # LlamaFactory's output went line by line into the Prefect run log
    assert any(line.startswith("{'loss': ") for line in logs)
    reports = stages["paths"].reports
    assert json.loads((reports / f"{stage}.json").read_text())["steps"] == report["steps"]
    steps = params.train["max_steps"]
    curve = (reports / f"{stage}_loss.csv").read_text().splitlines()
    assert curve[0] == "step,loss,eval_loss" and len(curve) == 1 + steps
    # one row held out and evaluated every other step: eval_loss there, blank between
    evaluated = [int(row.split(",")[0]) for row in curve[1:] if not row.endswith(",")]
    assert evaluated == list(range(2, steps + 1, 2))
    assert train["val_size"] == 0.1 and train["eval_strategy"] == "steps"
    assert any("'eval_loss': " in line for line in logs)
    eval_curve = (reports / f"{stage}_eval_loss.csv").read_text().splitlines()
    assert eval_curve[0] == "step,eval_loss" and len(eval_curve) == 1 + len(evaluated)
    validation = report["validation"]
    assert validation["rows"] == 1 and validation["skipped"] is None
    assert validation["evaluations"] == len(evaluated)
    assert math.isfinite(validation["eval_loss_last"])
    assert isinstance(validation["overfitting"], bool)


def test_orpo_trains_from_the_merged_sft_model_without_a_reference(
    stages: dict[str, Any],
) -> None:
    params = stages["orpo"][0]
    train = yaml.safe_load(StageLayout(params.output, params.checkpoints).train_yaml.read_text())
    assert train["pref_loss"] == "orpo" and train["pref_beta"] == 0.1
    assert "ref_model" not in train


def test_orpo_margin_grows_on_a_separable_set(stages: dict[str, Any]) -> None:
    # chosen answers start "Because ...", rejected ones "No ...": separable by their first word
    params, report, _ = stages["orpo"]
    history = read_log_history(params.checkpoints)
    margins = [r["margin"] for r in extract_curve(history, {"margin": "rewards/margins"})]
    assert len(margins) == params.train["max_steps"]
    assert sum(margins[-2:]) / 2 > sum(margins[:2]) / 2
    assert margins[-1] > 0 and report["margin"]["last"] == margins[-1]
    rows = (stages["paths"].reports / "orpo_margins.csv").read_text().splitlines()
    assert rows[0] == "step,margin,chosen,rejected,accuracy"


def test_orpo_early_stopping_watches_the_eval_loss(stages: dict[str, Any]) -> None:
    params, report, _ = stages["orpo"]
    train = yaml.safe_load(StageLayout(params.output, params.checkpoints).train_yaml.read_text())
    assert train["early_stopping_steps"] == 10 and train["metric_for_best_model"] == "eval_loss"
    validation = report["validation"]
    assert validation["early_stopping_patience"] == 10 and validation["stopped_early"] is False
    # transformers tracked the same best evaluation the report names
    state = json.loads((params.checkpoints / "trainer_state.json").read_text())
    assert state["best_metric"] == pytest.approx(validation["eval_loss_best"])
    assert state["best_global_step"] == validation["best_step"]


def kill_when_saved(checkpoint_state: Path, killed: list[int]) -> None:
    """SIGKILL the llamafactory-cli this test process started, once it has saved a checkpoint."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not checkpoint_state.is_file():
        time.sleep(0.05)
    for child in psutil.Process().children(recursive=True):
        if any("llamafactory-cli" in part for part in child.cmdline()):
            child.kill()
            killed.append(child.pid)


def test_a_killed_run_resumes_from_its_last_checkpoint(
    prefect_harness: None, inputs: tuple[Path, Path, PathsParams]
) -> None:
    # full fine-tuning on a set too small for a validation split, so the export path without an
    # adapter and a run without evaluation are covered too
    root, tiny, paths = inputs
    thin = write_thin_set(paths.sft, root / "resume" / "sft", DOMAIN_SFT, rows=3)
    paths = paths.model_copy(update={"sft": thin, "reports": root / "resume" / "reports"})
    params = sft_params(
        root / "resume", tiny, finetuning_type="full", max_steps=12, learning_rate=1e-4
    )
    killed: list[int] = []
    watcher = threading.Thread(
        target=kill_when_saved,
        args=(params.checkpoints / "checkpoint-2" / "trainer_state.json", killed),
    )
    watcher.start()
    first = sft_flow(paths, params, Path("unused"), 0.5, return_state=True)
    watcher.join()
    assert killed and first.is_failed()
    saved = [int(p.name.split("-")[1]) for p in params.checkpoints.glob("checkpoint-*")]
    assert saved and max(saved) < 12

    second = sft_flow(paths, params, Path("unused"), 0.5, return_state=True)
    report = second.result()
    resumed = Path(report["resumed_from"])
    step = int(resumed.name.split("-")[1])
    assert resumed.parent == params.checkpoints and step >= 2
    logs = run_logs(second)
    assert any(f"Loading model from {resumed}" in line for line in logs)
    assert sum(line.startswith("{'loss': ") for line in logs) == 12 - step  # only the rest ran
    state = json.loads((params.checkpoints / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == list(range(1, 13))  # the checkpoint's history continued, no step twice
    assert report["finetuning_type"] == "full" and generate(params.output / "model")
    assert not (params.output / "adapter").exists()
    # every row trained, nothing was evaluated, and the report says why
    validation = report["validation"]
    assert validation["rows"] == validation["evaluations"] == 0
    assert validation["overfitting"] is None
    assert validation["skipped"] == (
        f"no validation split: set {DOMAIN_SFT} has 3 row(s), fewer than "
        "sft.validation_min_rows (5); every row trains"
    )
    train = yaml.safe_load((params.output / "train.yaml").read_text())
    assert train["eval_strategy"] == "no" and "val_size" not in train
    assert any(validation["skipped"] in line for line in logs)
    assert (paths.reports / "sft_eval_loss.csv").read_text() == "step,eval_loss\n"


@pytest.mark.slow
def test_stages_train_smollm2_on_the_cpu(
    prefect_harness: None, inputs: tuple[Path, Path, PathsParams]
) -> None:
    """The default model (models/base, SmolLM2-135M-Instruct) with the shipped CPU params,
    cut to a few steps: both stages finish with a finite, falling loss and a model that loads."""
    base = REPO / "models" / "base"
    if not (base / "config.json").is_file():
        pytest.skip("models/base is missing: run `dvc repro model`")
    root, _, paths = inputs
    shipped = load_params("sft", SftParams, REPO / "params.yaml")
    few = {"max_steps": 3, "save_steps": 3}
    sft = shipped.model_copy(
        update={
            "output": root / "smol/sft",
            "checkpoints": root / "smol/ckpt-sft",
            "train": {**shipped.train, **few},
        }
    )
    sft_report = sft_flow(paths, sft, base, 0.5)
    shipped_orpo = load_params("orpo", OrpoParams, REPO / "params.yaml")
    orpo = shipped_orpo.model_copy(
        update={
            "output": root / "smol/orpo",
            "checkpoints": root / "smol/ckpt-orpo",
            "train": {**shipped_orpo.train, **few},
        }
    )
    orpo_report = orpo_flow(paths, orpo, sft.output / "model")
    for report in (sft_report, orpo_report):
        assert report["steps"] == 3 and math.isfinite(report["loss"]["last"])
    assert generate(orpo.output / "model")


@pytest.mark.slow
def test_deepspeed_config_runs_through_torchrun(
    prefect_harness: None, inputs: tuple[Path, Path, PathsParams]
) -> None:
    """sft.deepspeed is written beside train.yaml and launched through torchrun (ZeRO-2 on the
    CPU; the first run JIT-compiles DeepSpeed's shared-memory op, ~1 min)."""
    root, tiny, paths = inputs
    zero2 = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": 2},
    }
    params = sft_params(root / "ds", tiny).model_copy(update={"deepspeed": zero2})
    state = sft_flow(paths, params, Path("unused"), 0.5, return_state=True)
    report = state.result()
    assert report["steps"] == params.train["max_steps"]
    assert json.loads((params.output / "deepspeed.json").read_text()) == zero2
    logs = run_logs(state)
    assert any("distributed training: True" in line for line in logs)
    assert generate(params.output / "model")


def test_a_set_below_the_minimum_passes_the_model_on_and_says_why(
    prefect_harness: None, inputs: tuple[Path, Path, PathsParams], tmp_path: Path
) -> None:
    _, tiny, paths = inputs
    empty = tmp_path / "orpo"
    shutil.copytree(paths.orpo, empty)
    (empty / f"{DOMAIN_PREF}.json").write_text("[]\n")
    thin = paths.model_copy(update={"orpo": empty, "reports": tmp_path / "reports"})
    params = orpo_params(tmp_path, tiny)
    report = orpo_flow(thin, params, Path("unused"), min_examples=1)
    assert report["skipped"] is True and report["model_passed_on_from"] == str(tiny)
    reason = report["reason"]
    assert f"set {DOMAIN_PREF} has 0 row(s)" in reason and "datasets.min_examples (1)" in reason
    assert str(empty / "exclusions.jsonl") in reason
    passed_on = weights(params.output / "model")
    assert passed_on.keys() == weights(tiny).keys()
    assert all(torch.equal(v, weights(tiny)[k]) for k, v in passed_on.items())
    assert json.loads((tmp_path / "reports" / "orpo.json").read_text())["skipped"] is True
    assert (tmp_path / "reports" / "orpo_loss.csv").read_text() == "step,loss,eval_loss\n"
    assert (tmp_path / "reports" / "orpo_eval_loss.csv").read_text() == "step,eval_loss\n"
    # a declared DVC output: a first run that skips must still leave it
    assert params.checkpoints.is_dir()


def test_an_empty_sft_set_passes_the_cpt_model_on_and_says_why(
    prefect_harness: None, inputs: tuple[Path, Path, PathsParams], tmp_path: Path
) -> None:
    _, tiny, paths = inputs
    empty = write_thin_set(paths.sft, tmp_path / "sft", DOMAIN_SFT, rows=0)
    thin = paths.model_copy(update={"sft": empty, "reports": tmp_path / "reports"})
    params = sft_params(tmp_path, tiny)
    report = sft_flow(thin, params, Path("unused"), 0.5, min_examples=2)
    assert report["skipped"] is True and report["model_passed_on_from"] == str(tiny)
    assert f"set {DOMAIN_SFT} has 0 row(s)" in report["reason"]
    assert "datasets.min_examples (2)" in report["reason"]
    passed_on = weights(params.output / "model")
    assert all(torch.equal(v, weights(tiny)[k]) for k, v in passed_on.items())
    assert json.loads((tmp_path / "reports" / "sft.json").read_text())["skipped"] is True
    assert params.checkpoints.is_dir()
