"""The cpt stage on CPU: DeepSpeed ZeRO-2 through the real launcher and trainer on a tiny Llama
(hidden 64, 2 layers, byte vocabulary) and packed shards built by the tests.

Launcher runs cost ~15-30 s each on a 2-core machine (imports and DeepSpeed start-up, not the
steps), so runs are shared through module fixtures where tests only read them.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tasks.core.io import write_json_atomic
from tasks.core.packed import PAD_DOC, PackedRow, Segment
from tasks.core.params import CptParams, ParamsError
from tasks.core.procs import split_lines
from tasks.cpt.config import (
    DS_CONFIG_FILE,
    TRAIN_PARAMS_FILE,
    RunSpec,
    plan_steps,
    render_ds_config,
    render_fingerprint,
    render_launch_command,
    render_run_spec,
)
from tasks.cpt.data import collate_rows, micro_batch_rows
from tasks.cpt.launch import prepare_checkpoint_dir, read_step_log, read_trainer_result
from tasks.cpt.perplexity import measure_perplexity, split_windows
from tasks.cpt.train import EXIT_NONFINITE
from tests.support.cpt_fault_preload import EXIT_STOPPED, PRELOAD
from tests.support.cpt_fixtures import HELD_OUT, build_tiny_phase, launch_phase, tiny_params

# Resumed and uninterrupted runs replay the same fp32 arithmetic on the same rows from the
# same optimizer state, so they agree exactly here; the bound leaves room for a platform whose
# kernels are not bitwise deterministic.
RESUME_ATOL = 1e-6
STEPS = 12


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cpt")
    build_tiny_phase(root)
    return root


def fresh_root(tiny: Path, tmp_path: Path) -> Path:
    """A run folder sharing the tiny model and data (read only) with its own outputs."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("base", "data", "eval"):
        (tmp_path / name).symlink_to(tiny / name)
    return tmp_path


