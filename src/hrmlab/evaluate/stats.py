"""Statistics for paired success/failure outcomes: Wilson intervals, exact McNemar tests, and the study's
rate differences over training seeds and episodes (paired two-level bootstrap, Holm correction, verdicts)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

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


# ------------------------------------------------------------------ rate differences over seeds and episodes
# The study's question: how much higher (or lower) is a learned model's expected success rate — averaged over
# training seeds — than the yardstick's (the best physics rule, one deterministic run), or than another
# model's, on this world's episode distribution; with a 95% interval that carries both the episode sample
# and the training-seed sample. Outcomes come as (seeds × episodes) arrays, every arm on the same episodes.

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"
BOOTSTRAP_METHODS = ("seed-t", "hierarchical")


@dataclass(frozen=True)
class RateDifference:
    """mean(a) − mean(b) with its bootstrap interval and two-sided p-value (see `bootstrap_rate_difference`)."""

    estimate: float
    """Plain difference of the arms' success rates (each averaged over its seeds and the episodes)."""
    low: float
    high: float
    """Percentile interval of the bootstrap distribution at `confidence` (order statistics, see p_value)."""
    p_value: float
    """Two-sided, by inverting the percentile interval: 2·(1 + min(#replicates ≤ 0, #replicates ≥ 0))/(1 + B),
    capped at 1; p < 1 − confidence exactly when the interval excludes 0."""
    direction: int
    """+1 when the bootstrap distribution lies mostly above 0 (a better), −1 below, 0 balanced."""
    se_episodes: float
    """Standard error from the episode sample (net of the seeds' own binomial noise, see below)."""
    se_seeds: float
    """Standard error from the training-seed sample (both arms; 0 for single-run arms)."""
    seeds: tuple[int, int]
    episodes: int
    replicates: int
    seed: int
    confidence: float
    method: str

    @property
    def interval(self) -> tuple[float, float]:
        return (self.low, self.high)

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        doc["seeds"] = list(self.seeds)
        return doc


