"""Charts of a run, drawn headless with matplotlib's Agg backend.

Each function takes an `EvaluationResult` (or training logs), writes one PNG and returns its path — or None
when the run holds nothing to draw (e.g. no training logs, a diffusion run without forecast error),
so a report shows what exists and never fails on what does not. Every chart carries a title, axis
labels with units and a legend, and a forecaster keeps its colour across all charts and animations.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed, ever
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hrmlab.evaluate.result import EvaluationResult  # noqa: E402

log = logging.getLogger(__name__)

DPI = 110
OUTCOME_COLORS = {"success": "#2ca02c", "crash": "#d62728", "timeout": "#f2b134"}

# Fixed colours for the names runs share, so hrm is the same orange in every run and chart; other
# names take the rest of the palette in order of appearance. Blue and red are kept for the agent's
# planned path and for crashes in animations.
_KNOWN_COLORS = {
    "hrm": "#ff7f0e", "lstm": "#9467bd", "oracle": "#2ca02c", "bounce-aware": "#17becf",
    "constant-velocity": "#8c564b", "zero": "#e377c2", "ignore": "#7f7f7f",
    "diffusion": "#ff7f0e", "line+refine": "#8c564b",
}
_SPARE_COLORS = ["#bcbd22", "#1b9e77", "#a6761d", "#e7298a", "#66a61e", "#7570b3", "#d95f02", "#666666"]


def forecaster_colors(names) -> dict[str, str]:
    """A colour per name: fixed for known forecasters/planners, then spare colours in order."""
    colors, spare = {}, iter(_SPARE_COLORS * 4)
    used = set()
    for name in names:
        base = name.split("-")[0] if name not in _KNOWN_COLORS else name
        color = _KNOWN_COLORS.get(name) or _KNOWN_COLORS.get(base)
        if color is None or color in used:
            color = next(spare)
        colors[name] = color
        used.add(color)
    return colors


def _title_suffix(results: EvaluationResult) -> str:
    n = results.episodes.count
    return f"protocol {results.protocol}" + (f", {n} episodes" if n else "")


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    log.debug("wrote %s", path)
    return path


def plot_success_rates(results: EvaluationResult, path: Path) -> Path | None:
    """Bar per forecaster: success rate with its 95% Wilson interval, successes/episodes on the bar."""
    rows = {n: r for n, r in results.rows.items() if r.episodes}
    if not rows:
        return None
    names = list(rows)
    colors = forecaster_colors(names)
    rates = np.array([100 * r.success_rate for r in rows.values()])
    ci = np.array([r.ci95 for r in rows.values()]) * 100
    err = np.stack([np.clip(rates - ci[:, 0], 0, None), np.clip(ci[:, 1] - rates, 0, None)])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4.2))
    x = np.arange(len(names))
    ax.bar(x, rates, color=[colors[n] for n in names], edgecolor="black", linewidth=0.6)
    ax.errorbar(x, rates, yerr=err, fmt="none", ecolor="black", capsize=5, linewidth=1.2, label="95% Wilson interval")
    for xi, (name, r) in zip(x, rows.items()):
        ax.text(xi, 2, f"{r.successes}/{r.episodes}", ha="center", va="bottom", fontsize=8,
                color="white", fontweight="bold")
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, 105)
    ax.set_ylabel("episodes reaching the goal (%)")
    ax.set_xlabel("forecaster")
    ax.set_title(f"Success rate with 95% CI — {_title_suffix(results)}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def plot_outcomes(results: EvaluationResult, path: Path) -> Path | None:
    """Stacked bar per forecaster: share of episodes ending in success, crash and timeout."""
    rows = results.rows
    if not rows:
        return None
    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2.5), 4.2))
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for outcome, color in OUTCOME_COLORS.items():
        counts = np.array([r.outcomes.get(outcome, 0) for r in rows.values()], dtype=float)
        totals = np.array([max(1, sum(r.outcomes.values())) for r in rows.values()], dtype=float)
        share = 100 * counts / totals
        ax.bar(x, share, bottom=bottom, color=color, edgecolor="black", linewidth=0.6, label=outcome)
        for xi, b, s, c in zip(x, bottom, share, counts):
            if s >= 6:
                ax.text(xi, b + s / 2, f"{int(c)}", ha="center", va="center", fontsize=8)
        bottom += share
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, 100)
    ax.set_ylabel("episodes (%)  — numbers are counts")
    ax.set_xlabel("forecaster")
    ax.set_title(f"How episodes end — {_title_suffix(results)}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="outcome")
    return _save(fig, path)


def plot_forecast_error(results: EvaluationResult, path: Path) -> Path | None:
    """Mean forecast error (L2, cells) against steps ahead, one line per forecaster."""
    rows = {n: r.forecast_error_by_step for n, r in results.rows.items() if r.forecast_error_by_step}
    if not rows:
        return None
    colors = forecaster_colors(results.rows)
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for name, err in rows.items():
        steps = np.arange(1, len(err) + 1)
        ax.plot(steps, err, marker="o", markersize=3, color=colors[name], label=name)
    top = max(max(err) for err in rows.values())
    floor = min((v for err in rows.values() for v in err if v > 0), default=top)
    scale = ""
    if top > 100 * max(floor, 0.1):  # one diverged model would flatten every other line
        ax.set_yscale("symlog", linthresh=0.1)
        scale = ", log scale"
    ax.set_xlabel("steps ahead (physics steps)")
    ax.set_ylabel(f"mean error (cells{scale})")
    ax.set_title(f"Forecast error against horizon step — {_title_suffix(results)}\n"
                 "(distance between predicted and true obstacle position, mean over planning steps)", fontsize=10)
    ax.set_xlim(left=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="forecaster")
    return _save(fig, path)


def plot_planning_time(results: EvaluationResult, path: Path) -> Path | None:
    """Milliseconds per planning step: forecaster call and A* search, stacked, per forecaster."""
    rows = {n: r for n, r in results.rows.items()
            if r.plan_ms_per_step is not None or r.forecast_ms_per_step is not None}
    if not rows:
        return None
    names = list(rows)
    forecast = np.array([r.forecast_ms_per_step or 0.0 for r in rows.values()])
    planning = np.array([r.plan_ms_per_step or 0.0 for r in rows.values()])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2.5), 4.2))
    x = np.arange(len(names))
    ax.bar(x, forecast, color="#9ecae1", edgecolor="black", linewidth=0.6, label="forecast")
    ax.bar(x, planning, bottom=forecast, color="#3182bd", edgecolor="black", linewidth=0.6, label="A* search")
    for xi, total in zip(x, forecast + planning):
        ax.text(xi, total, f"{total:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel("time per episode-step (ms)")
    ax.set_xlabel("forecaster")
    ax.set_title(f"Time per planning step — {_title_suffix(results)}")
    ax.set_ylim(0, max(1e-3, float((forecast + planning).max())) * 1.18)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _curve(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, str]:
    """x (optimizer step where known, else epoch) and y of rows carrying a finite positive `key`."""
    last_step_of_epoch: dict = {}
    for r in rows:
        if isinstance(r.get("step"), (int, float)) and r.get("epoch") is not None:
            last_step_of_epoch[r["epoch"]] = max(r["step"], last_step_of_epoch.get(r["epoch"], 0))
    xs, ys, unit = [], [], "step"
    for r in rows:
        y = r.get(key)
        if not isinstance(y, (int, float)) or not math.isfinite(y) or y <= 0:
            continue
        x = r.get("step")
        if not isinstance(x, (int, float)):
            x = last_step_of_epoch.get(r.get("epoch"))
        if x is None and isinstance(r.get("epoch"), (int, float)):
            x, unit = r["epoch"], "epoch"
        if x is None:
            x = len(xs)
        xs.append(x)
        ys.append(y)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), unit


def plot_training_curves(curves: dict[str, list[dict]], path: Path) -> Path | None:
    """Training loss (thin) and validation loss (markers) per model on a log scale."""
    drawn = False
    colors = forecaster_colors(curves)
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    units = set()
    for name, rows in curves.items():
        x, y, unit = _curve([r for r in rows if "loss" in r], "loss")
        if len(x):
            ax.plot(x, y, color=colors[name], linewidth=1.0, alpha=0.8, label=f"{name} training loss")
            units.add(unit)
            drawn = True
        x, y, unit = _curve(rows, "val_loss")
        if len(x):
            ax.plot(x, y, color=colors[name], linestyle="--", marker="o", markersize=4,
                    label=f"{name} validation loss")
            units.add(unit)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step" if units == {"step"} else "epoch" if units == {"epoch"} else "step / epoch")
    ax.set_ylabel("loss (log scale)")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