@pytest.fixture(scope="module")
def reference(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted 1-process ZeRO-2 run of STEPS steps, checkpointing every 4."""
    root = fresh_root(tiny, tmp_path_factory.mktemp("reference"))
    params = tiny_params(root, phases=phases(root, STEPS))
    spec, code, lines = launch_phase(params, root)
    assert code == 0, "\n".join(lines[-30:])
    return {"root": root, "spec": spec, "lines": lines}


def phases(root: Path, steps: int) -> dict[str, Any]:
    return {"tiny": {"seq_len": 64, "init_from": root / "base", "max_steps": steps}}


# ---- configuration -------------------------------------------------------------------------


def test_ds_config_maps_params_onto_deepspeed_keys(tmp_path: Path) -> None:
    params = tiny_params(
        tmp_path,
        deepspeed={
            "gradient_accumulation_steps": 4,
            "gradient_clipping": 0.5,
            "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
            "bf16": {"enabled": True},
        },
    )
    config = render_ds_config(params.deepspeed, 40, tmp_path / "tb", "tiny")
    assert set(config) == {
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "zero_optimization",
        "bf16",
        "fp16",
        "optimizer",
        "scheduler",
    }
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage"] == 2
    offload = config["zero_optimization"]["offload_optimizer"]
    assert offload == {"device": "cpu", "pin_memory": False}
    assert config["bf16"] == {"enabled": True}
    assert config["fp16"]["enabled"] is False
    assert config["optimizer"]["type"] == "AdamW"
    assert config["optimizer"]["params"]["torch_adam"] is True
    assert config["optimizer"]["params"]["betas"] == [0.9, 0.95]
    assert config["scheduler"] == {
        "type": "WarmupCosineLR",
        "params": {
            "total_num_steps": 40,
            "warmup_num_steps": 2,
            "warmup_type": "linear",
            "warmup_min_ratio": 0.1,
            "cos_min_ratio": 0.1,
        },
    }
    json.dumps(config)  # what the run spec carries to every rank


def test_ds_config_is_what_deepspeed_accepts(tmp_path: Path) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    params = tiny_params(tmp_path, deepspeed={"gradient_accumulation_steps": 2})
    config = DeepSpeedConfig(render_ds_config(params.deepspeed, 10, tmp_path, "tiny"))
    assert config.zero_optimization_stage == 2
    assert config.gradient_accumulation_steps == 2
    assert config.optimizer_name == "adamw"
    assert config.scheduler_name == "WarmupCosineLR"


def test_steps_follow_epochs_and_warmup_must_fit(tmp_path: Path) -> None:
    params = tiny_params(
        tmp_path,
        phases={"tiny": {"seq_len": 64, "init_from": tmp_path / "base"}},
        processes_per_node=2,
        epochs=2,
        deepspeed={"gradient_accumulation_steps": 2},
    )
    assert plan_steps(params, params.phases[0], 21) == 11  # ceil(2 * 21 / (1 * 2 * 2))
    with pytest.raises(ParamsError, match=r"warmup_num_steps \(2\) must be below the 1 steps"):
        plan_steps(params, params.phases[0], 1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"phases": {"a": {"seq_len": 64}, "b": {"seq_len": 128}}},
            r"exactly one phase must start from the base model .* found a, b",
        ),
        (
            {"phases": {"a": {"seq_len": 64, "init_from": "models/cpt/x"}}},
            "exactly one phase must start from the base model .* found none",
        ),
        (
            {
                "phases": {
                    "a": {"seq_len": 64},
                    "b": {"seq_len": 64, "init_from": "models/cpt/a"},
                    "c": {"seq_len": 64, "init_from": "models/cpt/x"},
                }
            },
            r"phases.c.init_from \(models/cpt/x\) is not the model of a phase",
        ),
        (
            {
                "phases": {
                    "a": {"seq_len": 64},
                    "b": {"seq_len": 64, "init_from": "models/cpt/a"},
                    "c": {"seq_len": 64, "init_from": "models/cpt/a"},
                }
            },
            "phases b, c all start from phase a: the curriculum is one chain",
        ),
        ({"sequence_parallel": 2, "processes_per_node": 2}, "cross_document_attention: true"),
        (
            {"sequence_parallel": 2, "processes_per_node": 2, "cross_document_attention": True},
            "needs cpt.deepspeed.bf16.enabled or cpt.deepspeed.fp16.enabled",
        ),
        ({"sequence_parallel": 2}, r"must divide nodes \* processes_per_node \(1\)"),
        ({"nodes": 2}, "nodes > 1 needs master_addr"),
        (
            {"deepspeed": {"bf16": {"enabled": True}, "fp16": {"enabled": True}}},
            r"cpt.deepspeed.bf16.enabled and cpt.deepspeed.fp16.enabled are exclusive",
        ),
        (
            {"deepspeed": {"tensorboard": {"enabled": True}}},
            "cpt.deepspeed.tensorboard.enabled needs the tensorboard package",
        ),
        (
            {"deepspeed": {"zero_optimization": {"offload_param": {"device": "cpu"}}}},
            r"cpt.deepspeed.zero_optimization.offload_param.device 'cpu' needs "
            r"cpt.deepspeed.zero_optimization.stage 3, got 2",
        ),
    ],
)
def test_params_fail_naming_the_setting(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CptParams.model_validate(overrides)


# A team's ds_config.json as it might be pasted in: keys the flow never reads included.
TEAM_DS_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 8,
    "gradient_clipping": 1.0,
    "steps_per_print": 50,
    "wall_clock_breakdown": False,
    "communication_data_type": "fp32",
    "zero_allow_untested_optimizer": True,
    "bf16": {"enabled": True},
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "reduce_bucket_size": 50_000_000,
        "stage3_prefetch_bucket_size": 50_000_000,
        "stage3_param_persistence_threshold": 100_000,
        "stage3_max_live_parameters": 1_000_000_000,
        "stage3_gather_16bit_weights_on_model_save": True,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True},
    },
    "optimizer": {
        "type": "AdamW",
        "params": {"lr": 2e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    },
    "scheduler": {
        "type": "WarmupDecayLR",
        "params": {"warmup_min_lr": 0, "warmup_max_lr": 2e-5, "warmup_num_steps": 100},
    },
    "flops_profiler": {"enabled": False},
    "activation_checkpointing": {"partition_activations": False},
}


def assert_holds(config: Any, given: Any, key: str = "deepspeed") -> None:
    """Every key of `given` is in `config` with the same value (nested objects may hold more)."""
    if isinstance(given, dict):
        assert isinstance(config, dict), key
        for name, value in given.items():
            assert name in config, f"{key}.{name} is missing"
            assert_holds(config[name], value, f"{key}.{name}")
    else:
        assert config == given and type(config) is type(given), key


def test_a_team_ds_config_lands_in_ds_config_json_unchanged(tmp_path: Path) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    params = CptParams.model_validate({"deepspeed": TEAM_DS_CONFIG})
    write_json_atomic(
        tmp_path / DS_CONFIG_FILE, render_ds_config(params.deepspeed, 500, tmp_path, "p8k")
    )
    written = json.loads((tmp_path / DS_CONFIG_FILE).read_text())
    assert_holds(written, TEAM_DS_CONFIG)
    # Another scheduler takes none of WarmupCosineLR's params; the flow adds the phase's steps.
    assert written["scheduler"]["params"] == {
        **TEAM_DS_CONFIG["scheduler"]["params"],
        "total_num_steps": 500,
    }
    assert written["optimizer"]["params"]["torch_adam"] is True  # a default the team left out
    assert "tensorboard" not in written
    assert DeepSpeedConfig(written).zero_optimization_stage == 3


@pytest.mark.parametrize(
    ("deepspeed", "message"),
    [
        (
            {"train_micro_batch_size_per_gpu": 0},
            "train_micro_batch_size_per_gpu must be an integer",
        ),
        ({"gradient_accumulation_steps": "auto"}, "gradient_accumulation_steps must be an integer"),
        ({"gradient_clipping": -1}, r"gradient_clipping must be a number >= 0"),
        ({"optimizer": {"params": {"lr": 0}}}, r"optimizer.params.lr must be a number > 0, got 0"),
        (
            {"optimizer": {"params": {"lr": "1e-4"}}},
            r"optimizer.params.lr must be a number > 0, got '1e-4'; YAML reads 1e-4 as a string",
        ),
        ({"optimizer": {"type": "Lamb", "params": {}}}, "optimizer.params.lr is missing"),
        ({"zero_optimization": {"stage": 4}}, r"zero_optimization.stage must be 0, 1, 2 or 3"),
        ({"bf16": {"enabled": "true"}}, "bf16.enabled must be true or false"),
        ({"fp16": {"enabled": 1}}, "fp16.enabled must be true or false"),
        ({"bf16": True}, "bf16 must be a JSON object, got True"),
        (
            {"scheduler": {"params": {"warmup_num_steps": 1}}},
            r"scheduler.params.warmup_num_steps must be an integer >= 2",
        ),
        (
            {"scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 1e-3}}},
            "scheduler.params.warmup_num_steps is missing",
        ),
        (
            {"scheduler": {"params": {"total_num_steps": 100}}},
            r"scheduler.params.total_num_steps is set by the flow \(the phase's steps",
        ),
        ({"tensorboard": {"job_name": "run"}}, "tensorboard.job_name is set by the flow"),
    ],
)
def test_deepspeed_keys_the_code_reads_fail_naming_the_key(
    deepspeed: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=r"cpt\.deepspeed\." + message):
        CptParams.model_validate({"deepspeed": deepspeed})


def test_tensorboard_events_go_beside_the_phase_checkpoints(tmp_path: Path) -> None:
    ds = {**tiny_params(tmp_path).deepspeed, "tensorboard": {"enabled": True}}
    config = render_ds_config(ds, 8, tmp_path / "tb", "tiny")
    assert config["tensorboard"] == {
        "enabled": True,
        "output_path": str(tmp_path / "tb"),
        "job_name": "tiny",
    }


def test_params_yaml_phases_chain_and_are_keyed_by_name() -> None:
    from tasks.core.params import load_params

    params = load_params("cpt", CptParams)
    assert [p.name for p in params.phases] == ["short", "long"]
    assert params.phases[1].init_from == params.output / "short"


def test_phases_follow_their_chain_whatever_the_key_order() -> None:
    """A tool that rewrites params.yaml with sorted keys must not reorder the curriculum."""
    keyed = {
        "c": {"seq_len": 256, "init_from": "models/cpt/b"},
        "a": {"seq_len": 64, "init_from": "models/base"},
        "b": {"seq_len": 128, "init_from": "models/cpt/a"},
    }
    params = CptParams.model_validate({"phases": keyed})
    assert [p.name for p in params.phases] == ["a", "b", "c"]
    as_list = [{"name": k, **v} for k, v in keyed.items()]
    assert CptParams.model_validate({"phases": as_list}).phases == params.phases


def test_launch_commands(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, processes_per_node=2)
    ds = render_launch_command(params, tmp_path / "run.json", 29501, python="py")
    assert ds[:3] == ["py", "-m", "deepspeed.launcher.runner"]
    assert "--num_gpus=2" in ds and "--master_port=29501" in ds
    assert ds[-3:] == ["--module", "tasks.cpt.train", str(tmp_path / "run.json")]
    torchrun = tiny_params(tmp_path, launcher="torchrun", processes_per_node=2)
    tr = render_launch_command(torchrun, tmp_path / "run.json", 29501, python="py")
    assert tr[:3] == ["py", "-m", "torch.distributed.run"] and "--nproc_per_node=2" in tr


def test_log_lines_split_on_newlines_and_progress_returns() -> None:
    lines, rest = split_lines(b"a\r\nstep 1\rstep 2\rlast\nhalf")
    assert lines == ["a", "step 1", "step 2", "last"] and rest == b"half"


# ---- data ----------------------------------------------------------------------------------


def test_documents_restart_positions_and_lose_their_first_label() -> None:
    row = PackedRow(
        [10, 11, 12, 20, 21, 0, 0], [Segment(0, 0, 3), Segment(1, 0, 2), Segment(PAD_DOC, 0, 2)]
    )
    masked = collate_rows([row], pad_id=0, restart_at_documents=True)
    assert masked.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert masked.labels.tolist() == [[-100, 11, 12, -100, 21, -100, -100]]
    assert masked.label_tokens == 3
    open_ = collate_rows([row], pad_id=0, restart_at_documents=False)
    assert open_.position_ids.tolist() == [list(range(7))]
    assert open_.labels.tolist() == [[10, 11, 12, 20, 21, -100, -100]]


def test_restarted_positions_keep_documents_from_attending_to_each_other(tiny: Path) -> None:
    """transformers turns positions that restart into a block-diagonal causal mask: each
    document of a packed row gets the logits it gets alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny / "base"), attn_implementation="sdpa")
    first, second = list(range(30, 50)), list(range(60, 72))
    row = PackedRow([*first, *second], [Segment(0, 0, 20), Segment(1, 0, 12)])
    batch = collate_rows([row], pad_id=0, restart_at_documents=True)
    with torch.no_grad():  # as the trainer calls it: no cache (with one, no packed mask)
        packed = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).logits[0]
        alone = [model(input_ids=torch.tensor([doc])).logits[0] for doc in (first, second)]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # without the restart the second document sees the first
        open_ = model(input_ids=batch.input_ids, use_cache=False).logits[0]
    assert not torch.allclose(open_[20:], alone[1], atol=1e-3)


