"""The synth stage end to end on the Markdown the markdown stage makes from real PostgreSQL
pages: outputs and report, incrementality (an unchanged rerun makes no calls, a changed page
costs only its own calls), resume after a kill, and the failed-page threshold. The scripted
client records prompts; one test goes through the real openai SDK to a fake HTTP server."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tasks.core.documents import parse_document, render_document
from tasks.core.params import EndpointParams, SamplingParams, SynthParams
from tasks.core.records import PreferenceTriple, QAPair
from tasks.llm.client import (
    Backoff,
    EndpointError,
    EndpointPool,
    OpenAIChatClient,
    build_client,
    check_endpoint,
    check_pool,
)
from tasks.markdown.build import build_markdown
from tasks.synth.generate import (
    SynthDirs,
    TooManyFailedPages,
    check_failed_pages,
    read_token_counter,
    run_synth,
)
from tasks.synth.prompts import grammar_max_chars
from tests.support.fake_openai import (
    Behaviour,
    FakeOpenAI,
    drop,
    malformed,
    ok,
    serve_fake_openai,
    sleep,
    status,
)
from tests.support.fixture_site import FIXTURE_SITE, PARAMS, crawl
from tests.support.synth_fakes import RecordingRunner, ScriptedClient, scripted_reply

REPO = Path(__file__).resolve().parents[2]
TOKENIZERS = REPO / ".cache" / "tokenizers"  # shared with the markdown stage; made once
SYNTH = SynthParams()  # the shipped defaults: 1024-token chunks, gbnf grammars


@pytest.fixture(scope="module")
def markdown_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pg15")
    crawl(FIXTURE_SITE, root / "raw")
    build_markdown(root / "raw", root / "md", PARAMS, TOKENIZERS)
    return root / "md"


@pytest.fixture(scope="module")
def count() -> Any:
    return read_token_counter(None, TOKENIZERS)


@pytest.fixture
def dirs(tmp_path: Path, markdown_dir: Path) -> SynthDirs:
    shutil.copytree(markdown_dir, tmp_path / "md")
    return SynthDirs(tmp_path / "md", tmp_path / "qa", tmp_path / "pref", tmp_path / "cache")


def run(
    client: Any, dirs: SynthDirs, count: Any, params: SynthParams = SYNTH, run_page: Any = None
) -> dict[str, Any]:
    if run_page is None:
        return asyncio.run(run_synth(client, dirs, params, count))
    return asyncio.run(run_synth(client, dirs, params, count, run_page=run_page))


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def page_file(dirs: SynthDirs, name: str) -> Path:
    return next(p for p in dirs.markdown.glob("*.md") if is_page(p.read_text(), name))


def is_page(text: str, name: str) -> bool:
    """Whether a page file or a prompt is about page `name` (by its front matter's url)."""
    return re.search(rf"^url: \S+/{re.escape(name)}$", text, re.MULTILINE) is not None


def cache_files(dirs: SynthDirs) -> set[str]:
    return {p.name for p in dirs.cache.glob("*/*.json")}


def test_stage_writes_pairs_triples_and_report(dirs: SynthDirs, count: Any) -> None:
    client = ScriptedClient()
    report = run(client, dirs, count)

    assert report["pages"] == 4 and report["pages_failed"] == 0
    assert report["pages_over_max_pages"] == 0
    assert report["chunks"] > 4  # the long pages were split
    assert report["calls"] == {"made": len(client.prompts), "reused": 0, "failed": 0}
    assert report["tokens"]["completion_made"] == report["tokens"]["completion_total"] > 0
    assert "cost" not in report
    pairs = [QAPair.model_validate(r) for r in read_rows(dirs.qa / "pairs.jsonl")]
    triples = [PreferenceTriple.model_validate(r) for r in read_rows(dirs.pref / "triples.jsonl")]
    assert len(pairs) == report["pairs"] > 0 and len(triples) == report["triples"] > 0
    for pair in pairs:
        assert pair.answer.endswith(f"(Source: {pair.url}, PostgreSQL {pair.version})")
        assert pair.product == "PostgreSQL" and pair.model == "scripted-model"
    assert {t.kind.value for t in triples} == {"good", "false_premise"}
    assert sum(report["competency_mix"].values()) == len(triples)
    # Dropped items are in the exclusions file with their reason, counted in the report.
    excluded = read_rows(dirs.qa / "exclusions.jsonl") + read_rows(dirs.pref / "exclusions.jsonl")
    assert excluded and all(r["reason"] and r["detail"] for r in excluded)
    # ... and so is every page, section and main point that kept nothing.
    gaps = Counter(r["reason"] for r in excluded if r["reason"].startswith("uncovered_"))
    assert {r["reason"] for r in excluded} - set(gaps) <= {
        k.split(".", 1)[1] for k in [*report["dropped_by_reason"], *report["parse_failures"]]
    }
    coverage = report["coverage"]
    assert gaps == {
        f"uncovered_{name[:-1]}": c["total"] - c["covered"]
        for name, c in coverage.items()
        if c["covered"] < c["total"]
    }
    assert coverage["pages"] == {"covered": 4, "total": 4, "share": 1.0}
    assert 0 < report["grounding"]["grounded_share"] <= 1
    ids = [p.id for p in pairs]
    assert len(set(ids)) == len(ids)


def test_max_pages_limits_the_work_and_says_so(dirs: SynthDirs, count: Any) -> None:
    report = run(ScriptedClient(), dirs, count, SYNTH.model_copy(update={"max_pages": 1}))
    assert report["pages"] == 1 and report["pages_over_max_pages"] == 3
    skipped = [
        r for r in read_rows(dirs.qa / "exclusions.jsonl") if r["reason"] == "over_max_pages"
    ]
    assert len(skipped) == 3


def test_cost_line_when_prices_are_set(dirs: SynthDirs, count: Any) -> None:
    prices = {"max_pages": 1, "price_prompt_per_mtok": 1.0, "price_completion_per_mtok": 2.0}
    report = run(ScriptedClient(), dirs, count, SYNTH.model_copy(update=prices))
    tokens = report["tokens"]
    expected = (tokens["prompt_made"] + 2 * tokens["completion_made"]) / 1e6
    assert report["cost"] == {"made_usd": round(expected, 6), "total_usd": round(expected, 6)}


def test_unchanged_rerun_makes_no_calls_and_a_changed_page_only_its_own(
    dirs: SynthDirs, count: Any
) -> None:
    first = run(ScriptedClient(), dirs, count)
    before = snapshot(dirs.qa, dirs.pref, dirs.cache)

    again, runner = ScriptedClient(), RecordingRunner()
    report = run(again, dirs, count, run_page=runner)
    assert again.prompts == [] and runner.urls == []  # cached pages are replayed inline
    assert report["calls"]["made"] == 0 and report["calls"]["reused"] == first["calls"]["made"]
    assert report["cache_pruned"] == 0
    assert snapshot(dirs.qa, dirs.pref, dirs.cache) == before

    page = page_file(dirs, "backup-file.html")
    page.write_text(page.read_text().replace("file system", "filesystem"))
    changed, runner = ScriptedClient(), RecordingRunner()
    report = run(changed, dirs, count, run_page=runner)
    assert changed.prompts and all(is_page(u, "backup-file.html") for u in changed.users())
    assert [Path(u).name for u in runner.urls] == ["backup-file.html"]
    assert report["calls"]["made"] == len(changed.prompts)
    assert report["cache_pruned"] == 0 and report["cache"]["unused"] > 0  # the old version's
    assert report["calls"]["made"] + report["calls"]["reused"] + report["cache"]["unused"] == (
        len(cache_files(dirs))
    )

    pruning = SYNTH.model_copy(update={"cache_prune_unused_days": 0.0})
    report = run(ScriptedClient(), dirs, count, pruning)
    assert report["calls"]["made"] == 0 and report["cache_pruned"] > 0
    assert report["calls"]["reused"] == len(cache_files(dirs)) == report["cache"]["entries"]


def test_a_temporary_params_change_throws_no_paid_reply_away(dirs: SynthDirs, count: Any) -> None:
    first = run(ScriptedClient(), dirs, count)
    files = len(cache_files(dirs))
    narrow = run(ScriptedClient(), dirs, count, SYNTH.model_copy(update={"max_pages": 1}))
    assert narrow["cache_pruned"] == 0 and len(cache_files(dirs)) == files
    client = ScriptedClient()
    back = run(client, dirs, count)
    assert client.prompts == [] and back["calls"]["reused"] == first["calls"]["made"]
    assert back["cache"]["entries"] == files and back["cache"]["bytes"] > 0


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, asyncio.CancelledError])
def test_killed_run_resumes_without_redoing_finished_calls(
    dirs: SynthDirs, count: Any, interrupt: type[BaseException]
) -> None:
    def kill_after_40(messages: list[dict[str, str]], n: int) -> BaseException | None:
        return interrupt() if n == 41 else None

    full = ScriptedClient()
    fresh = dirs.cache.parent / "fresh"
    run(full, SynthDirs(dirs.markdown, fresh / "qa", fresh / "pref", fresh / "cache"), count)

    with pytest.raises(interrupt):
        run(ScriptedClient(fail=kill_after_40), dirs, count)
    finished = cache_files(dirs)
    # A KeyboardInterrupt stops everything; a cancelled call lets its siblings finish first.
    assert 0 < len(finished) < len(full.prompts)
    assert not list(dirs.qa.glob("*.jsonl"))  # no output until a run completes

    resumed = ScriptedClient()
    report = run(resumed, dirs, count)
    assert report["calls"]["reused"] == len(finished)
    assert report["calls"]["made"] + len(finished) == len(full.prompts)
    assert (dirs.qa / "pairs.jsonl").read_bytes() == (fresh / "qa" / "pairs.jsonl").read_bytes()


