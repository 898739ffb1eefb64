"""cpt: continual pre-training of one curriculum phase with DeepSpeed.

Run with `dvc repro cpt@short` (every phase in order: `dvc repro cpt`), or
`python -m flows.cpt short` (no phase named: every phase in order). Reads params `cpt:`, the
phase's packed rows data/cpt/<phase>, the held-out pages data/eval/pages.jsonl and the model
the phase starts from (`init_from`: models/base, then the previous phase's model). Starts
tasks.cpt.train under the deepspeed launcher (or torchrun) and streams its log into the Prefect
run; a run killed part-way resumes from the newest checkpoint in <cpt.checkpoints>/<phase>
when its settings and inputs are unchanged. Writes models/cpt/<phase> (model, tokenizer,
ds_config.json, train_params.json), reports/cpt_<phase>.json (run summary, final step,
held-out perplexity of the starting and the trained model) and reports/cpt_<phase>_steps.csv
(loss, lr, grad norm, tokens/s and memory per step; a DVC plot).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import run_name
from tasks.core.io import write_text_atomic
from tasks.core.packed import read_phase_meta
from tasks.core.params import CptParams, ParamsError, PathsParams, load_stage_params
from tasks.core.procs import free_port, stream_process
from tasks.core.report import finish_report
from tasks.cpt.config import (
    RUN_FILE,
    RunSpec,
    plan_steps,
    render_fingerprint,
    render_launch_command,
    render_launch_env,
    render_run_spec,
    render_train_params,
)
from tasks.cpt.launch import (
    check_phase_inputs,
    find_stale_build_locks,
    find_torch_extensions_dir,
    prepare_checkpoint_dir,
    read_input_hashes,
    read_step_log,
    read_trainer_result,
    render_report,
    render_steps_csv,
    write_model_folder,
    write_run_spec,
)
from tasks.cpt.perplexity import measure_perplexity, read_eval_texts


@task(name="prepare-checkpoints", cache_policy=NO_CACHE)
def prepare(spec: RunSpec) -> str:
    check_phase_inputs(spec)
    fingerprint = render_fingerprint(spec, read_input_hashes(spec))
    outcome = prepare_checkpoint_dir(spec.checkpoint_dir, fingerprint)
    get_run_logger().info("checkpoints in %s: %s", spec.checkpoint_dir, outcome)
    write_run_spec(spec)
    return outcome


@task(name="train", cache_policy=NO_CACHE)
def train(spec: RunSpec, params: CptParams) -> dict[str, Any]:
    import torch

    port = params.master_port or free_port()
    command = render_launch_command(params, spec.checkpoint_dir / RUN_FILE, port)
    env = render_launch_env(
        os.environ, params, cuda=torch.cuda.is_available(), cores=os.cpu_count() or 1
    )
    logger = get_run_logger()
    for lock in find_stale_build_locks(find_torch_extensions_dir(env)):
        minutes = (time.time() - lock.stat().st_mtime) / 60
        logger.warning(
            "%s is %.0f minutes old: a build killed part-way leaves it, and the trainer then "
            "waits on it for ever; if no compiler is running, delete it",
            lock,
            minutes,
        )
    code, tail = stream_process(command, env, logger.info)
    if code != 0:
        last = "\n".join(tail[-15:])
        raise RuntimeError(f"the cpt trainer exited with code {code}; its last lines:\n{last}")
    return read_trainer_result(spec)


@task(name="write-model", cache_policy=NO_CACHE)
def write_model(spec: RunSpec, params: CptParams) -> Path:
    final = params.output / spec.phase
    write_model_folder(spec, final, render_train_params(params, spec), spec.init_from)
    return final


@task(name="held-out-perplexity", cache_policy=NO_CACHE)
def perplexity(model_dir: Path, texts: list[str], seq_len: int) -> dict[str, Any]:
    return measure_perplexity(model_dir, texts, seq_len)


@flow(name="cpt", flow_run_name=run_name("cpt", key="phase"))
def cpt_flow(paths: PathsParams, params: CptParams, phase: str) -> dict[str, Any]:
    """Continue pre-training one curriculum phase with DeepSpeed from its starting model."""
    started = time.monotonic()
    settings = params.phase(phase)
    steps = plan_steps(params, settings, read_phase_meta(paths.cpt / phase).rows)
    spec = render_run_spec(params, settings, steps, paths.cpt)
    if params.rank_of_node > 0:
        # Not node 0: only this node's ranks, on the run spec node 0 wrote (node 0 starts
        # first); node 0 writes the model and the report.
        return train(spec, params)
    texts = read_eval_texts(paths.eval)  # missing inputs fail before training
    checkpoints = prepare(spec)
    result = train(spec, params)
    model_dir = write_model(spec, params)
    held_out = {
        "trained": perplexity(model_dir, texts, spec.seq_len),
        "init_from": perplexity(spec.init_from, texts, spec.seq_len),
    }
    step_log = read_step_log(spec)
    write_text_atomic(paths.reports / f"cpt_{phase}_steps.csv", render_steps_csv(step_log))
    report = render_report(spec, checkpoints, result, step_log, held_out)
    return finish_report(paths.reports, f"cpt_{phase}", report, started)


def main(argv: list[str]) -> None:
    loaded = load_stage_params()
    paths, params = loaded.paths, loaded.cpt
    names = argv or [p.name for p in params.phases]
    try:
        for name in names:
            params.phase(name)  # an unknown phase fails before any run starts
    except ParamsError as exc:
        raise SystemExit(f"error: {exc}") from None
    for name in names:
        cpt_flow(paths, params, name)


if __name__ == "__main__":
    main(sys.argv[1:])