def _runs(x, name: str) -> np.ndarray:
    """(seeds × episodes) float array of 0/1 (or fractional, within [0, 1]) outcomes; 1-D means one run."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be a (seeds × episodes) array with at least one run and one episode, "
                         f"got shape {np.shape(x)}")
    arr = arr.astype(float)
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"{name} must hold success outcomes in [0, 1]")
    return arr


def _resampled_sums(rng: np.random.Generator, values: np.ndarray, counts: np.ndarray, n: int,
                    replicates: int) -> np.ndarray:
    """Column sums of `values` (K distinct episode patterns × m columns, pattern k held by counts[k] of the n
    episodes) over n episodes resampled with replacement, per replicate: (replicates × m).

    Resampling episodes uniformly is the same in distribution as a multinomial over the distinct patterns
    (binary arms have at most 2^runs of them), which is what makes 10,000 replicates cost milliseconds;
    with many distinct patterns (fractional outcomes) it draws episode indices in chunks instead."""
    k = counts.size
    if k <= 256:
        return rng.multinomial(n, counts / n, size=replicates) @ values
    per_episode = np.repeat(values, counts, axis=0)  # (n × m), episodes grouped by pattern
    out = np.empty((replicates, values.shape[1]))
    step = max(1, 2_000_000 // n)
    for lo in range(0, replicates, step):
        hi = min(replicates, lo + step)
        out[lo:hi] = per_episode[rng.integers(0, n, size=(hi - lo, n))].sum(axis=1)
    return out


def _seed_components(x: np.ndarray) -> tuple[float, float]:
    """(variance of the arm's seed-mean rate across seeds / S, residual seed×episode mean square / S).

    Two-way crossed ANOVA of one arm (rows seeds, columns episodes): the seed row means vary by the seed
    effect plus each seed's binomial noise, Var(row mean) = σ²_seed + σ²_resid/N; the residual mean square
    estimates σ²_resid. A single run gives (0, 0): it is treated as deterministic."""
    s, n = x.shape
    if s < 2:
        return 0.0, 0.0
    rows = x.mean(axis=1)
    cols = x.mean(axis=0)
    resid = x - rows[:, None] - cols[None, :] + x.mean()
    ms_resid = float(np.sum(resid * resid)) / ((s - 1) * max(n - 1, 1))
    return float(np.var(rows, ddof=1)) / s, ms_resid / s


def _summarise(draws: np.ndarray, estimate: float, *, se_episodes: float, se_seeds: float, seeds, episodes,
               replicates, seed, confidence, method) -> RateDifference:
    """Percentile interval and the p-value that inverts it, with the (1 + count)/(1 + B) convention for both:
    the interval's ends are the k-th smallest and k-th largest draws, k = ⌈tail·(B + 1) − 1⌉, so that
    p < 1 − confidence exactly when the interval excludes 0 (below, above = draws ≤ 0, ≥ 0)."""
    ordered = np.sort(draws)
    tail = (1 - confidence) / 2
    k = min(replicates, max(1, math.ceil(tail * (replicates + 1) - 1 - 1e-9)))
    below, above = int(np.sum(draws <= 0)), int(np.sum(draws >= 0))
    p = min(1.0, 2 * (1 + min(below, above)) / (1 + replicates))
    return RateDifference(estimate=float(estimate), low=float(ordered[k - 1]), high=float(ordered[replicates - k]),
                          p_value=float(p), direction=int(np.sign(above - below)), se_episodes=float(se_episodes),
                          se_seeds=float(se_seeds), seeds=tuple(seeds), episodes=int(episodes),
                          replicates=int(replicates), seed=int(seed), confidence=float(confidence), method=method)


def bootstrap_rate_difference(a, b, *, replicates: int = 10_000, seed: int = 0, confidence: float = 0.95,
                              method: str = "seed-t") -> RateDifference:
    """Paired two-level bootstrap of mean(a) − mean(b): `a` is (S_a × N), `b` is (S_b × N) (1-D = one run, as
    the yardstick), per-episode success of every run on the same N episodes. Deterministic given `seed`
    (a numpy Generator's).

    Both methods resample the N episodes with replacement, with the same indices for both arms (the arms
    are paired by episode); they differ in the seed level:

    - ``"seed-t"`` (default): each replicate is  estimate + k·(d̄* − d̄) + Σ_arms sd_arm·T_arm,
      T_arm ~ t(S_arm − 1) independent, where d̄* is the resampled mean of d (per-episode difference of the
      arms' seed-mean success), sd_arm² = Var(the arm's per-seed rates)/S_arm — which already holds each
      seed's own binomial noise — and k removes that noise from the episode part (residual seed×episode
      mean square of a two-way ANOVA), so nothing counts twice. The variance is then the crossed design's,
      σ²_seed,a/S_a + σ²_seed,b/S_b + Var(episode effects, a − b)/N + σ²_resid,a/(S_a·N) + σ²_resid,b/(S_b·N).
      An arm with one run has no seed term: right for the deterministic yardstick; for a one-seed model
      the interval then carries the episodes only.
    - ``"hierarchical"``: resample each arm's seeds with replacement, then the episodes — the textbook
      scheme, kept for comparison.

    Why seed-t: with S = 3 the between-seed variance has 2 degrees of freedom; seed resampling sees only
    ten multisets, shrinks that variance by (S−1)/S and has normal tails, so when seeds differ in their true
    rate it rejects a true null too often (5–9.5% at nominal 5% in tests/test_stats.py's worlds), as does a
    single Welch–Satterthwaite t (6–6.5%). The t(S−1) draw (the fiducial distribution of the seed mean)
    holds the size (2–3%) at the cost of some power; it reduces to a t-test on seed rates when seeds
    dominate and to the paired episode bootstrap when they do not vary.

    Returns the point estimate (plain difference of means), the percentile interval, a two-sided p-value
    by inverting that interval (p < 1 − confidence ⇔ the interval excludes 0; inversion rather than a
    null-shifted distribution, so the interval and the verdict can never disagree), the direction, the two
    standard-error parts, and the replicates and seed used."""
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {BOOTSTRAP_METHODS}, got {method!r}")
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")
    if int(replicates) < 1:
        raise ValueError("replicates must be positive")
    replicates = int(replicates)
    xa, xb = _runs(a, "a"), _runs(b, "b")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"the arms must be scored on the same episodes: a has {xa.shape[1]}, b has {xb.shape[1]}")
    (sa, n), sb = xa.shape, xb.shape[0]
    rng = np.random.default_rng(seed)
    estimate = xa.mean() - xb.mean()
    seed_var_a, resid_a = _seed_components(xa)
    seed_var_b, resid_b = _seed_components(xb)
    d = xa.mean(axis=0) - xb.mean(axis=0)
    net_episode_var = max(0.0, (float(np.var(d, ddof=1)) if n > 1 else 0.0) - resid_a - resid_b) / n
    common = dict(se_episodes=math.sqrt(net_episode_var), se_seeds=math.sqrt(seed_var_a + seed_var_b),
                  seeds=(sa, sb), episodes=n, replicates=replicates, seed=seed, confidence=confidence, method=method)

    if method == "hierarchical":
        stacked = np.vstack([xa, xb])
        patterns, counts = np.unique(stacked, axis=1, return_counts=True)
        sums = _resampled_sums(rng, patterns.T, counts, n, replicates)     # (B × runs): per-run resampled sums
        pick_a = rng.multinomial(sa, np.full(sa, 1 / sa), size=replicates)  # seed multiplicities per replicate
        pick_b = rng.multinomial(sb, np.full(sb, 1 / sb), size=replicates)
        draws = (np.sum(pick_a * sums[:, :sa], axis=1) / (sa * n)
                 - np.sum(pick_b * sums[:, sa:], axis=1) / (sb * n))
        return _summarise(draws, estimate, **common)

    values, counts = np.unique(d, return_counts=True)
    draws_ep = _resampled_sums(rng, values[:, None], counts, n, replicates)[:, 0] / n - d.mean()
    gross = float(np.var(d))  # the resampled mean's variance is var(d, ddof=0)/n
    scale = math.sqrt(net_episode_var * n / gross) if gross > 0 else 0.0
    draws = estimate + scale * draws_ep
    for s, var in ((sa, seed_var_a), (sb, seed_var_b)):  # t is symmetric: b's term needs no minus sign
        if s > 1 and var > 0:
            draws = draws + math.sqrt(var) * rng.standard_t(s - 1, size=replicates)
    return _summarise(draws, estimate, **common)


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down; monotone in the raw p-values, capped at 1).

    Reject hypothesis i at family-wise level α exactly when adjusted[i] < α. Why Holm: it controls the
    family-wise error over the models compared in one world under any dependence between the tests (they
    share the yardstick and the episodes) and is uniformly more powerful than Bonferroni."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError("holm takes a 1-D sequence of p-values")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("p-values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


def verdict(result: RateDifference, p_adjusted: float | None = None, alpha: float = 0.05) -> str:
    """"better" / "worse" (arm a against arm b) / "no significant difference", from the (Holm-adjusted, when
    given) p-value at `alpha`; the direction is the side of 0 the bootstrap distribution lies on.

    Verdicts come from adjusted p-values, never from intervals at adjusted levels: Holm's step-down has no
    matching simultaneous intervals, so intervals are reported at their nominal confidence (marginal). For
    a single comparison (no adjustment) the two agree: p < 1 − confidence ⇔ the interval excludes 0."""
    p = result.p_value if p_adjusted is None else float(p_adjusted)
    if p >= alpha or result.direction == 0:
        return NO_DIFFERENCE
    return BETTER if result.direction > 0 else WORSE


def compare_family(pairs: Mapping, *, alpha: float = 0.05, replicates: int = 10_000, seed: int = 0,
                   confidence: float = 0.95, method: str = "seed-t") -> dict:
    """Bootstrap every (a, b) comparison of one family — e.g. each model against the yardstick in one world,
    or every pair of models — Holm-correct the p-values over the family and give each its verdict.

    `pairs` maps a key (a model name, a (model, model) tuple) to (a, b) outcome arrays as in
    `bootstrap_rate_difference`. Every comparison uses the same `seed` (common random numbers), so a
    comparison's interval does not depend on which others are in the family. Returns key → the result's
    JSON fields plus "p_adjusted", "alpha" and "verdict"."""
    results = {key: bootstrap_rate_difference(a, b, replicates=replicates, seed=seed, confidence=confidence,
                                              method=method) for key, (a, b) in pairs.items()}
    adjusted = holm([r.p_value for r in results.values()])
    return {key: {**r.to_json(), "p_adjusted": float(p), "alpha": alpha, "verdict": verdict(r, p, alpha)}
            for (key, r), p in zip(results.items(), adjusted)}


def mcnemar_per_seed(runs, reference) -> list[dict]:
    """Exact McNemar of each seed's run (rows of `runs`, seeds × episodes) against one reference run on the
    same episodes (the yardstick; 1-D or 1 × N): a list of `mcnemar_exact` results with "seed" (row index).
    Kept beside the pooled interval because it shows whether every trained copy, not just the average,
    differs from the reference; these p-values are per seed and unadjusted."""
    x, ref = _runs(runs, "runs"), _runs(reference, "reference")
    if ref.shape[0] != 1:
        raise ValueError("the reference must be a single run")
    if x.shape[1] != ref.shape[1]:
        raise ValueError(f"the runs must be scored on the reference's episodes: {x.shape[1]} vs {ref.shape[1]}")
    if np.any((x != 0) & (x != 1)) or np.any((ref != 0) & (ref != 1)):
        raise ValueError("McNemar needs binary outcomes")
    return [{"seed": s, **mcnemar_exact(row.astype(bool), ref[0].astype(bool))} for s, row in enumerate(x)]
