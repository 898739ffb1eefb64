"""Near-duplicate pages by MinHash over word shingles, with LSH banding.

A text's shingles are its word `shingle_words`-grams (words lower-cased, punctuation only
separates them); two texts' similarity is the Jaccard of their shingle sets, estimated as the
share of equal positions in their MinHash signatures. LSH banding proposes candidate pairs
(texts that agree on every row of some band), and a candidate counts only when its estimate
over the whole signature reaches the threshold, so near-duplicates are found without
comparing all pairs.

Order matters, on purpose: texts are taken in the order given, and one is a duplicate when it
matches an earlier text that was kept. The datasets stage passes held-out (eval) pages first,
so a training page that copies an eval page is the one dropped. A dropped text is never a
keeper: with a ≈ b and b ≈ c but a ≉ c, b is dropped as a duplicate of a and c is kept.

Signatures are independent of one another, so they can be computed anywhere, in any batches
(the datasets stage sends them to a Dask cluster when one is configured); banding and matching
need all of them in order and run in one process.

Everything is deterministic: words are hashed with blake2b (Python's hash() is salted per
process) and the permutations are derived from `seed` the same way.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

WORD_RE = re.compile(r"\w+")
# Hash values are 32 bits: the multiply-add-shift family below is strongly universal for
# 32-bit keys, and two of a page's ~2,000 shingles collide with odds of about 1 in 2,000.
EMPTY_SLOT = np.uint32(0xFFFFFFFF)
# Shingles are hashed against the permutations this many at a time, which bounds the
# temporary (num_perm by BLOCK) arrays for a very long page.
BLOCK = 4096
# The bands are chosen so that a pair whose true similarity is exactly the threshold becomes
# a candidate with at least this probability; pairs above it are found even more surely.
MIN_RECALL = 0.99
# A multiplier for combining word hashes into a shingle hash, and splitmix64's mixing
# constants (Steele, Lea and Flood 2014).
SHINGLE_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)

Signature = npt.NDArray[np.uint32]


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Text `index` nearly duplicates the earlier, kept text `of` (estimated Jaccard)."""

    index: int
    of: int
    similarity: float


