"""synth's prompts, chunking, parsers and filters, with a scripted fake client that records the
prompts it got (tier 1 of the LLM tests: no HTTP, no model)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tasks.core.documents import parse_document
from tasks.core.params import CompetencyMix, SynthParams
from tasks.core.records import Competency, MarkdownDoc
from tasks.synth.filters import (
    NearDuplicates,
    check_qa,
    check_triple,
    extract_content_words,
    score_grounding,
)
from tasks.synth.generate import (
    Settings,
    assign_competencies,
    plan_page,
    render_call_key,
    split_body,
    synthesize_page,
)
from tasks.synth.parse import parse_points, parse_qa, parse_triple
from tasks.synth.prompts import PROMPT_VERSION, STYLES, render_qa_grammar, render_triple_grammar
from tests.support.synth_fakes import ScriptedClient, count_words

DOC = MarkdownDoc(
    id="p1",
    url="https://docs.example.org/15/backup-dump.html",
    title="SQL Dump",
    product="PostgreSQL",
    version="15.4",
    sha="0" * 64,
)


# ---- the scripted fake client -------------------------------------------------------------


def page_body(sections: int, words_per_section: int = 120) -> str:
    parts = []
    for i in range(sections):
        sentence = f"Setting number {i} controls how the server archives segment files. "
        text = (sentence * (words_per_section // 10 + 1)).strip()
        parts.append(f"## Section {i}\n\n{text}")
    return "\n\n".join(parts)


def run_page(body: str, params: SynthParams, tmp_path: Path) -> ScriptedClient:
    """The prompts of one attempt (the scripted replies repeat the page, so some are dropped
    as near-duplicates and would be asked again)."""
    client = ScriptedClient()
    params = params.model_copy(update={"max_attempts": 1})
    work = plan_page(DOC, body, params, count_words)
    outcome = asyncio.run(synthesize_page(client, work, Settings(params, tmp_path)))
    assert outcome.error is None
    return client


def test_prompts_carry_persona_source_and_format(tmp_path: Path) -> None:
    params = SynthParams(persona="a veteran Postgres DBA", domain="PostgreSQL operations")
    client = run_page(page_body(2), params, tmp_path)
    qa = next(p for p in client.prompts if "<QUE> question <ANS>" in p[-1]["content"])
    system, user = qa[0]["content"], qa[1]["content"]
    assert "a veteran Postgres DBA" in system and "PostgreSQL operations" in system
    for needle in (DOC.url, "PostgreSQL", "15.4", "based solely on the document"):
        assert needle in user
    assert "set up, manage or troubleshoot" in user
    assert "(Source: " not in user  # the stage cites each kept answer itself
    assert "Setting number 1 controls" in user  # the page itself
    kinds = Counter(
        "qa" if "<ANS>" in u else "points" if "<POINT>" in u else "triple" for u in client.users()
    )
    assert kinds["qa"] == kinds["points"] == 1
    assert kinds["triple"] % 2 == 0 and kinds["triple"] > 0
    assert all(g is not None for g in client.grammars)  # structured: gbnf by default


def test_no_grammar_is_sent_without_structured_output(tmp_path: Path) -> None:
    client = run_page(page_body(1), SynthParams(structured="none"), tmp_path)
    assert client.grammars and all(g is None for g in client.grammars)


def test_triple_prompts_carry_point_style_and_kind(tmp_path: Path) -> None:
    client = run_page(page_body(3), SynthParams(), tmp_path)
    triples = [u for u in client.users() if "<GOOD>" in u]
    assert sum("wrong answer" in u for u in triples) == sum("sycophantic" in u for u in triples)
    assert all(any(style in u for style in STYLES.values()) for u in triples)
    assert all("Main point: " in u for u in triples)


def test_pairs_scale_with_page_length() -> None:
    params = SynthParams(pairs_per_tokens=100, min_pairs=1, max_pairs=5, context_tokens=5000)
    sizes = {}
    for words in (20, 300, 3000):
        work = plan_page(DOC, " ".join(["word"] * words), params, count_words)
        sizes[words] = work.chunks[0].n_pairs
    assert sizes == {20: 1, 300: 3, 3000: 5}


def test_long_page_is_split_on_headings_keeping_front_matter() -> None:
    body = page_body(6, words_per_section=100) + "\n\n```\n# not a heading\nselect 1;\n```"
    params = SynthParams(context_tokens=320)
    work = plan_page(DOC, body, params, count_words)
    assert len(work.chunks) > 1
    for chunk in work.chunks:
        doc, part = parse_document(chunk.document)
        assert doc == DOC
        assert part.startswith("## Section")
        assert count_words(chunk.document) <= 320
    joined = "\n\n".join(parse_document(c.document)[1] for c in work.chunks)
    assert joined == body  # nothing lost, nothing repeated
    assert "```\n# not a heading\nselect 1;\n```" in work.chunks[-1].document


def test_oversized_section_splits_on_paragraphs_under_its_heading() -> None:
    paragraphs = [f"Paragraph {i} " + "about WAL archiving " * 20 for i in range(6)]
    body = "## Big\n\n" + "\n\n".join(paragraphs)
    parts = split_body(body, 150, count_words)
    assert len(parts) > 1
    assert all(p.startswith("## Big") and count_words(p) <= 150 for p in parts)


def test_competency_tags_hit_the_mix_and_are_deterministic() -> None:
    mix = CompetencyMix()
    tags = [t for page in range(300) for t in assign_competencies(f"page{page}", 6, mix)]
    shares = {t: n / len(tags) for t, n in Counter(tags).items()}
    for tag in Competency:
        assert abs(shares[tag] - getattr(mix, tag.value)) < 0.02, shares
    assert assign_competencies("x", 6, mix) == assign_competencies("x", 6, mix)
    within_page = Counter(assign_competencies("page7", 8, mix))
    assert len(within_page) >= 3  # spread within a page, not one style per page


def test_competency_mix_must_add_up() -> None:
    with pytest.raises(ValueError, match="add up to 1"):
        CompetencyMix(conversational=0.5)


def test_cache_key_covers_model_sampling_structure_and_prompt() -> None:
    messages = [{"role": "user", "content": "x"}]
    base = SynthParams()
    key = render_call_key(messages, "g", base)
    other_sampling = base.endpoint.sampling.model_copy(update={"temperature": 0.1})
    variants = [
        render_call_key([{"role": "user", "content": "y"}], "g", base),
        render_call_key(messages, "h", base),
        render_call_key(messages, "g", base.model_copy(update={"structured": "vllm"})),
        render_call_key(
            messages,
            "g",
            base.model_copy(
                update={"endpoint": base.endpoint.model_copy(update={"model": "other"})}
            ),
        ),
        render_call_key(
            messages,
            "g",
            base.model_copy(
                update={"endpoint": base.endpoint.model_copy(update={"sampling": other_sampling})}
            ),
        ),
    ]
    assert key == render_call_key(messages, "g", base)
    assert len({key, *variants}) == 6
    assert PROMPT_VERSION


def test_first_attempt_keeps_the_old_key_and_later_ones_their_own_seed(tmp_path: Path) -> None:
    """Attempt 0's key is the one calls had before attempts existed, so caches stay valid."""
    messages = [{"role": "user", "content": "x"}]
    base = SynthParams()
    spec = {
        "prompt_version": PROMPT_VERSION,
        "messages": messages,
        "grammar": "g",
        "structured": base.structured,
        "model": base.endpoint.model,
        "sampling": base.endpoint.sampling.model_dump(),
    }
    old_key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()
    assert render_call_key(messages, "g", base) == render_call_key(messages, "g", base, 0)
    assert render_call_key(messages, "g", base, 0) == old_key
    later = {render_call_key(messages, "g", base, attempt) for attempt in (1, 2)}
    assert len(later) == 2 and old_key not in later
    settings = Settings(base, tmp_path)
    assert settings.request_body(None) is None  # the sampling seed, as before
    assert settings.request_body(None, attempt=1) == {"seed": 1334}
    assert settings.request_body(None, reask=2, attempt=2) == {"seed": 1436}