def test_failing_page_is_recorded_and_the_threshold_decides(dirs: SynthDirs, count: Any) -> None:
    def fail_dump(messages: list[dict[str, str]], n: int) -> BaseException | None:
        if is_page(messages[-1]["content"], "backup-dump.html"):
            return EndpointError("http://127.0.0.1:8766/v1/chat/completions: HTTP 500")
        return None

    tolerant = SYNTH.model_copy(update={"max_failed_fraction": 0.5})
    report = run(ScriptedClient(fail=fail_dump), dirs, count, tolerant)
    assert report["pages_failed"] == 1 and report["calls"]["failed"] > 0
    errors = [r for r in read_rows(dirs.qa / "exclusions.jsonl") if r["reason"] == "endpoint_error"]
    assert len(errors) == 1 and errors[0]["url"].endswith("backup-dump.html")
    assert "HTTP 500" in errors[0]["detail"]
    [failed] = report["failed_pages"]  # what a rerun retries, with why it failed
    assert failed["url"] == errors[0]["url"] and "HTTP 500" in failed["error"]
    pairs = read_rows(dirs.qa / "pairs.jsonl")
    assert pairs and not any(r["url"].endswith("backup-dump.html") for r in pairs)
    check_failed_pages(report, tolerant.max_failed_fraction)
    with pytest.raises(TooManyFailedPages, match="1 of 4 pages failed"):
        check_failed_pages(report, SYNTH.max_failed_fraction)

    # Once the endpoint recovers, only the failed page's calls are made.
    recovered = ScriptedClient()
    report = run(recovered, dirs, count)
    assert report["pages_failed"] == 0 and report["failed_pages"] == []
    assert recovered.prompts and all(is_page(u, "backup-dump.html") for u in recovered.users())


