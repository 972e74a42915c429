"""Every figure and verdict of the study, computed from a world's stored record and its per-episode outcomes
(the results file and the episodes file), so `hrmlab study --tabulate-only` recomputes them with no cache.

The statistic (hrmlab.evaluate.stats): the difference of success rates — an arm averaged over its training
seeds, minus the yardstick (or another arm) — with a 95% interval from a paired bootstrap over the episodes
plus a t-distributed seed term, so the interval carries both the episode sample and the seed sample.
Verdicts come from the bootstrap p-value after Holm's correction over one family of comparisons in a world:
(1) every arm against the yardstick, (2) every pair of arms, (3) per recursive arm, each test-time compute
scale against ×1. 10,000 replicates with a fixed seed: a tabulation is deterministic.
"""

from __future__ import annotations

import itertools
import statistics

import numpy as np
from scipy import stats as sps

from hrmlab.evaluate.stats import compare_family, mcnemar_per_seed, wilson_interval

REPLICATES = 10_000
"""Bootstrap replicates per comparison."""
BOOTSTRAP_SEED = 0
"""Generator seed of every comparison (common random numbers: a comparison does not depend on its family)."""
ALPHA = 0.05
"""Family-wise level of the Holm-corrected verdicts (intervals are 95%, marginal)."""
OUTLIER_FACTOR = 10.0
"""An evaluated seed is flagged when its best validation loss is at least this multiple of the median of its
evaluated siblings' (the arm's other evaluated seeds). Flagged seeds stay in every figure."""

OUTCOME_CODES = {"success": "s", "crash": "c", "timeout": "t"}
"""One-letter codes of the grid evaluator's outcomes (evaluate/episodes.OUTCOMES) in the episodes file."""
SUCCESS_CODE = OUTCOME_CODES["success"]

FORMAT_1_FAILED_SEED_GAP = 0.15
"""Format-1 worlds only: a seed counts as failed when its success is more than this below the best seed of the
same model in the same world (set after seeing docs/study.md's gaps; the document says so)."""


def is_format_1(record: dict) -> bool:
    """A world stored by the previous design: no per-episode outcomes, the selection seed evaluated."""
    return record.get("format", 1) < 2


# ------------------------------------------------------------------------------------------ outcomes
def successes(episodes: dict, label: str) -> np.ndarray:
    """Boolean success per episode of one evaluation row of a world's episodes record."""
    text = episodes["rows"][label]["outcomes"]
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) == ord(SUCCESS_CODE)


def _matrix(episodes: dict, labels: list[str]) -> np.ndarray:
    return np.vstack([successes(episodes, lab) for lab in labels])


def _rate_row(hits: np.ndarray) -> dict:
    k, n = int(hits.sum()), int(hits.size)
    return {"successes": k, "episodes": n, "rate": k / n if n else 0.0, "ci95": list(wilson_interval(k, n))}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


# ------------------------------------------------------------------------------------------ flags
def outlier_ratios(val_losses: dict[str, float | None]) -> dict[str, float]:
    """label → best validation loss / median of its siblings', for the evaluated seeds of one arm at or beyond
    `OUTLIER_FACTOR` (a flag for the reader, never a reason to drop the seed). Needs at least one sibling."""
    known = {lab: v for lab, v in val_losses.items() if v is not None}
    out = {}
    for lab, value in known.items():
        siblings = [v for other, v in known.items() if other != lab]
        if not siblings:
            continue
        median = statistics.median(siblings)
        if median > 0 and value / median >= OUTLIER_FACTOR:
            out[lab] = value / median
    return out


def grid_edge(grid: list[float], chosen: float | None) -> bool:
    """Whether `chosen` is the smallest or largest rate of a grid of two or more."""
    return chosen is not None and len(grid) > 1 and chosen in (min(grid), max(grid))


# ------------------------------------------------------------------------------------------ a world
def yardstick(physics: dict[str, dict]) -> str | None:
    """The best physics rule other than the oracle (highest success on these episodes; first on a tie): the
    strongest yardstick, which can only make a learned arm look worse."""
    rules = [n for n in physics if n != "oracle"]
    return max(rules, key=lambda n: physics[n]["successes"], default=None)


