"""MinHash near-duplicates: what is found, what is not, which copy wins, and how exact."""

from __future__ import annotations

import random
import re
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.datasets.dedup import (
    MIN_RECALL,
    Duplicate,
    candidate_probability,
    choose_bands,
    compute_signature,
    estimate_similarity,
    find_near_duplicates,
)


def make_words(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(count)]


def make_text(seed: int, count: int = 300) -> str:
    return " ".join(make_words(seed, count))


def replace_words(text: str, positions: list[int], seed: int) -> str:
    words = text.split()
    for position, word in zip(positions, make_words(seed, len(positions)), strict=True):
        words[position] = word
    return " ".join(words)


def exact_jaccard(a: str, b: str, n: int = 5) -> float:
    def shingles(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_identical_copy_is_found_with_similarity_one() -> None:
    a, b = make_text(1), make_text(2)
    assert find_near_duplicates([a, b, a], threshold=0.8) == [
        Duplicate(index=2, of=0, similarity=1.0)
    ]


def test_case_and_punctuation_do_not_matter() -> None:
    a = make_text(1)
    shouted = ", ".join(a.upper().split(" ")) + "!"
    assert find_near_duplicates([a, shouted], threshold=0.9) == [Duplicate(1, 0, 1.0)]


def test_lightly_edited_copy_is_found_with_its_estimated_similarity() -> None:
    a = make_text(1)
    edited = replace_words(a, [40, 150, 260], seed=99)  # 15 of 296 shingles change
    exact = exact_jaccard(a, edited)
    [duplicate] = find_near_duplicates([make_text(2), a, edited], threshold=0.8)
    assert (duplicate.index, duplicate.of) == (2, 1)
    assert duplicate.similarity == pytest.approx(exact, abs=0.1)
    assert duplicate.similarity == estimate_similarity(a, edited)


def test_unrelated_texts_are_not_found() -> None:
    texts = [make_text(seed) for seed in range(60)]
    assert find_near_duplicates(texts, threshold=0.5) == []
    assert estimate_similarity(texts[0], texts[1]) < 0.05


def test_held_out_pages_come_first_so_the_training_copy_is_dropped() -> None:
    eval_pages = [make_text(10), make_text(11)]
    train_pages = [replace_words(eval_pages[1], [5], seed=7), make_text(12), make_text(12)]
    duplicates = find_near_duplicates(eval_pages + train_pages, threshold=0.8)
    assert [(d.index, d.of) for d in duplicates] == [(2, 1), (4, 3)]


def test_first_occurrence_wins_in_either_order() -> None:
    a = make_text(1)
    edited = replace_words(a, [100], seed=5)
    assert [(d.index, d.of) for d in find_near_duplicates([a, edited], 0.8)] == [(1, 0)]
    assert [(d.index, d.of) for d in find_near_duplicates([edited, a], 0.8)] == [(1, 0)]


def make_chain() -> tuple[str, str, str]:
    """a ≈ b and b ≈ c (4 of 6 blocks shared) but a ≉ c (3 of 7)."""
    blocks = [make_text(100 + i, 50) for i in range(7)]
    return " ".join(blocks[0:5]), " ".join(blocks[1:6]), " ".join(blocks[2:7])


def test_a_dropped_text_is_never_a_keeper() -> None:
    """In a chain a ≈ b ≈ c with a ≉ c, b goes as a copy of a; c matches only the dropped b,
    so it is kept: chains do not collapse transitively."""
    a, b, c = make_chain()
    threshold = 0.55
    assert estimate_similarity(a, b) >= threshold and estimate_similarity(b, c) >= threshold
    assert estimate_similarity(a, c) < threshold
    duplicates = find_near_duplicates([a, b, c], threshold)
    assert [(d.index, d.of) for d in duplicates] == [(1, 0)]


def test_a_text_matching_two_keepers_names_the_more_similar() -> None:
    a, b, c = make_chain()
    [duplicate] = find_near_duplicates([a, c, b], threshold=0.55)
    expected = max((0, 1), key=lambda i: (estimate_similarity([a, c][i], b), -i))
    assert (duplicate.index, duplicate.of) == (2, expected)
    assert duplicate.similarity == max(estimate_similarity(a, b), estimate_similarity(c, b))


def test_results_are_deterministic_and_pinned() -> None:
    texts = [make_text(1), replace_words(make_text(1), [10, 20], seed=3), make_text(2)]
    first = find_near_duplicates(texts, threshold=0.7)
    assert find_near_duplicates(texts, threshold=0.7) == first
    assert [(d.index, d.of) for d in find_near_duplicates(texts, 0.7, seed=1)] == [(1, 0)]
    # blake2b, not hash(): the same signature in every process, on every platform
    signature = compute_signature("The quick brown fox jumps over the lazy dog", num_perm=4)
    assert signature.dtype == np.uint32
    assert signature.tolist() == [1474368561, 1060973835, 102053175, 264576549]


def test_empty_texts_are_never_duplicates_and_short_texts_use_what_they_have() -> None:
    texts = ["", "  ...  ", "", "Hello world", "hello, WORLD!", "hello world again"]
    assert find_near_duplicates(texts, threshold=0.9) == [Duplicate(4, 3, 1.0)]
    assert estimate_similarity("", "") == 0.0
    assert estimate_similarity("", "hello world") == 0.0
    assert estimate_similarity("hello world", "hello world again") == 0.0


def test_shingles_keep_word_order() -> None:
    words = make_words(3, 200)
    assert estimate_similarity(" ".join(words), " ".join(reversed(words))) < 0.05
    assert estimate_similarity(" ".join(words), " ".join(reversed(words)), shingle_words=1) == 1.0


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0])
def test_bands_find_a_pair_at_the_threshold_with_the_fewest_candidates(threshold: float) -> None:
    bands, rows = choose_bands(threshold, num_perm=128)
    assert bands * rows <= 128
    assert candidate_probability(threshold, bands, rows) >= MIN_RECALL
    if rows < 128:
        assert candidate_probability(threshold, 128 // (rows + 1), rows + 1) < MIN_RECALL


@pytest.mark.parametrize(
    ("threshold", "num_perm", "shingle_words"),
    [(0.0, 128, 5), (1.5, 128, 5), (0.8, 0, 5), (0.8, 128, 0)],
)
def test_bad_arguments_are_refused(threshold: float, num_perm: int, shingle_words: int) -> None:
    with pytest.raises(ValueError):
        find_near_duplicates(["a b c"], threshold, num_perm, shingle_words)


POOL = make_words(42, 300)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sets(st.sampled_from(POOL), min_size=1), st.sets(st.sampled_from(POOL), min_size=1))
def test_estimate_is_close_to_the_exact_jaccard(a: set[str], b: set[str]) -> None:
    """The estimate's standard deviation is at most 0.5/sqrt(256) = 0.031; 0.15 is ~5 of them."""
    exact = len(a & b) / len(a | b)
    estimate = estimate_similarity(" ".join(a), " ".join(b), num_perm=256, shingle_words=1)
    assert estimate == pytest.approx(exact, abs=0.15)