def test_stage_through_the_openai_sdk_and_a_fake_server(dirs: SynthDirs, count: Any) -> None:
    """Tier 2: the real client, wire format and grammar field, against a fake HTTP server."""

    truncated: list[str] = []

    def respond(body: dict[str, Any]) -> Any:
        if not truncated and "<QUE> question <ANS>" in body["messages"][-1]["content"]:
            truncated.append("qa")  # the first Q/A reply stops at max_tokens mid-answer
            return ok("<QUE> What is a dump? <ANS> A dump", finish_reason="length")
        return ok(scripted_reply(body["messages"]), delay_s=0.01)  # so calls overlap

    with serve_fake_openai() as fake:
        fake.responder = respond
        endpoint = EndpointParams(
            base_url=fake.base_url, model=fake.model, concurrency=3, retries=0
        )
        params = SYNTH.model_copy(update={"endpoint": endpoint})
        report = asyncio.run(run_via_client(dirs, params, count))

    assert report["pairs"] > 0 and report["triples"] > 0
    assert report["calls"]["made"] == len(fake.chat_bodies)
    assert report["parse_failures"].get("qa.truncated") == 1
    # With a grammar, max_tokens rises to the longest reply it allows, so none is cut off.
    longest = grammar_max_chars(params.max_pairs, params.max_points, params.max_answer_chars)
    assert longest > 1024
    assert all("grammar" in b and b["max_tokens"] == longest for b in fake.chat_bodies)
    assert 1 < fake.max_in_flight <= 3


