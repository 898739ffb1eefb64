"""synth: generate training data from every Markdown page through an OpenAI-compatible endpoint.

Run with `dvc repro synth` (or `python -m flows.synth`). The endpoint in params `synth.endpoint`
must be up (default: `python -m tasks.llm.server --port 8766`); it is checked before any work,
and so is `synth.faithfulness_endpoint` when it judges instead (synth.faithfulness_check).
With several URLs, a chunk's calls stay on one endpoint and one that keeps failing is taken out
of rotation (tasks/llm/client.py: EndpointPool).
Reads params `synth:` and data/markdown; writes data/qa/pairs.jsonl (Q/A pairs citing their
page), data/pref/triples.jsonl (<prompt, chosen, rejected> for ORPO), an exclusions.jsonl beside
each (every drop and failed page, with its reason), data/synth_cache/ (one file per LLM reply,
keyed by the call's hash, so reruns call only for changed pages and a killed run resumes; with
synth.faithfulness_check, the judge's verdicts on whether each answer's chunk supports it),
reports/synth.json and reports/synth_retry.yaml (the failed pages; while there are any, the
next `dvc repro` reruns the stage for them: see tasks/synth/rerun.py). Each page that needs
calls is a Prefect task run; cached pages are replayed. The stage fails after writing all of
that when too many pages failed (synth.max_failed_fraction) or when it kept too little of what
it asked for (synth.min_yield: tasks/synth/yields.py).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import run_name
from tasks.core.params import PathsParams, SynthParams, load_stage_params
from tasks.core.report import publish_report, write_report
from tasks.llm.client import ChatClient, build_pool, check_pool
from tasks.synth.generate import (
    PageOutcome,
    PageWork,
    Settings,
    SynthDirs,
    TokenCounter,
    TooManyFailedPages,
    check_failed_pages,
    open_judge,
    read_token_counter,
    run_logger,
    run_synth,
    synthesize_page,
)
from tasks.synth.rerun import RETRY_FILE, write_retry_state
from tasks.synth.yields import TooLowYield, check_yield


@task(name="synth-page", cache_policy=NO_CACHE, task_run_name="synth-{work.doc.id}")
async def synth_page(client: ChatClient, work: PageWork, settings: Settings) -> PageOutcome:
    return await synthesize_page(client, work, settings)


async def generate(dirs: SynthDirs, params: SynthParams, count: TokenCounter) -> dict[str, Any]:
    async with build_pool(params.endpoint, params.structured, run_logger()) as client:
        # Endpoints that are down are taken out of rotation here; with none left this fails,
        # naming every URL. Else this is the model they serve.
        served = await check_pool(client)
        async with open_judge(params, run_logger()) as judge:  # checked the same way
            return await run_synth(
                client, dirs, params, count, run_page=synth_page, endpoint_model=served, judge=judge
            )


@flow(name="synth", flow_run_name=run_name("synth"))
def synth_flow(paths: PathsParams, params: SynthParams) -> dict[str, Any]:
    """Synthesize grounded Q/A pairs and preference triples through the endpoint."""
    started = time.monotonic()
    count = read_token_counter(params.tokenizer, paths.cache / "tokenizers")
    dirs = SynthDirs(paths.markdown, paths.qa, paths.pref, paths.synth_cache)
    report = asyncio.run(generate(dirs, params, count))
    report["wall_s"] = round(time.monotonic() - started, 2)
    write_report(paths.reports, "synth", report)
    write_retry_state(paths.reports / RETRY_FILE, report["failed_pages"])
    publish_report("synth", report)
    check_failed_pages(report, params.max_failed_fraction)
    check_yield(report, params.min_yield)
    return report


if __name__ == "__main__":
    params = load_stage_params()
    try:
        synth_flow(params.paths, params.synth)
    except (TooManyFailedPages, TooLowYield) as exc:
        sys.exit(f"error: {exc}")
