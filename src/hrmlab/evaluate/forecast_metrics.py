"""Forecast quality on validation episodes, next to the physics baselines a model has to beat.

For each episode of the BounceGrid validation split the world is stepped `steps` times; at evaluation
times t = history, history + stride, ... every forecaster sees the last `history` positions of every
obstacle and forecasts `horizon` steps. Reported per forecaster:

* one_step_mse: MSE of the first predicted displacement in normalised units (position / grid size),
  averaged over both coordinates — the training loss (SPEC §3: zero motion ≈ 6.0e-4, constant velocity
  ≈ 4.8e-5 on the training distribution).
* ade / fde: mean / final Euclidean error over the horizon, in cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrmlab.forecast.base import Forecaster, Observation
from hrmlab.forecast.physics import ConstantVelocityForecaster, ZeroMotionForecaster
from hrmlab.worlds import OBSERVED_HISTORY, bounce_grid
from hrmlab.worlds.bounce_grid import BounceGridConfig


@dataclass
class ForecastEvalConfig:
    """Which episodes and windows forecasts are scored on."""

    episodes: int = 200
    """Validation episodes (indices 0..episodes-1 of the split)."""
    split: str = "val"
    """Episode split; never the training split."""
    history: int = OBSERVED_HISTORY
    """Observed positions per obstacle (the models' H)."""
    horizon: int = 20
    """Forecast steps scored by ADE/FDE (the planner's horizon)."""
    steps: int = 70
    """Physics steps per episode (the data collection's S)."""
    stride: int = 10
    """Physics steps between evaluation windows of one episode."""


def default_baselines() -> list[Forecaster]:
    return [ZeroMotionForecaster(), ConstantVelocityForecaster()]


def forecast_metrics(forecasters: Forecaster | list[Forecaster], world: BounceGridConfig,
                     cfg: ForecastEvalConfig | None = None, baselines: list[Forecaster] | None = None) -> dict:
    """{name: {one_step_mse, ade, fde, samples}} for `forecasters` and then the baselines (zero motion and
    constant velocity by default), all on the same episodes and windows."""
    cfg = cfg or ForecastEvalConfig()
    if isinstance(forecasters, Forecaster):
        forecasters = [forecasters]
    everyone = list(forecasters) + list(default_baselines() if baselines is None else baselines)
    times = list(range(cfg.history, cfg.steps - cfg.horizon + 1, cfg.stride))
    if not times:
        raise ValueError(f"steps={cfg.steps} leave no window for history {cfg.history} + horizon {cfg.horizon}")
    state = bounce_grid.reset_split(world, cfg.split, np.arange(cfg.episodes))
    positions = np.empty((state.batch, state.pos.shape[1], cfg.steps + 1, 2))
    positions[:, :, 0] = state.pos
    snapshots = {}
    for t in range(1, cfg.steps + 1):
        bounce_grid.step(world, state)
        positions[:, :, t] = state.pos
        if t in times:
            snapshots[t] = state.copy()

    g = float(world.grid_size)
    sums = {f.name: np.zeros(3) for f in everyone}  # squared one-step error, ADE sum, FDE sum
    count = 0
    for t in times:
        obs = Observation(positions[:, :, t - cfg.history + 1:t + 1], snapshots[t], world)
        truth = positions[:, :, t + 1:t + 1 + cfg.horizon]
        count += truth.shape[0] * truth.shape[1]
        for f in everyone:
            pred = np.asarray(f.forecast(obs, cfg.horizon), dtype=np.float64)
            if pred.shape != truth.shape:
                raise ValueError(f"forecaster {f.name!r} returned {pred.shape}, expected {truth.shape}")
            err = np.linalg.norm(pred - truth, axis=-1)  # (B, N, horizon) cells
            one_step = ((pred[:, :, 0] - truth[:, :, 0]) / g) ** 2
            sums[f.name] += [one_step.mean(axis=-1).sum(), err.mean(axis=-1).sum(), err[:, :, -1].sum()]
    return {name: {"one_step_mse": s[0] / count, "ade": s[1] / count, "fde": s[2] / count, "samples": count}
            for name, s in sums.items()}


def format_forecast_table(results: dict) -> str:
    """Markdown table; the ratio columns say at a glance whether a model learned more than physics."""
    zero = results.get("zero", {}).get("one_step_mse")
    cv = results.get("constant-velocity", {}).get("one_step_mse")
    lines = ["| forecaster | one-step MSE | × below zero-motion | × below const-vel | ADE (cells) | FDE (cells) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        mse = r["one_step_mse"]
        vs_zero = f"{zero / mse:.1f}" if zero and mse > 0 else "–"
        vs_cv = f"{cv / mse:.2f}" if cv and mse > 0 else "–"
        lines.append(f"| {name} | {mse:.3g} | {vs_zero} | {vs_cv} | {r['ade']:.3f} | {r['fde']:.3f} |")
    return "\n".join(lines)
