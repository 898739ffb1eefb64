"""Means with bootstrap 95 % intervals: the eval sets are small, and a difference between two
models means something only where their intervals say so."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def bootstrap_mean(values: Sequence[float], samples: int, seed: int) -> dict[str, Any]:
    """{value, n, low, high}: the mean and the 2.5/97.5 percentiles of the means of
    `samples` resamples (with replacement); nulls when there is nothing to average."""
    import numpy as np

    n = len(values)
    if n == 0:
        return {"value": None, "n": 0, "low": None, "high": None}
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "value": round(float(data.mean()), 4),
        "n": n,
        "low": round(float(low), 4),
        "high": round(float(high), 4),
    }


def bootstrap_ratio(
    numerators: Sequence[float],
    denominators: Sequence[float],
    samples: int,
    seed: int,
    transform: Any = None,
) -> dict[str, Any]:
    """sum(num)/sum(den) over items (e.g. NLL over tokens), resampling items, with an optional
    transform of the ratio (exp for perplexity)."""
    import numpy as np

    n = len(numerators)
    if n == 0 or sum(denominators) == 0:
        return {"value": None, "n": 0, "low": None, "high": None}
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    f = transform or (lambda x: x)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(samples, n))
    ratios = num[picks].sum(axis=1) / np.maximum(den[picks].sum(axis=1), 1)
    low, high = np.percentile(f(ratios), [2.5, 97.5])
    return {
        "value": round(float(f(num.sum() / den.sum())), 4),
        "n": n,
        "low": round(float(low), 4),
        "high": round(float(high), 4),
    }
