"""Closed-loop and planner speed: `hrmlab bench --only closed_loop,planner`."""

from __future__ import annotations

import time

import numpy as np

from hrmlab.evaluate.episodes import run_closed_loop
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.forecast.physics import ConstantVelocityForecaster
from hrmlab.planning import spacetime_astar
from hrmlab.planning.spacetime_astar import PlannerConfig
from hrmlab.worlds import bounce_grid
from hrmlab.worlds.bounce_grid import BounceGridConfig


def bench_closed_loop(episodes: int = 500, repeats: int = 3) -> dict:
    """Closed-loop environment steps per second: constant velocity, seed-v3 episodes, one process."""
    protocol = get_protocol("seed-v3")
    world, planner = BounceGridConfig(), PlannerConfig()
    forecaster = ConstantVelocityForecaster()
    run_closed_loop(protocol, world, planner, forecaster, np.arange(4), forecast_error=False)  # JIT warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        rec = run_closed_loop(protocol, world, planner, forecaster, np.arange(episodes), forecast_error=False)
        best = max(best, rec.steps.sum() / (time.perf_counter() - t0))
    return {"closed_loop_steps_per_s": round(best, 1), "closed_loop_episodes": episodes}


def bench_planner(plans: int = 2000) -> dict:
    """Single-episode planner calls on realistic states (seed-v3 worlds after warm-up, CV forecasts)."""
    world, planner = BounceGridConfig(), PlannerConfig()
    state = bounce_grid.reset_seed_exact(world, np.arange(100, 150))
    for _ in range(20):
        bounce_grid.step(world, state)
    forecast = bounce_grid.rollout(world, state, planner.horizon)
    agents = np.zeros((state.batch, 2), dtype=np.int64)
    rng = np.random.default_rng(0)
    agents[:] = rng.integers(0, world.grid_size, size=(state.batch, 2))
    agents[state.walls[np.arange(state.batch), agents[:, 0], agents[:, 1]]] = 0
    spacetime_astar.plan(state.walls[:1], agents[:1], state.goal[:1], forecast[:1], planner)  # warm-up
    times = []
    for i in range(plans):
        b = i % state.batch
        t0 = time.perf_counter()
        spacetime_astar.plan(state.walls[b:b + 1], agents[b:b + 1], state.goal[b:b + 1], forecast[b:b + 1], planner)
        times.append(time.perf_counter() - t0)
    times = np.array(times)
    return {"plans_per_s": round(1.0 / times.mean(), 1), "plan_ms_p50": round(1000 * float(np.median(times)), 4),
            "plan_ms_p99": round(1000 * float(np.quantile(times, 0.99)), 4)}
