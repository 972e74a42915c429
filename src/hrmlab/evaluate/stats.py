"""Statistics for paired success/failure outcomes: Wilson intervals and exact McNemar tests."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0% and 100%)."""
    if n == 0:
        return (0.0, 1.0)
    z = sps.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(a_success: np.ndarray, b_success: np.ndarray) -> dict:
    """Exact (binomial) McNemar test on paired outcomes of two methods on the same episodes.

    Returns the discordant counts (a wins = a succeeded where b failed) and the two-sided p-value."""
    a = np.asarray(a_success, dtype=bool)
    b = np.asarray(b_success, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("McNemar needs outcomes on the same episodes")
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(min(1.0, sps.binomtest(a_only, n, 0.5).pvalue))
    return {"a_only": a_only, "b_only": b_only, "p_value": p}