def summarize_world(record: dict, episodes: dict) -> dict:
    """A format-2 world's figures: per arm the seeds' rates, mean ± sd, costs and selection; the three Holm
    families of rate differences; per-seed McNemar against the yardstick; flagged seeds."""
    physics = {}
    for name, row in record["physics"].items():
        physics[name] = {**_rate_row(successes(episodes, name)), "ade": row.get("ade"), "fde": row.get("fde")}
    yard = yardstick(physics)
    arms, outcome = {}, {}
    for name, arm in record["arms"].items():
        labels = list(arm["runs"])
        if not labels:
            continue
        outcome[name] = _matrix(episodes, labels)
        arms[name] = _arm_summary(arm, outcome[name])
    if yard is not None and arms:
        y = successes(episodes, yard)
        vs = compare_family({name: (outcome[name], y) for name in arms}, alpha=ALPHA, replicates=REPLICATES,
                            seed=BOOTSTRAP_SEED)
        for name in arms:
            arms[name]["vs_yardstick"] = vs[name]
            seeds = [arm_run["seed"] for arm_run in record["arms"][name]["runs"].values()]
            arms[name]["mcnemar"] = [{**m, "seed": seeds[m["seed"]]} for m in mcnemar_per_seed(outcome[name], y)]
    pairs = compare_family({(a, b): (outcome[a], outcome[b]) for a, b in itertools.combinations(arms, 2)},
                           alpha=ALPHA, replicates=REPLICATES, seed=BOOTSTRAP_SEED)
    out = {key: record.get(key) for key in ("preset", "protocol", "machine", "minutes", "calls", "compute_minutes",
                                            "untimed_runs", "selection_seeds")}
    # a record without a backend predates the other engines: the local process pool ran it
    out["backend"] = record.get("backend") or "local process pool"
    out.update(episodes=record["episodes"], yardstick=yard, physics=physics, arms=arms,
               between=[{"a": a, "b": b, **test} for (a, b), test in pairs.items()],
               test_time_compute=_compute_summary(record, episodes, outcome))
    return out


def _arm_summary(arm: dict, outcome: np.ndarray) -> dict:
    runs = arm["runs"]
    labels = list(runs)
    seeds = {lab: {"seed": run["seed"], **_rate_row(outcome[i]), "val_loss": run.get("val_loss"),
                   "ade": run.get("ade"), "fde": run.get("fde")} for i, (lab, run) in enumerate(runs.items())}
    flags = outlier_ratios({lab: run.get("val_loss") for lab, run in runs.items()})
    for lab, ratio in flags.items():
        seeds[lab]["outlier"] = ratio
    rates = [s["rate"] for s in seeds.values()]
    timed = [lab for lab in labels if not runs[lab].get("seconds_partial")]
    sel = arm["selection"]
    grid = sorted(float(lr) for lr in sel["val_loss"])
    out = {
        "model": arm["model"], "rollout": arm["rollout"], "lr": arm["lr"], "grid": grid,
        "extended": list(sel.get("extended") or []), "at_edge": grid_edge(grid, arm["lr"]),
        "selection": {lr: _mean_or_none(v) for lr, v in sel["val_loss"].items()},
        "selection_per_seed": sel["val_loss"], "selection_seeds": sel.get("seeds"),
        "seeds": seeds, "mean": statistics.fmean(rates), "sd": statistics.stdev(rates) if len(rates) > 1 else 0.0,
        "ade": _mean(s["ade"] for s in seeds.values()), "fde": _mean(s["fde"] for s in seeds.values()),
        "forecast_ms_per_step": _mean(runs[lab].get("forecast_ms_per_step") for lab in labels),
        "parameters": runs[labels[0]].get("parameters"),
        "train_seconds": _mean(runs[lab].get("train_seconds") for lab in (timed or labels)),
        "outliers": sorted(flags, key=labels.index),
    }
    if len(timed) < len(labels):
        out["train_seconds_timed"] = len(timed)  # 0: every seed partly timed, the mean is a lower bound
    return out