async def run_via_client(dirs: SynthDirs, params: SynthParams, count: Any) -> dict[str, Any]:
    async with build_client(params.endpoint, params.structured) as client:
        await check_endpoint(client)
        return await run_synth(client, dirs, params, count)


def shorten_pages(dirs: SynthDirs, keep: list[str], max_chars: int) -> None:
    """Leave only `keep` (page file names), each cut to its first `max_chars` of body."""
    rows = [json.loads(line) for line in (dirs.markdown / "index.jsonl").read_text().splitlines()]
    kept = []
    for row in rows:
        path = dirs.markdown / f"{row['id']}.md"
        if not any(row["url"].endswith(name) for name in keep):
            path.unlink()
            continue
        doc, body = parse_document(path.read_text())
        path.write_text(render_document(doc, body[:max_chars].rsplit("\n\n", 1)[0]))
        kept.append(row)
    (dirs.markdown / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


@pytest.mark.slow  # ~2 min on 2 CPU cores: SmolLM2 generates ~13 tokens/s here
def test_real_smollm2_end_to_end_on_two_short_pages(dirs: SynthDirs, count: Any) -> None:
    """Tier 3: the real llama.cpp server and model with GBNF grammars. SmolLM2-135M's answers
    are often wrong, so grounding is off here: the point is that every reply parses."""
    from tasks.core.procs import free_port
    from tasks.core.tokens import find_smollm2_gguf
    from tasks.llm.server import start_llama_server

    shorten_pages(dirs, ["backup-dump.html", "backup-file.html"], max_chars=1500)
    alias = "SmolLM2-135M-Instruct"
    with start_llama_server(
        find_smollm2_gguf(), port=free_port(), alias=alias, n_parallel=2, n_ctx=4096, threads=2
    ) as base_url:
        sampling = SamplingParams(max_tokens=768, seed=1)
        endpoint = EndpointParams(
            base_url=base_url, model=alias, sampling=sampling, concurrency=2, timeout_s=120
        )
        params = SynthParams(
            endpoint=endpoint, max_pairs=1, max_points=1, max_answer_chars=240, min_grounding=0.0
        )
        report = asyncio.run(run_via_client(dirs, params, count))

    assert report["pages"] == 2 and report["pages_failed"] == 0
    assert report["calls"]["made"] == 8, report  # per page: Q/A, points, two triples
    dropped = report["dropped_by_reason"]
    parsed_pairs = report["pairs"] + sum(n for k, n in dropped.items() if k.startswith("qa."))
    parsed_triples = report["triples"] + sum(n for k, n in dropped.items() if k.startswith("tri"))
    assert parsed_pairs >= 1 and parsed_triples >= 1, report
    for row in read_rows(dirs.qa / "pairs.jsonl"):
        assert QAPair.model_validate(row).answer.endswith("PostgreSQL 15.20)")
    for row in read_rows(dirs.pref / "triples.jsonl"):
        PreferenceTriple.model_validate(row)
    assert report["completion_tokens_per_s"] > 0


def test_unreachable_endpoint_fails_before_any_work(dirs: SynthDirs, count: Any) -> None:
    from flows.synth import generate
    from tasks.core.procs import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    params = SYNTH.model_copy(update={"endpoint": EndpointParams(base_url=url, retries=0)})
    with pytest.raises(EndpointError, match=f"{url}/models"):
        asyncio.run(generate(dirs, params, count))
    assert not dirs.qa.exists() and not dirs.cache.exists()


FAST = Backoff(first_s=0.01)  # these tests are about what is retried, not how long it waits


async def run_via_fast_client(dirs: SynthDirs, params: SynthParams, count: Any) -> dict[str, Any]:
    async with OpenAIChatClient(
        params.endpoint, structured=params.structured, backoff=FAST
    ) as client:
        return await run_synth(client, dirs, params, count)


def faulty_endpoint(faults: dict[int, Behaviour]) -> Any:
    """A responder that answers the n-th request (from 1) with faults[n], else well."""
    numbers = itertools.count(1)

    def respond(body: dict[str, Any]) -> Behaviour:
        return faults.get(next(numbers)) or ok(scripted_reply(body["messages"]))

    return respond


def test_retried_endpoint_faults_are_counted_by_cause_and_logged(
    dirs: SynthDirs, count: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Every attempt is counted and each retry logged; two malformed 200s (about 4 % of the
    calls) are retried like a 5xx instead of failing their pages."""
    faults = {
        3: status(429, retry_after=0.05),
        7: status(500),
        11: sleep(8.0),  # over timeout_s, by more than a loaded machine adds
        15: drop(),
        19: malformed("not_json"),
        23: malformed("no_choices"),
    }
    caplog.set_level(logging.INFO, logger="tasks.llm.client")
    with serve_fake_openai() as fake:
        fake.responder = faulty_endpoint(faults)
        endpoint = EndpointParams(
            base_url=fake.base_url, model=fake.model, concurrency=3, retries=2, timeout_s=6.0
        )
        params = SYNTH.model_copy(update={"endpoint": endpoint})
        report = asyncio.run(run_via_fast_client(dirs, params, count))

    assert report["pages_failed"] == 0 and report["calls"]["failed"] == 0
    assert len(fake.chat_requests) > 23 + 6
    assert report["endpoint"] == {
        "attempts": len(fake.chat_requests),
        "retries": 6,
        "retries_by_cause": {
            "connection": 1,
            "http_429": 1,
            "http_500": 1,
            "malformed": 2,
            "timeout": 1,
        },
    }
    assert report["calls"]["made"] == len(fake.chat_requests) - 6
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 6
    assert all(line.startswith(f"{fake.base_url}/chat/completions: ") for line in retries)


def test_cut_or_refused_replies_are_asked_again_and_only_the_final_one_cached(
    dirs: SynthDirs, count: Any
) -> None:
    """backup-dump's Q/A call is cut at max_tokens, then refused, then answered: the answer
    is what counts and what is cached. backup-file's Q/A call is cut every time: after the
    retries its last reply is final, parsed (as truncated) and cached like any other."""
    seeds: dict[str, list[int]] = {"backup-dump.html": [], "backup-file.html": []}

    def respond(body: dict[str, Any]) -> Behaviour:
        user = body["messages"][-1]["content"]
        page = next((name for name in seeds if is_page(user, name)), None)
        if page is None or "<QUE> question <ANS>" not in user:
            return ok(scripted_reply(body["messages"]))
        seeds[page].append(body["seed"])
        if page == "backup-file.html":
            return ok("<QUE> What is a file backup? <ANS> A copy", finish_reason="length")
        if len(seeds[page]) == 1:
            return ok("<QUE> What is a dump? <ANS> A dump", finish_reason="length")
        if len(seeds[page]) == 2:
            return ok("I'm sorry, I cannot help with that request.")
        return ok(scripted_reply(body["messages"]))

    shorten_pages(dirs, list(seeds), max_chars=1500)
    with serve_fake_openai() as fake:
        fake.responder = respond
        endpoint = EndpointParams(base_url=fake.base_url, model=fake.model, retries=2)
        # One attempt: backup-file's truncated reply is not asked again as a new attempt.
        params = SYNTH.model_copy(update={"endpoint": endpoint, "max_attempts": 1})
        report = asyncio.run(run_via_fast_client(dirs, params, count))
        calls = len(fake.chat_requests)
        again = asyncio.run(run_via_fast_client(dirs, params, count))
        assert len(fake.chat_requests) == calls  # final outcomes are cached, retries included

    # One Q/A call per page (each fits one chunk), asked with the next seed each time.
    assert seeds == {"backup-dump.html": [1234, 1235, 1236], "backup-file.html": [1234, 1235, 1236]}
    assert report["endpoint"]["retries_by_cause"] == {"length": 3, "refusal": 1}
    assert report["endpoint"]["attempts"] == calls == report["calls"]["made"] + 4
    assert report["parse_failures"].get("qa.truncated") == 1  # backup-file's, after 3 tries
    pairs = read_rows(dirs.qa / "pairs.jsonl")
    assert any(r["url"].endswith("backup-dump.html") for r in pairs)
    assert again["calls"]["made"] == 0 and again["endpoint"] == {
        "attempts": 0,
        "retries": 0,
        "retries_by_cause": {},
    }
    assert again["parse_failures"] == report["parse_failures"]


def test_corrupt_cache_entries_are_asked_again_and_counted(dirs: SynthDirs, count: Any) -> None:
    first = run(ScriptedClient(), dirs, count)
    entries = sorted(dirs.cache.glob("*/*.json"))
    entries[0].write_text('{"text": "half a rep')  # torn write
    data = json.loads(entries[1].read_text())
    del data["completion_tokens"]
    entries[1].write_text(json.dumps(data))
    data = json.loads(entries[2].read_text())
    data["text"] = 42
    entries[2].write_text(json.dumps(data))

    client = ScriptedClient()
    report = run(client, dirs, count)
    assert report["cache_corrupt"] == 3 and report["calls"]["made"] == len(client.prompts) == 3
    assert report["calls"]["reused"] == first["calls"]["made"] - 3
    for path in entries[:3]:
        assert isinstance(json.loads(path.read_text())["text"], str)  # overwritten by the answer

    clean = run(ScriptedClient(), dirs, count)
    assert clean["cache_corrupt"] == 0 and clean["calls"]["made"] == 0


def test_a_corrupt_index_line_names_the_file_and_line(dirs: SynthDirs, count: Any) -> None:
    index = dirs.markdown / "index.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"
    index.write_text("".join(lines))
    with pytest.raises(ValueError, match=rf"{re.escape(str(index))}, line 3: not valid JSON"):
        run(ScriptedClient(), dirs, count)


def test_a_full_disk_stops_the_stage_naming_the_file_and_keeps_what_was_paid_for(
    dirs: SynthDirs, count: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    import tasks.core.io as core_io

    real_fsync, writes = os.fsync, itertools.count()

    def fsync(fd: int) -> None:  # the disk fills up after three files (marker, two replies)
        if next(writes) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(core_io.os, "fsync", fsync)
    client = ScriptedClient()
    with pytest.raises(core_io.DiskFull) as full:
        run(client, dirs, count)
    assert str(dirs.cache) in str(full.value) and "MB free" in str(full.value)
    assert "no space left on the device" in str(full.value)
    kept = cache_files(dirs)
    assert len(kept) == 2 and not list(dirs.cache.rglob("*.tmp"))

    monkeypatch.setattr(core_io.os, "fsync", real_fsync)
    again = ScriptedClient()
    report = run(again, dirs, count)
    assert report["calls"]["reused"] == len(kept)  # paid for before the disk filled: kept


def answer_with_ports(body: dict[str, Any]) -> Behaviour:
    """Q/A: one answer with the page's port, one with an invented port. Triples: the good
    kind's chosen answer invents the port; the false-premise kind's chosen answer has the
    page's port and its rejected answer an invented one."""
    user = body["messages"][-1]["content"]
    fact = "pg_dump connects to port {} unless -p says otherwise."
    if "<QUE> question <ANS>" in user:
        return ok(
            f"<QUE> Which port does pg_dump connect to by default? <ANS> {fact.format(5432)} "
            f"<END>\n<QUE> Where should a standby server be dumped from? "
            f"<ANS> {fact.format(5433)} <END>\n"
        )
    if "Main point: " in user and "<POINT> main point <END>" not in user:
        point = user.split("Main point: ", 1)[1].split("\n", 1)[0]
        chosen, rejected = (5432, 5433) if "corrective answer" in user else (5433, 6543)
        return ok(
            f"<QUE> Which port matters when {point[:60]}? <GOOD> {fact.format(chosen)} "
            f"<BAD> {fact.format(rejected)} <END>\n"
        )
    return ok(scripted_reply(body["messages"]))


def test_answers_with_a_literal_not_in_their_page_are_dropped(dirs: SynthDirs, count: Any) -> None:
    shorten_pages(dirs, ["backup-dump.html"], max_chars=1500)
    page = page_file(dirs, "backup-dump.html")
    fact = "pg_dump connects to port 5432 unless -p says otherwise."
    page.write_text(f"{page.read_text()}\n{fact}\n")
    with serve_fake_openai() as fake:
        fake.responder = answer_with_ports
        endpoint = EndpointParams(base_url=fake.base_url, model=fake.model)
        params = SYNTH.model_copy(update={"endpoint": endpoint})
        report = asyncio.run(run_via_fast_client(dirs, params, count))
        pairs, triples = read_rows(dirs.qa / "pairs.jsonl"), read_rows(dirs.pref / "triples.jsonl")
        excluded = read_rows(dirs.qa / "exclusions.jsonl")
        excluded += read_rows(dirs.pref / "exclusions.jsonl")
        # (one attempt: what is kept decides which retries are asked, not the first requests)
        unchecked = params.model_copy(update={"literal_grounding": False, "max_attempts": 1})
        unchecked_report = asyncio.run(run_via_fast_client(dirs, unchecked, count))

    assert report["dropped_by_reason"]["qa.literal_not_in_page"] == 1
    assert report["dropped_by_reason"]["triples.literal_not_in_page"] >= 1
    assert [p["answer"].split(" (Source")[0] for p in pairs] == [
        "pg_dump connects to port 5432 unless -p says otherwise."
    ]
    assert triples and all(t["kind"] == "false_premise" for t in triples)
    assert all("5432" in t["chosen"] and "5433" in t["rejected"] for t in triples)
    literal = [r for r in excluded if r["reason"] == "literal_not_in_page"]
    named = re.compile(r"chunk 0(, attempt \d)?: not in page: 5433 \|")
    assert literal and all(named.match(r["detail"]) for r in literal)

    # Without the check the same cached replies are kept, invented port and all.
    assert unchecked_report["calls"]["made"] == 0
    assert "qa.literal_not_in_page" not in unchecked_report["dropped_by_reason"]
    assert any("5433" in p["answer"] for p in read_rows(dirs.qa / "pairs.jsonl"))


async def run_via_pool(dirs: SynthDirs, params: SynthParams, count: Any) -> dict[str, Any]:
    urls = params.endpoint.urls
    clients = [
        OpenAIChatClient(params.endpoint, structured=params.structured, backoff=FAST, base_url=u)
        for u in urls
    ]
    async with EndpointPool(clients, params.endpoint.max_failures) as pool:
        await check_pool(pool)
        return await run_synth(pool, dirs, params, count)


Responder = Callable[[dict[str, Any]], Behaviour]


@dataclass(frozen=True)
class TwoEndpoints:
    report: dict[str, Any]
    a: FakeOpenAI
    b: FakeOpenAI
    endpoint: EndpointParams


def run_as_one_endpoint_would(
    dirs: SynthDirs,
    count: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    answers: tuple[Responder, Callable[[FakeOpenAI], Responder]],
) -> TwoEndpoints:
    """The pages through one endpoint alone (the scripted client), then through a pool of two
    fake endpoints: the first answers with answers[0], the second with answers[1](itself),
    which makes it die somehow. Checks that the pool wrote every page's pairs and triples as
    the one endpoint did, made as many calls, and sent at least one call to the other endpoint
    when one failed; warnings are logged to `caplog`."""
    single = run(ScriptedClient(), dirs, count)
    expected = {
        "pairs.jsonl": read_rows(dirs.qa / "pairs.jsonl"),
        "triples.jsonl": read_rows(dirs.pref / "triples.jsonl"),
    }
    other = SynthDirs(dirs.markdown, tmp_path / "qa2", tmp_path / "pref2", tmp_path / "cache2")
    with serve_fake_openai() as a, serve_fake_openai() as b:
        a.responder, b.responder = answers[0], answers[1](b)
        endpoint = EndpointParams(
            base_url=[a.base_url, b.base_url], model=a.model, retries=1, max_failures=2
        )
        params = SYNTH.model_copy(update={"endpoint": endpoint})
        with caplog.at_level(logging.WARNING):
            report = asyncio.run(run_via_pool(other, params, count))
    assert report["pages"] == single["pages"] and report["pages_failed"] == 0
    assert report["calls"]["made"] == single["calls"]["made"]
    for folder, name in ((other.qa, "pairs.jsonl"), (other.pref, "triples.jsonl")):
        got = [{**row, "model": None} for row in read_rows(folder / name)]
        assert got == [{**row, "model": None} for row in expected[name]]
    assert report["endpoint"]["retries_by_cause"]["failover"] >= 1
    return TwoEndpoints(report, a, b, endpoint)


def test_two_endpoints_one_dying_mid_run_still_give_every_page(
    dirs: SynthDirs, count: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same outputs as one endpoint gives, though the second endpoint stops answering
    after its fifth request: its chunks move to the first, and each chunk's calls went to one
    endpoint while it lived."""

    def answer(body: dict[str, Any]) -> Behaviour:
        return ok(scripted_reply(body["messages"]))

    def drop_after_fifth(b: FakeOpenAI) -> Responder:
        return faulty_endpoint({n: drop() for n in range(6, 1000)})

    pooled = run_as_one_endpoint_would(dirs, count, tmp_path, caplog, (answer, drop_after_fifth))
    b = pooled.b
    assert any(
        b.base_url in r.getMessage() and "rotation" in r.getMessage() for r in caplog.records
    )
    answered_by_b = [r.body for r in b.chat_requests[:5]]
    assert answered_by_b and len(pooled.a.chat_requests) > len(answered_by_b)


def test_an_endpoint_shut_down_mid_run_is_taken_out_and_every_page_still_written(
    dirs: SynthDirs, count: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two endpoints; the second's server is shut down on its sixth request, with others in
    flight (those lose their connection, later ones are refused): the stage writes every
    page's pairs and triples as one endpoint alone does, and the log says the endpoint was
    taken out of rotation."""

    def answer(body: dict[str, Any]) -> Behaviour:
        return ok(scripted_reply(body["messages"]), delay_s=0.05)  # keeps calls in flight

    def shut_down_on_sixth(b: FakeOpenAI) -> Responder:
        numbers = itertools.count(1)

        def respond(body: dict[str, Any]) -> Behaviour:
            if next(numbers) == 6:
                b.stop()
            return answer(body)

        return respond

    pooled = run_as_one_endpoint_would(dirs, count, tmp_path, caplog, (answer, shut_down_on_sixth))
    report, asked_b = pooled.report, len(pooled.b.chat_requests)
    taken_out = [
        r.getMessage() for r in caplog.records if "taken out of rotation" in r.getMessage()
    ]
    assert len(taken_out) == 1 and pooled.b.base_url in taken_out[0]
    assert "1 endpoint(s) left" in taken_out[0]
    # Nothing reached the second endpoint after it went down; the first answered the rest.
    assert 6 <= asked_b <= 6 + pooled.endpoint.concurrency
    assert len(pooled.a.chat_requests) >= report["calls"]["made"] - asked_b
