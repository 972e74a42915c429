"""Forecast cost per roll-out mode: `hrmlab bench --only forecast`.

The quick preset's LSTM and HRM (untrained: the cost of a forecast does not depend on the weights) are
timed in every roll-out mode on the standard protocol's test episodes. So that every mode sees exactly
the same work — the same batches of the same sizes at every closed-loop step — the planner is driven by
constant-velocity forecasts, and at each step every (model, mode) forecaster forecasts the same
observation back to back (interleaved, so machine load affects all alike); only their calls are timed.

Figures: forecast_ms_per_step[model][mode] — forecaster seconds per episode-step (the evaluator's
`forecast_ms_per_step`), in one process with `threads` torch threads (evaluation workers run one thread
each); forecast_mflop[model][mode] — matmul FLOPs of one obstacle's forecast over the planner's horizon,
counted by torch.utils.flop_counter (elementwise work not counted; the LSTM counted on PyTorch's
reference kernels, which do the same matmuls as oneDNN's); the achieved GFLOP/s; and a single-thread
fp32 matmul's GFLOP/s as this CPU's practical peak.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from hrmlab.evaluate.episodes import run_closed_loop
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.forecast.base import ROLLOUTS, Forecaster, Observation
from hrmlab.forecast.models import build_model
from hrmlab.forecast.learned import LearnedForecaster
from hrmlab.forecast.physics import ConstantVelocityForecaster

MODELS = ("lstm", "hrm")


class TimedShadows(Forecaster):
    """Returns constant-velocity forecasts (they drive the planner) and times each shadow forecaster on the
    same observation."""

    name = "timed-shadows"

    def __init__(self, shadows: dict[tuple[str, str], Forecaster]):
        self.shadows = shadows
        self.seconds = {key: 0.0 for key in shadows}
        self.driver = ConstantVelocityForecaster()

    def forecast(self, obs: Observation, horizon: int) -> np.ndarray:
        for key, shadow in self.shadows.items():
            t0 = time.perf_counter()
            shadow.forecast(obs, horizon)
            self.seconds[key] += time.perf_counter() - t0
        return self.driver.forecast(obs, horizon)


def forecast_flops(forecaster: LearnedForecaster, obs: Observation, horizon: int) -> float:
    """Matmul FLOPs of one obstacle's forecast (averaged over the batch of `obs`)."""
    import warnings

    from torch.utils.flop_counter import FlopCounterMode

    with warnings.catch_warnings():  # mkldnn.flags() warns about TF32 on Intel GPUs, irrelevant here
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            forecaster.forecast(obs, horizon)
    return counter.get_total_flops() / (obs.history.shape[0] * obs.history.shape[1])


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """fp32 n×n matmul GFLOP/s in this process (its torch threads): the practical peak for dense work."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_forecast(episodes: int = 1000, chunk: int = 250, warmup_episodes: int = 8, threads: int = 1,
                   preset: str = "quick", modes=ROLLOUTS, models=MODELS) -> dict:
    from hrmlab.presets import resolve

    torch.set_num_threads(threads)
    protocol = get_protocol("standard")
    shadows = {}
    for mode in modes:
        cfg = resolve(preset, [f"forecast.rollout={mode}"])
        for kind in models:
            model = build_model(cfg.model_config(kind), seed=0)
            shadows[kind, mode] = LearnedForecaster(model, cfg.world.grid_size, cfg.data.history, device="cpu",
                                                    rollout=mode, name=f"{kind}-{mode}")
    world, planner = cfg.world, cfg.planner
    run_closed_loop(protocol, world, planner, TimedShadows(shadows), np.arange(warmup_episodes),
                    history_len=cfg.data.history, forecast_error=False)  # JIT, allocator and kernel warm-up
    timed = TimedShadows(shadows)
    calls = 0
    for start in range(0, episodes, chunk):
        rec = run_closed_loop(protocol, world, planner, timed, np.arange(start, min(episodes, start + chunk)),
                              history_len=cfg.data.history, forecast_error=False)
        calls += rec.plan_calls

    from hrmlab.evaluate.episodes import make_episodes, warm_up

    state = make_episodes(protocol, world, np.arange(chunk))
    obs = Observation(warm_up(world, state, protocol.warmup, cfg.data.history), state, world)
    ms = {kind: {} for kind in models}
    mflop = {kind: {} for kind in models}
    gflops = {kind: {} for kind in models}
    for (kind, mode), shadow in shadows.items():
        ms[kind][mode] = round(1000 * timed.seconds[kind, mode] / calls, 4)
        flops = forecast_flops(shadow, obs, planner.horizon)
        mflop[kind][mode] = round(flops / 1e6, 3)
        per_step = flops * world.num_obstacles  # one forecast per obstacle per episode-step
        gflops[kind][mode] = round(per_step / (ms[kind][mode] / 1000) / 1e9, 2)
    speedup = {kind: {mode: round(ms[kind]["window"] / ms[kind][mode], 1) for mode in modes if mode != "window"}
               for kind in models if "window" in ms[kind]}
    return {"forecast_ms_per_step": ms, "forecast_speedup_vs_window": speedup,
            "forecast_mflop_per_forecast": mflop, "forecast_achieved_gflops": gflops,
            "matmul_peak_gflops": round(matmul_gflops(), 1), "forecast_threads": threads,
            "forecast_episodes": episodes, "forecast_episode_steps": calls, "forecast_preset": preset}