def _mean_or_none(values: list) -> float | None:
    """Mean validation loss of one candidate rate over the selection seeds; None when any diverged (that rate
    cannot win)."""
    return None if any(v is None for v in values) else statistics.fmean(values)


def _compute_summary(record: dict, episodes: dict, outcome: dict) -> dict:
    """Per recursive arm and compute scale: success over seeds, ADE/FDE, forecast cost, and the rate difference
    against ×1 (the main evaluation; same seeds, same episodes), Holm-corrected over the arm's scales. The
    bootstrap treats the two as independent seed samples, which ignores that they are the same trained copies:
    conservative, never flattering."""
    out = {}
    for name, scales in (record.get("test_time_compute") or {}).items():
        if name not in outcome:
            continue
        base_runs = record["arms"][name]["runs"]
        table = {"1": {"mean": statistics.fmean(outcome[name].mean(axis=1)),
                       "sd": _sd(outcome[name].mean(axis=1)),
                       "ade": _mean(r.get("ade") for r in base_runs.values()),
                       "fde": _mean(r.get("fde") for r in base_runs.values()),
                       "forecast_ms_per_step": _mean(r.get("forecast_ms_per_step") for r in base_runs.values()),
                       "vs_trained": None}}
        scaled = {}
        for scale, rows in scales.items():
            scaled[scale] = _matrix(episodes, list(rows))
            rates = scaled[scale].mean(axis=1)
            table[scale] = {"mean": statistics.fmean(rates), "sd": _sd(rates),
                            "ade": _mean(r.get("ade") for r in rows.values()),
                            "fde": _mean(r.get("fde") for r in rows.values()),
                            "forecast_ms_per_step": _mean(r.get("forecast_ms_per_step") for r in rows.values())}
        tests = compare_family({scale: (m, outcome[name]) for scale, m in scaled.items()}, alpha=ALPHA,
                               replicates=REPLICATES, seed=BOOTSTRAP_SEED)
        for scale, test in tests.items():
            table[scale]["vs_trained"] = test
        out[name] = dict(sorted(table.items(), key=lambda item: float(item[0])))
    return out


def _sd(rates) -> float:
    rates = [float(r) for r in rates]
    return statistics.stdev(rates) if len(rates) > 1 else 0.0


def best_arm(summary: dict) -> str | None:
    """The arm with the highest mean success (first on a tie)."""
    arms = summary["arms"]
    return max(arms, key=lambda a: arms[a]["mean"], default=None)


# ------------------------------------------------------------------------------------------ format 1
def format_1_seed_stability(worlds: dict) -> dict:
    """Across format-1 worlds: per chosen rate, seeds trained after the selection and how many failed (more
    than `FORMAT_1_FAILED_SEED_GAP` below the model's best seed); the failures; the largest gap of a seed
    that did not fail; Fisher's exact test between two rates. The selection seeds (seed 0, or 0 … k−1) are
    left out: they won the selection on validation, so counting them would favour the chosen rates."""
    count, failed, near = {}, [], None
    for world, s in worlds.items():
        k = s.get("selection_seeds", 1)
        for model, m in s["models"].items():
            rates = {int(lab.rsplit("@s", 1)[1]): row["rate"] for lab, row in m["seeds"].items()}
            if len(rates) < 2:
                continue
            best = max(rates.values())
            for seed, rate in rates.items():
                if seed < k:
                    continue
                n, f = count.get(m["lr"], (0, 0))
                gap = best - rate
                count[m["lr"]] = (n + 1, f + (gap > FORMAT_1_FAILED_SEED_GAP))
                if gap > FORMAT_1_FAILED_SEED_GAP:
                    failed.append((world, model, seed, m["lr"], gap))
                elif near is None or gap > near[-1]:
                    near = (world, model, seed, m["lr"], gap)
    out = {"count": dict(sorted(count.items())), "failed": failed, "near": near, "fisher_p": None}
    if len(count) == 2:
        (n1, f1), (n2, f2) = out["count"].values()
        out["fisher_p"] = float(sps.fisher_exact([[f1, n1 - f1], [f2, n2 - f2]]).pvalue)
    return out