def test_grammars_fix_the_count_and_bound_every_field() -> None:
    grammar = render_qa_grammar(3, 480)
    assert grammar.splitlines()[0] == "root ::= pair pair pair"
    assert '" <ANS> "' in grammar and "<END>\\n" in grammar
    assert all(re.search(r"\{0,\d+\}( \"\?\")?$", line) for line in grammar.splitlines()[2:])
    assert "{0,479}" in grammar and "{0,198}" in grammar
    triple = render_triple_grammar(2000)
    assert '" <GOOD> "' in triple and '" <BAD> "' in triple and "{0,1999}" in triple


# ---- tolerant parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "finish", "expected"),
    [
        ("<QUE> What is X? <ANS> X is Y. <END>", "stop", [("What is X?", "X is Y.")]),
        ("QUE> What is X?\n ANS> X is Y.\nEND>", "stop", [("What is X?", "X is Y.")]),
        ("<que>  What is X? <ans>X is Y.<end>", "stop", [("What is X?", "X is Y.")]),
        ("Sure!\n<QUE> A? <ANS> B. <END>\n<QUE> C? <ANS> D.", "stop", [("A?", "B."), ("C?", "D.")]),
        ("<QUE A? <ANS B. <END", "stop", [("A?", "B.")]),
        ("<QUE> Question: A? <ANS> answer: B. <END>", "stop", [("A?", "B.")]),
    ],
)
def test_qa_parser_tolerates_format_slips(
    text: str, finish: str, expected: list[tuple[str, str]]
) -> None:
    blocks = parse_qa(text, finish)
    assert [b.problem for b in blocks] == [None] * len(expected)
    assert [b.fields for b in blocks] == expected


