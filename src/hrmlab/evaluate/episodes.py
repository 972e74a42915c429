"""Closed-loop episodes, batched: every forecaster drives the planner on the same episodes.

Per episode: W warm-up physics steps build the history, then up to M steps of
plan → move the agent to the chosen cell → physics step → goal / crash tests (order per protocol).
All episodes of a chunk advance together; the world is stepped with numpy and the planner is one
compiled call per step, so the cost per step is one forecast call plus one planner call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hrmlab.forecast.base import Forecaster, Observation
from hrmlab.planning.spacetime_astar import STATUS_GOAL, PlannerConfig, plan
from hrmlab.evaluate.protocols import Protocol
from hrmlab.worlds import bounce_grid
from hrmlab.worlds.bounce_grid import BounceGridConfig, WorldState

OUTCOMES = ("success", "crash", "timeout")
SUCCESS, CRASH, TIMEOUT = 0, 1, 2


@dataclass
class EpisodeRecords:
    """Per-episode results of one forecaster on one chunk of episodes."""

    outcome: np.ndarray  # (E,) 0 success, 1 crash, 2 timeout
    steps: np.ndarray  # (E,) agent moves until the episode ended
    plan_seconds: float = 0.0  # planner time (s), all steps
    forecast_seconds: float = 0.0  # forecaster time (s), all steps
    plan_calls: int = 0  # episode-steps planned (sum over steps of active episodes)
    ade_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (horizon,) summed L2 error per step ahead
    ade_count: int = 0  # obstacle-forecasts that entered ade_sum
    trajectories: np.ndarray | None = None  # (E, M+1, 2) agent cells, when recorded


def make_episodes(protocol: Protocol, world: BounceGridConfig, indices: np.ndarray, split: str = "test") -> WorldState:
    """The protocol's episodes `indices`: legacy seeds for seed protocols, else `split` (the test split;
    `val` for choosing settings)."""
    world = protocol.world or world
    if protocol.seed_offset is not None:
        return bounce_grid.reset_seed_exact(world, np.asarray(indices) + protocol.seed_offset)
    return bounce_grid.reset_split(world, split, indices)


def warm_up(world: BounceGridConfig, state: WorldState, steps: int, history_len: int) -> np.ndarray:
    """Run the warm-up physics steps; returns the history (B, N, H, 2), oldest first.

    The history starts with the reset positions and keeps the last `history_len` positions (after
    enough warm-up steps the reset position has scrolled out, as in the seed's fixed-length deque)."""
    frames = [state.pos.copy()]
    for _ in range(steps):
        bounce_grid.step(world, state)
        frames.append(state.pos.copy())
    frames = frames[-history_len:]
    history = np.stack(frames, axis=2)
    if history.shape[2] < history_len:  # pad with the oldest position
        pad = np.repeat(history[:, :, :1], history_len - history.shape[2], axis=2)
        history = np.concatenate([pad, history], axis=2)
    return history


def run_closed_loop(protocol: Protocol, world: BounceGridConfig, planner: PlannerConfig,
                    forecaster: Forecaster, indices: np.ndarray, *, history_len: int = 20,
                    forecast_error: bool = True, record_paths: bool = False, policy=None,
                    split: str = "test") -> EpisodeRecords:
    """Run `forecaster` + planner on the protocol's episodes `indices` (one batch).

    `policy(obs, agents, forecast, idx) -> next cells` replaces the A* planner when given (e.g. the
    space-time diffusion planner); `idx` are the active episodes' indices in this batch, and
    `planner.horizon` still sets how far the forecast reaches. `split` picks non-seed episodes."""
    world = protocol.world or world
    if protocol.horizon is not None or protocol.radius is not None:
        planner = PlannerConfig(horizon=protocol.horizon or planner.horizon,
                                radius=protocol.radius or planner.radius, time_index=planner.time_index)
    state = make_episodes(protocol, world, indices, split)
    batch = state.batch
    history = warm_up(world, state, protocol.warmup, history_len)
    agent = state.start.copy()
    outcome = np.full(batch, TIMEOUT, dtype=np.int64)
    steps = np.zeros(batch, dtype=np.int64)
    active = np.ones(batch, dtype=bool)
    horizon = planner.horizon
    rec = EpisodeRecords(outcome, steps, ade_sum=np.zeros(horizon))
    paths = np.zeros((batch, protocol.max_steps + 1, 2), dtype=np.int64) if record_paths else None
    if paths is not None:
        paths[:, :] = agent[:, None]

    if protocol.one_shot:
        obs = Observation(history, state, world)
        forecast = forecaster.forecast(obs, horizon)
        _, status, _ = plan(state.walls, agent, state.goal, forecast, planner)
        rec.outcome[:] = np.where(status == STATUS_GOAL, SUCCESS, TIMEOUT)
        return rec

    for step_idx in range(protocol.max_steps):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        sub = state if idx.size == batch else state.subset(idx)
        obs = Observation(history[idx], sub, world)
        t0 = time.perf_counter()
        forecast = forecaster.forecast(obs, horizon)
        t1 = time.perf_counter()
        if policy is None:
            moves, _, _ = plan(sub.walls, agent[idx], sub.goal, forecast, planner)
        else:
            moves = policy(obs, agent[idx], forecast, idx)
        t2 = time.perf_counter()
        rec.forecast_seconds += t1 - t0
        rec.plan_seconds += t2 - t1
        rec.plan_calls += idx.size
        if forecast_error and forecast.shape[1] > 0:
            truth = bounce_grid.rollout(world, sub, horizon)
            err = np.linalg.norm(forecast[:, :, :horizon] - truth, axis=-1)  # (b, N, horizon)
            rec.ade_sum += err.sum(axis=(0, 1))
            rec.ade_count += err.shape[0] * err.shape[1]
        agent[idx] = moves
        steps[idx] += 1
        bounce_grid.step(world, state)
        history = np.concatenate([history[:, :, 1:], state.pos[:, :, None]], axis=2)
        if paths is not None:
            paths[:, step_idx + 1] = agent
        dist_goal = np.linalg.norm(agent[idx] - state.goal[idx], axis=-1)
        dist_obs = np.linalg.norm(state.pos[idx] - agent[idx, None, :], axis=-1).min(axis=1)
        reached = dist_goal < protocol.goal_radius
        crashed = dist_obs < protocol.crash_radius
        if protocol.goal_first:
            crashed &= ~reached
        else:
            reached &= ~crashed
        outcome[idx[reached]] = SUCCESS
        outcome[idx[crashed]] = CRASH
        active[idx[reached | crashed]] = False
    rec.trajectories = paths
    return rec