def check_arguments(threshold: float, num_perm: int, shingle_words: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be at least 1, got {num_perm}")
    if shingle_words < 1:
        raise ValueError(f"shingle_words must be at least 1, got {shingle_words}")


def split_words(text: str) -> list[str]:
    return WORD_RE.findall(text.casefold())


@lru_cache(maxsize=1 << 20)
def hash_word(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def mix64(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finalizer: every output bit depends on every input bit."""
    values = values ^ (values >> np.uint64(30))
    values *= MIX_1
    values ^= values >> np.uint64(27)
    values *= MIX_2
    values ^= values >> np.uint64(31)
    return values


def hash_shingles(text: str, shingle_words: int) -> npt.NDArray[np.uint64]:
    """32-bit hashes (held in uint64) of the text's word shingles; a text shorter than
    `shingle_words` words is one shingle of all its words, and a text with none has none."""
    words = split_words(text)
    hashes = np.fromiter(map(hash_word, words), dtype=np.uint64, count=len(words))
    width = min(shingle_words, len(words))
    count = len(words) - width + 1 if words else 0
    combined = hashes[:count].copy()
    for offset in range(1, width):  # a polynomial in the word hashes, so word order counts
        combined *= SHINGLE_MULTIPLIER
        combined += hashes[offset : offset + count]
    return mix64(combined) >> np.uint64(32)


@lru_cache(maxsize=16)
def derive_permutations(
    num_perm: int, seed: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Multipliers (odd) and increments of h(x) = ((a·x + b) mod 2^64) >> 32, one pair per
    permutation, from blake2b rather than a numpy generator whose stream may change."""

    def draw(label: str, k: int) -> int:
        digest = hashlib.blake2b(f"{seed}:{label}:{k}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")

    a = np.array([draw("a", k) | 1 for k in range(num_perm)], dtype=np.uint64)
    b = np.array([draw("b", k) for k in range(num_perm)], dtype=np.uint64)
    a.flags.writeable = b.flags.writeable = False
    return a[:, None], b[:, None]


def compute_signature(
    text: str, num_perm: int = 128, shingle_words: int = 5, seed: int = 0
) -> Signature:
    """The text's MinHash signature; all EMPTY_SLOT for a text without words."""
    shingles = hash_shingles(text, shingle_words)
    a, b = derive_permutations(num_perm, seed)
    signature = np.full(num_perm, EMPTY_SLOT, dtype=np.uint64)
    for start in range(0, len(shingles), BLOCK):
        hashed = a * shingles[start : start + BLOCK]
        hashed += b
        hashed >>= np.uint64(32)
        np.minimum(signature, hashed.min(axis=1), out=signature)
    return signature.astype(np.uint32)


def is_empty(signature: Signature) -> bool:
    return bool((signature == EMPTY_SLOT).all())


def compare_signatures(a: Signature, b: Signature) -> float:
    """Estimated Jaccard: the share of equal positions; 0 when either text had no words."""
    if is_empty(a) or is_empty(b):
        return 0.0
    return float(np.count_nonzero(a == b)) / len(a)


def estimate_similarity(
    a: str, b: str, num_perm: int = 128, shingle_words: int = 5, seed: int = 0
) -> float:
    """MinHash estimate of the Jaccard of two texts' shingle sets (0 if either has no words)."""
    return compare_signatures(
        compute_signature(a, num_perm, shingle_words, seed),
        compute_signature(b, num_perm, shingle_words, seed),
    )


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Chance that a pair of this similarity agrees on all rows of at least one band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def choose_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands·rows ≤ num_perm: the most rows per band (fewest chance
    candidates) that still finds a pair at the threshold with probability MIN_RECALL."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= MIN_RECALL:
            best = (bands, rows)
    return best


def split_bands(signature: Signature, bands: int, rows: int) -> Iterator[tuple[int, bytes]]:
    for band in range(bands):
        yield band, signature[band * rows : (band + 1) * rows].tobytes()


def find_near_duplicates(
    texts: Sequence[str],
    threshold: float,
    num_perm: int = 128,
    shingle_words: int = 5,
    seed: int = 0,
) -> list[Duplicate]:
    """Each text whose estimated similarity to an earlier kept text is ≥ threshold, in order.

    `of` is the kept text it is most similar to (the earliest among equals). A text without
    words is never reported, neither as a duplicate nor as the text one duplicates: it has
    no shingles to compare, and treating all empty texts as copies of one another would drop
    them under the wrong reason; the caller drops empty pages with a reason of its own.
    """
    check_arguments(threshold, num_perm, shingle_words)
    signatures = [compute_signature(t, num_perm, shingle_words, seed) for t in texts]
    return match_signatures(signatures, threshold, num_perm)


def match_signatures(
    signatures: Sequence[Signature], threshold: float, num_perm: int
) -> list[Duplicate]:
    """find_near_duplicates on signatures computed elsewhere (every one with `num_perm`
    values), e.g. in batches on a cluster: the banding and matching need them all, in order."""
    bands, rows = choose_bands(threshold, num_perm)
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    duplicates: list[Duplicate] = []
    for index, signature in enumerate(signatures):
        if is_empty(signature):
            continue
        keys = list(split_bands(signature, bands, rows))
        candidates = sorted({kept for key in keys for kept in buckets.get(key, ())})
        duplicate = confirm_duplicate(index, signature, candidates, signatures, threshold)
        if duplicate:
            duplicates.append(duplicate)
            continue
        for key in keys:
            buckets[key].append(index)
    return duplicates


def confirm_duplicate(
    index: int,
    signature: Signature,
    candidates: list[int],
    signatures: Sequence[Signature],
    threshold: float,
) -> Duplicate | None:
    """The candidate most similar to the text, when the estimate reaches the threshold."""
    if not candidates:
        return None
    matches = (np.stack([signatures[c] for c in candidates]) == signature).sum(axis=1)
    best = int(np.argmax(matches))  # the first maximum: the earliest among equals
    similarity = float(matches[best]) / len(signature)
    if similarity < threshold:
        return None
    return Duplicate(index=index, of=candidates[best], similarity=similarity)