@pytest.mark.parametrize(
    ("text", "finish", "problems"),
    [
        ("", "stop", ["empty_output"]),
        ("I will write questions now.", "stop", ["no_blocks"]),
        ("<QUE> A? <ANS> B. <END><QUE> C? <ANS> D, and then", "length", [None, "truncated"]),
        ("<QUE> A? with no answer <END>", "stop", ["missing_ans"]),
        ("<QUE> <ANS> B. <END>", "stop", ["empty_que"]),
        ("<QUE> A? <ANS>   <END>", "stop", ["empty_ans"]),
    ],
)
def test_qa_parser_names_what_it_cannot_use(
    text: str, finish: str, problems: list[str | None]
) -> None:
    assert [b.problem for b in parse_qa(text, finish)] == problems


def test_points_and_triples_parse() -> None:
    points = parse_points("<POINT> One. <END>\nPOINT> Two.\n", "stop")
    assert [p.fields for p in points] == [("One.",), ("Two.",)]
    assert [p.fields for p in parse_points("1. First.\n- Second.", "stop")] == [
        ("First.",),
        ("Second.",),
    ]
    triple = parse_triple("<QUE> Q? <GOOD> Right. <BAD> Wrong. <END>", "stop")
    assert triple[0].fields == ("Q?", "Right.", "Wrong.")
    assert parse_triple("<QUE> Q? <GOOD> Right. <END>", "stop")[0].problem == "missing_bad"
    assert parse_triple("<QUE> Q? <GOOD> Right. <BAD> Wro", "length")[0].problem == "truncated"


# ---- filters ----------------------------------------------------------------------------------

SOURCE = extract_content_words(
    "pg_dump writes a consistent snapshot of one database as SQL commands; restore it with psql."
)


def test_grounding_counts_content_words_in_the_page() -> None:
    grounded = "pg_dump writes SQL commands; psql restores the snapshot. (Source: http://x/y)"
    assert score_grounding(grounded, SOURCE) == 1.0  # "restores" folds to "restore"
    assert score_grounding("Kubernetes operators autoscale replicas nightly.", SOURCE) == 0.0


@pytest.mark.parametrize(
    ("question", "answer", "reason"),
    [
        ("How do I dump one database?", "pg_dump writes SQL commands.", None),
        ("According to the text, what is pg_dump?", "pg_dump writes SQL.", "page_bound_question"),
        ("What does the passage say about restore?", "Restore with psql.", "page_bound_question"),
        ("What is mentioned in this document?", "pg_dump writes SQL.", "page_bound_question"),
        ("How do I dump a database?", "I'm sorry, I cannot help with that.", "refusal"),
        ("How do I dump a database?", "As an AI, I cannot answer.", "refusal"),
        ("How do I dump a database?", "Kubernetes operators autoscale replicas.", "ungrounded"),
        ("How do I dump a database?", "(Source: http://x/y)", "empty"),
        ("question", "pg_dump writes SQL.", "placeholder"),
        ("How do I dump a database?", "pg_dump 2021-01-01 22:22:50 " * 8, "repetitive"),
        ("How do I dump a database?", "[answer] (Source: http://x/y)", "placeholder"),
    ],
)
def test_qa_filters(question: str, answer: str, reason: str | None) -> None:
    assert check_qa(question, answer, SOURCE, 0.5) == reason


@pytest.mark.parametrize(
    ("chosen", "rejected", "reason"),
    [
        ("pg_dump writes SQL commands.", "pg_dump writes binary files.", None),
        ("pg_dump writes SQL commands.", "pg_dump  writes SQL commands!", "chosen_equals_rejected"),
        ("Quantum entanglement rewrites memory.", "pg_dump writes SQL commands.", "ungrounded"),
        # the rejected answer is wrong on purpose and need not be grounded
        ("psql restores a pg_dump snapshot.", "Kubernetes autoscaling handles it.", None),
    ],
)
def test_triple_filters(chosen: str, rejected: str, reason: str | None) -> None:
    assert check_triple("How is a dump restored?", chosen, rejected, SOURCE, 0.5) == reason


def test_near_duplicate_questions() -> None:
    seen = NearDuplicates(0.7)
    assert not seen.add("How do I restore a dump made by pg_dump?")
    assert seen.add("How do I restore a dump made by pg_dump ?")
    assert seen.add("how do i restore a dump made by pg_dump")
    assert not seen.add("How do I dump every database of a cluster at once?")


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"structured": "xml"}, "synth.structured:"),
        ({"min_pairs": 5, "max_pairs": 2}, "min_pairs (5) exceeds max_pairs"),
        ({"competency_mix": {"conversational": 0.9}}, "synth.competency_mix: Value error, shares"),
        ({"endpoint": {"base_url": "gpu-host:8000"}}, "synth.endpoint.base_url:"),
        ({"persona": "  "}, "synth.persona:"),
        ({"temperature": 0.2}, "synth.temperature: Extra inputs are not permitted"),
    ],
)
def test_bad_synth_params_name_the_key(
    tmp_path: Path, override: dict[str, Any], words: str
) -> None:
    import yaml

    from tasks.core.params import ParamsError, load_params

    data = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
    data["synth"].update(override)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError) as err:
        load_params("synth", SynthParams, path)
    assert words in str(err.value)


def test_shipped_synth_params_fit_a_2048_token_slot() -> None:
    from tasks.core.params import load_params

    params = load_params("synth", SynthParams, Path(__file__).parents[2] / "params.yaml")
    assert params.structured == "gbnf" and params.endpoint.url.endswith(":8766/v1")
    overhead = 350  # system + instructions + a main point, in tokens
    assert overhead + params.context_tokens + params.endpoint.sampling.max_tokens <= 2048


def test_paragraph_split_never_cuts_a_code_block() -> None:
    code = "```\nline one\n\nline two after a blank line\n```"
    body = "## Big\n\n" + "\n\n".join(["Intro words " * 30, code, "Outro words " * 30])
    parts = split_body(body, 70, count_words)
    assert any(code in p for p in parts), parts