def test_a_short_last_row_is_padded_without_labels_to_the_ring_multiple() -> None:
    full = PackedRow([1, 2, 3, 4, 5, 6], [Segment(0, 0, 6)])
    last = PackedRow([7, 8, 9], [Segment(1, 0, 3)])
    batch = collate_rows([full, last], pad_id=0, multiple=4, restart_at_documents=False)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 0, 0], [7, 8, 9, 0, 0, 0, 0, 0]]
    assert batch.labels[1].tolist() == [7, 8, 9, -100, -100, -100, -100, -100]
    assert batch.tokens == 16


def test_replicas_read_disjoint_consecutive_rows_and_wrap() -> None:
    taken = [micro_batch_rows(c, 2, r, 2, 10) for c in range(3) for r in range(2)]
    assert taken == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [0, 1]]


# ---- perplexity ----------------------------------------------------------------------------


def test_windows_drop_a_lone_last_token() -> None:
    assert split_windows(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_windows(list(range(10)), 4)[-1] == [8, 9]


@pytest.mark.parametrize("seq_len", [64, 1024])
def test_held_out_perplexity_counts_only_real_tokens(tiny: Path, seq_len: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = [HELD_OUT[0], "Short page."]
    got = measure_perplexity(tiny / "base", texts, seq_len)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny / "base"))
    model = AutoModelForCausalLM.from_pretrained(str(tiny / "base")).eval()
    total, count = 0.0, 0
    for text in texts:
        ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        for start in range(0, len(ids), seq_len):
            window = torch.tensor([ids[start : start + seq_len]])
            if window.shape[1] < 2:
                continue
            with torch.no_grad():  # transformers' own shifted mean loss over the window
                loss = model(input_ids=window, labels=window).loss
            total += float(loss) * (window.shape[1] - 1)
            count += window.shape[1] - 1
    assert got["tokens"] == count
    if seq_len > max(len(t.encode()) for t in texts):  # one window a page: bytes + EOS - 1
        assert count == sum(len(t.encode()) for t in texts)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_long_windows_score_the_same_in_chunks(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.core.perplexity

    whole = measure_perplexity(tiny / "base", HELD_OUT, 128)
    monkeypatch.setattr(tasks.core.perplexity, "LOGIT_CHUNK", 16)  # every window goes in chunks
    chunked = measure_perplexity(tiny / "base", HELD_OUT, 128)
    assert chunked["tokens"] == whole["tokens"]
    assert chunked["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-5)


# ---- training through the launcher ----------------------------------------------------------


def test_zero2_one_process_trains_and_loss_falls(reference: dict[str, Any]) -> None:
    spec: RunSpec = reference["spec"]
    steps = read_step_log(spec)
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    losses = [s["loss"] for s in steps]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses  # memorizable corpus
    assert all(s["grad_norm"] > 0 and s["tokens_per_s"] > 0 for s in steps)
    assert all(s["memory_mb"] > 0 and 0 < s["tokens"] <= 64 for s in steps)  # last row short
    result = read_trainer_result(spec)
    assert result["world_size"] == 1 and result["steps_run"] == STEPS
    assert result["resumed_from"] is None and result["nonfinite_skipped"] == 0
    trained = load_weights(spec.export_dir)
    base = load_weights(spec.init_from)
    assert max_weight_diff(trained, base) > 1e-3
    tags = sorted(p.name for p in spec.checkpoint_dir.glob("step-*"))
    assert tags == ["step-00000008", "step-00000012"]  # every 4 steps, newest 2 kept
    assert (spec.checkpoint_dir / "latest").read_text().strip() == "step-00000012"
    assert any("cpt tiny: 100%" in line for line in reference["lines"])  # the progress bar


def test_resume_after_a_kill_matches_the_uninterrupted_run(
    reference: dict[str, Any], tiny: Path, tmp_path: Path
) -> None:
    root = fresh_root(tiny, tmp_path)
    params = tiny_params(root, phases=phases(root, STEPS))
    # Killed after step 6: the checkpoint of step 4 survives; steps 5 and 6 are redone.
    spec, code, lines = launch_phase(params, root, stop_after_steps=6)
    assert code == EXIT_STOPPED, "\n".join(lines[-20:])
    assert (spec.checkpoint_dir / "latest").read_text().strip() == "step-00000004"
    assert not spec.export_dir.exists()
    spec, code, lines = launch_phase(params, root)
    assert code == 0, "\n".join(lines[-20:])
    result = read_trainer_result(spec)
    assert result["resumed_from"] == 4 and result["steps_run"] == STEPS - 4
    ref_steps = read_step_log(reference["spec"])
    steps = read_step_log(spec)
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    for ours, theirs in zip(steps, ref_steps, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        assert ours["lr"] == pytest.approx(theirs["lr"])
    reference_weights = load_weights(reference["spec"].export_dir)
    diff = max_weight_diff(load_weights(spec.export_dir), reference_weights)
    print(f"resume: max |w_resumed - w_uninterrupted| = {diff:.3g}")
    assert diff <= RESUME_ATOL


def test_zero2_two_processes_skip_a_nan_on_one_rank(tiny: Path, tmp_path: Path) -> None:
    root = fresh_root(tiny, tmp_path)
    params = tiny_params(
        root,
        phases=phases(root, 6),
        processes_per_node=2,
        deepspeed={"gradient_accumulation_steps": 2},
    )
    # Only rank 0 sees the NaN, in the second micro-batch of step 2: both ranks drop it before
    # its backward and take the next one, so DeepSpeed's accumulation stays in step.
    spec, code, lines = launch_phase(params, root, nonfinite_at=(3,))
    assert code == 0, "\n".join(lines[-30:])
    result = read_trainer_result(spec)
    assert result["world_size"] == 2 and result["data_parallel"] == 2
    assert result["nonfinite_skipped"] == 1 and result["micro_batches"] == 6 * 2 + 1
    steps = read_step_log(spec)
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert all(math.isfinite(s["loss"]) for s in steps)
    assert all(2 * 64 < s["tokens"] <= 2 * 2 * 64 for s in steps)  # 2 replicas x 2 micro
    assert max_weight_diff(load_weights(spec.export_dir), load_weights(spec.init_from)) > 1e-4


def test_nan_guard_stops_after_k_in_a_row(tiny: Path, tmp_path: Path) -> None:
    root = fresh_root(tiny, tmp_path)
    params = tiny_params(root, phases=phases(root, 6), max_nonfinite_in_row=3)
    spec, code, lines = launch_phase(params, root, nonfinite_at=(1, 3, 4, 5))
    assert code == EXIT_NONFINITE
    assert any("3 non-finite losses in a row" in line for line in lines), lines[-10:]
    steps = read_step_log(spec)
    # Cursor 0 trains step 1, cursor 1 is skipped, 2 trains step 2, then 3, 4, 5 stop the run.
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[-1]["nonfinite_skipped"] == 1
    assert not spec.export_dir.exists()


@pytest.mark.slow
def test_a_rank_killed_mid_run_resumes_to_the_same_weights(tiny: Path, tmp_path: Path) -> None:
    """SIGKILL to the training process (as the OOM killer would) while it trains, then a
    restart: the weights match an uninterrupted run of the same steps."""
    steps, exports = 60, {}  # tiny steps take ~20 ms: the kill may land a few steps late
    for name in ("whole", "killed"):
        root = fresh_root(tiny, tmp_path / name)
        params = tiny_params(root, phases=phases(root, steps), checkpoint_steps=10)
        killed: list[int] = []

        def kill_mid_run(line: str, name: str = name, killed: list[int] = killed) -> None:
            if pid := re.search(r"process (\d+) spawned", line):
                killed.append(int(pid.group(1)))
            done = re.search(r"cpt tiny:.*\|\s*(\d+)/\d+ \[", line)  # tqdm: "| 25/150 ["
            if name == "killed" and done and int(done.group(1)) >= 25 and len(killed) == 1:
                os.kill(killed[0], signal.SIGKILL)
                killed.append(int(done.group(1)))

        spec, code, lines = launch_phase(params, root, watch=kill_mid_run)
        if name == "killed":
            assert code != 0 and len(killed) == 2, "\n".join(lines[-20:])
            latest = (spec.checkpoint_dir / "latest").read_text().strip()
            print(f"killed at step ~{killed[1]}, newest checkpoint {latest}")
            spec, code, lines = launch_phase(params, root)
            assert read_trainer_result(spec)["resumed_from"] == int(latest.split("-")[1])
        assert code == 0, "\n".join(lines[-20:])
        assert [s["step"] for s in read_step_log(spec)] == list(range(1, steps + 1))
        exports[name] = load_weights(spec.export_dir)
    diff = max_weight_diff(exports["whole"], exports["killed"])
    print(f"resume after SIGKILL: max |w_resumed - w_uninterrupted| = {diff:.3g}")
    assert diff <= RESUME_ATOL


@pytest.mark.slow
def test_zigzag_ring_of_two_matches_one_process(tiny: Path, tmp_path: Path) -> None:
    """sequence_parallel 2 on CPU (ring_flash_attn over the stand-in kernels, bf16) against
    sequence_parallel 1 (SDPA, bf16) on the same rows: both ranks of the ring read the same
    rows as the single process does."""
    losses = {}
    for ring in (1, 2):
        root = fresh_root(tiny, tmp_path / f"ring{ring}")
        params = tiny_params(
            root,
            phases=phases(root, 4),
            processes_per_node=ring,
            sequence_parallel=ring,
            cross_document_attention=True,
            deepspeed={"bf16": {"enabled": True}},
        )
        preload = ("tests.support.cpt_ring_preload",) if ring > 1 else ()
        spec, code, lines = launch_phase(params, root, preload=preload)
        assert code == 0, "\n".join(lines[-30:])
        losses[ring] = [s["loss"] for s in read_step_log(spec)]
    print(f"ring losses: {losses}")
    assert losses[2] == pytest.approx(losses[1], abs=5e-3)  # measured: 1e-4


# ---- the flow ------------------------------------------------------------------------------


def flow_paths(root: Path) -> Any:
    from tasks.core.params import PathsParams

    return PathsParams(
        base_model=root / "base", cpt=root / "data", eval=root / "eval", reports=root / "reports"
    )


def test_flow_writes_model_reports_and_resumes_when_rerun(
    prefect_harness: None, tiny: Path, tmp_path: Path
) -> None:
    from flows.cpt import cpt_flow

    root = fresh_root(tiny, tmp_path)
    params = tiny_params(root, phases=phases(root, 4))
    report = cpt_flow(flow_paths(root), params, "tiny")
    model = root / "models" / "tiny"
    assert {"config.json", "model.safetensors", "tokenizer.json", DS_CONFIG_FILE} <= {
        p.name for p in model.iterdir()
    }
    ds_config = json.loads((model / DS_CONFIG_FILE).read_text())
    assert ds_config["scheduler"]["params"]["total_num_steps"] == 4
    train_params = json.loads((model / TRAIN_PARAMS_FILE).read_text())
    assert train_params["phase"]["name"] == "tiny" and train_params["steps"] == 4
    saved = json.loads((root / "reports" / "cpt_tiny.json").read_text())
    assert saved["checkpoints"] == "fresh" and saved["run"]["steps_run"] == 4
    held_out = saved["perplexity"]
    assert held_out["trained"]["perplexity"] < held_out["init_from"]["perplexity"]
    page_tokens = len(HELD_OUT[0].encode()) + 1  # bytes + EOS, in windows of 64
    assert held_out["trained"]["tokens"] == page_tokens - math.ceil(page_tokens / 64)
    csv_lines = (root / "reports" / "cpt_tiny_steps.csv").read_text().splitlines()
    assert csv_lines[0] == "step,loss,lr,grad_norm,tokens_per_s,memory_mb" and len(csv_lines) == 5
    assert report["final"]["step"] == 4
    # A rerun with the same settings and inputs (e.g. `dvc repro -f`) resumes at the end.
    again = cpt_flow(flow_paths(root), params, "tiny")
    assert again["checkpoints"] == "resume" and again["run"]["steps_run"] == 0
    assert again["run"]["resumed_from"] == 4
    assert again["final"] == report["final"]


def test_checkpoints_of_other_settings_or_inputs_are_cleared(tmp_path: Path) -> None:
    params = tiny_params(tmp_path)
    spec = render_run_spec(params, params.phases[0], 8, tmp_path / "data")
    inputs = {"init_from": "aa", "data": "bb"}
    folder = spec.checkpoint_dir
    assert prepare_checkpoint_dir(folder, render_fingerprint(spec, inputs)) == "fresh"
    (folder / "latest").write_text("step-00000004")
    assert prepare_checkpoint_dir(folder, render_fingerprint(spec, inputs)) == "resume"
    # Preloaded modules (the tests' faults) and the checkpoint cadence may change between runs.
    hooked = spec.model_copy(update={"preload": (PRELOAD,), "checkpoint_steps": 1})
    assert prepare_checkpoint_dir(folder, render_fingerprint(hooked, inputs)) == "resume"
    longer = render_run_spec(params, params.phases[0], 9, tmp_path / "data")
    outcome = prepare_checkpoint_dir(folder, render_fingerprint(longer, inputs))
    assert outcome == "restart: ds_config, steps changed since the checkpoints"
    assert not (folder / "latest").exists()
    (folder / "latest").write_text("step-00000004")
    outcome = prepare_checkpoint_dir(folder, render_fingerprint(longer, {**inputs, "data": "cc"}))
    assert outcome == "restart: data changed since the checkpoints"


@pytest.mark.slow
def test_flow_chains_two_phases(prefect_harness: None, tiny: Path, tmp_path: Path) -> None:
    from flows.cpt import cpt_flow
    from tests.support.cpt_fixtures import write_tiny_phase

    root = fresh_root(tiny, tmp_path)
    (root / "data").unlink()
    for name, seq_len in (("a", 64), ("b", 128)):
        write_tiny_phase(root / "data", name, seq_len, root / "base")
    chain = {
        "a": {"seq_len": 64, "init_from": root / "base", "max_steps": 4},
        "b": {"seq_len": 128, "init_from": root / "models" / "a", "max_steps": 3},
    }
    params = tiny_params(root, phases=chain)
    first = cpt_flow(flow_paths(root), params, "a")
    second = cpt_flow(flow_paths(root), params, "b")
    assert second["init_from"] == str(root / "models" / "a")
    assert second["perplexity"]["init_from"] == pytest.approx(
        cpt_flow_perplexity(root / "models" / "a", 128)
    )
    assert first["seq_len"] == 64 and second["seq_len"] == 128
    assert second["run"]["steps_run"] == 3


def cpt_flow_perplexity(model: Path, seq_len: int) -> dict[str, Any]:
    return measure_perplexity(model, HELD_OUT, seq_len)


def test_flow_fails_before_training_without_packed_rows(
    prefect_harness: None, tmp_path: Path
) -> None:
    from flows.cpt import cpt_flow

    params = tiny_params(tmp_path)
    with pytest.raises(FileNotFoundError, match="run `dvc repro datasets` first"):
        cpt_flow(flow_paths(tmp_path), params, "tiny")


def test_run_spec_round_trips(tmp_path: Path) -> None:
    params = tiny_params(tmp_path)
    spec = render_run_spec(params, params.phases[0], 8, tmp_path / "data", (PRELOAD,))
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec
