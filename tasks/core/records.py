"""Typed records that cross stage boundaries, with their stable ids.

Every stage reads and writes these shapes only; a field added here is a field every
reader sees. Ids are hashes: of the canonical URL for pages, of the bytes for content.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

# The sets of data/sft and data/orpo, as named in their dataset_info.json: the datasets stage
# writes them, the sft and orpo stages train on them by these names.
DOMAIN_SFT = "docs_sft"
GENERAL_SFT = "general_sft"
DOMAIN_PREF = "docs_pref"


def url_id(canonical_url: str) -> str:
    """Stable page id: the first 16 hex digits of sha256 of the canonical URL."""
    return hashlib.sha256(canonical_url.encode("utf-8")).hexdigest()[:16]


def content_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PageStatus(StrEnum):
    OK = "ok"  # stored; `file` holds its bytes
    DUPLICATE = "duplicate"  # same bytes as `duplicate_of`, stored once under that page's file
    REMOVED = "removed"  # was in an earlier crawl, now 404/410 or no longer linked
    FAILED = "failed"  # gave up after retries; `reason` says why
    SKIPPED = "skipped"  # not HTML, too large, redirected out of scope, ...; `reason` says why
    BLOCKED = "blocked"  # robots.txt disallows it for our user agent


class ManifestEntry(BaseModel):
    """One line of data/raw/manifest.jsonl: what the crawler knows about one URL."""

    model_config = ConfigDict(extra="forbid")

    id: str
    url: str
    status: PageStatus
    http_status: int | None = None
    sha256: str | None = None
    file: str | None = None  # relative to the raw folder
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    encoding: str | None = None
    fetched_at: str | None = None  # when the stored bytes were fetched (ISO 8601, UTC)
    order: int = 0  # breadth-first discovery order: the site's reading order
    depth: int = 0
    duplicate_of: str | None = None
    reason: str | None = None
    # The stored bytes are the DOM a browser built (crawl.render), not the server's HTML.
    # Left out when false, so manifests of plain crawls stay byte-identical.
    rendered: bool = Field(False, exclude_if=lambda v: not v)


class MarkdownDoc(BaseModel):
    """One converted page: the front matter of data/markdown/<id>.md and a line of its index."""

    model_config = ConfigDict(extra="forbid")

    id: str
    url: str
    title: str
    product: str | None = None
    version: str | None = None
    sha: str  # sha256 of the source HTML bytes
    order: int = 0
    extractor: str = ""  # which path found the main content: selector, generic or readability


class Exclusion(BaseModel):
    """A record a stage dropped, and why; written to the stage's exclusions file."""

    model_config = ConfigDict(extra="forbid")

    id: str
    url: str
    reason: str
    detail: str | None = None


def text_id(*parts: str) -> str:
    """Stable id of generated content: the first 16 hex digits of sha256 over its parts."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


class Competency(StrEnum):
    """The style a preference question is written in (its share is set in params)."""

    CONVERSATIONAL = "conversational"
    TECHNICAL_REASONING = "technical_reasoning"
    FACTUAL_ACCURACY = "factual_accuracy"
    CREATIVE_PROBLEM_SOLVING = "creative_problem_solving"


class TripleKind(StrEnum):
    GOOD = "good"  # a sound question; chosen = right answer, rejected = wrong answer
    FALSE_PREMISE = "false_premise"  # chosen corrects the premise, rejected goes along with it


class QAPair(BaseModel):
    """One line of data/qa/pairs.jsonl: an instruction-pretraining question and its answer,
    which ends with a citation of its source page."""

    model_config = ConfigDict(extra="forbid")

    id: str  # text_id(page_id, question, answer)
    page_id: str
    url: str
    product: str | None = None
    version: str | None = None
    chunk: int = 0  # which part of the page it was generated from (0 when not split)
    question: str
    answer: str
    model: str  # the model its reply named
    prompt_version: str
    endpoint_model: str | None = None  # the model GET /models named; None: it did not say
    # Share of the answer's content words found in its chunk (synth.min_grounding); None in
    # records written before it was kept.
    grounding: float | None = None
    # The judge's verdict that the chunk supports the answer; None when not asked
    # (synth.faithfulness_check off). Only supported answers are kept when it is on.
    faithful: bool | None = None


class PreferenceTriple(BaseModel):
    """One line of data/pref/triples.jsonl: a <prompt, chosen, rejected> triple for ORPO."""

    model_config = ConfigDict(extra="forbid")

    id: str  # text_id(page_id, kind, prompt, chosen, rejected)
    page_id: str
    url: str
    product: str | None = None
    version: str | None = None
    chunk: int = 0
    point: str  # the page's main point the question is about
    kind: TripleKind
    competency: Competency
    prompt: str
    chosen: str
    rejected: str
    model: str  # the model its reply named
    prompt_version: str
    endpoint_model: str | None = None  # the model GET /models named; None: it did not say
    grounding: float | None = None  # of the chosen answer, as QAPair's
    faithful: bool | None = None  # the judge's verdict on the chosen answer, as QAPair's


class CptDocument(BaseModel):
    """One line of data/cpt/documents.jsonl: a document of the CPT corpus, in packing order.
    A packed row's segment names its document by the line number here."""

    model_config = ConfigDict(extra="forbid")

    id: str  # the page id, or text_id("general", text) for general-domain text
    kind: str  # page | general
    url: str | None = None
    title: str | None = None
    pairs: int = 0  # Q/A pairs appended to the page's text
    tokens: int = 0  # without the EOS the packer adds


class EvalPage(BaseModel):
    """One line of data/eval/pages.jsonl: a held-out page, for perplexity and evaluation."""

    model_config = ConfigDict(extra="forbid")

    id: str
    url: str
    title: str
    product: str | None = None
    version: str | None = None
    text: str  # rendered as the CPT corpus renders a training page, without Q/A
