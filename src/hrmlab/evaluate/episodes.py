"""Closed-loop episodes, batched: one loop per world, every method driven on the same episodes.

* `run_closed_loop` — BounceGrid's: W warm-up physics steps build the history, then up to M steps of
  plan → move the agent to the chosen cell → physics step → goal / crash tests (order per protocol).
* `run_blob_closed_loop` — BlobWorld's: the agent starts at t = 0 (the obstacles' past is rewound), then up
  to M steps of forecast → plan → move → physics step → crash test (an illegal move is a crash) → goal test.

All episodes of a chunk advance together; the world is stepped with numpy and the planner is one
compiled call per step, so the cost per step is one forecast call plus one planner call. Both loops and
the Gymnasium envs (`hrmlab.envs`, a thin adapter over these pieces) move agents with `apply_actions` or
their policy's cells and end each step with `advance` (physics step, history, `end_tests`), so an env's
episode is the evaluator's.

An outside policy (`hrmlab.policies`) takes the place of forecaster + planner through the `policy`
hook: it sees the observation the Gymnasium envs give and returns move indices, applied by
`apply_actions` (a move off the grid or into a wall leaves the agent where it is).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from hrmlab.errors import UserError
from hrmlab.forecast.base import Forecaster, Observation
from hrmlab.policies import call_policy, observation
from hrmlab.planning.spacetime_astar import MOVES, STATUS_GOAL, PlannerConfig, plan
from hrmlab.evaluate.protocols import BLOB_PROTOCOLS, Protocol
from hrmlab.worlds import OBSERVED_HISTORY, blob_world, bounce_grid
from hrmlab.worlds.blob_world import BlobState, BlobWorldConfig
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


def running_episodes(state, active: np.ndarray, max_steps: int):
    """Each closed-loop step's running episodes, for at most `max_steps` steps: yields their indices `idx`
    and their state (`state` itself while every episode runs, else `state.subset(idx)`), and stops early
    once none runs. The caller steps the world and clears finished episodes in `active`, in place.

    One loop head for both closed loops (BounceGrid's and BlobWorld's), so both pick the running episodes
    the same way."""
    for _ in range(max_steps):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            return
        yield idx, (state if idx.size == state.batch else state.subset(idx))


def make_episodes(protocol: Protocol, world: BounceGridConfig | None, indices: np.ndarray,
                  split: str = "test") -> WorldState:
    """The protocol's episodes `indices` in `world` (None: the protocol's default world): legacy seeds for
    seed protocols, else `split` (the test split; `val` for choosing settings)."""
    world = world or protocol.default_world()
    if protocol.seed_offset is not None:
        return bounce_grid.reset_seed_exact(world, np.asarray(indices) + protocol.seed_offset)
    return bounce_grid.reset_split(world, split, indices)


def make_blob_episodes(protocol: Protocol, world: BlobWorldConfig, indices: np.ndarray,
                       split: str = "test") -> BlobState:
    """BlobWorld's `make_episodes`: legacy seeds for a seed protocol (`BLOB_PROTOCOLS`), else `split`."""
    if protocol.seed_offset is not None:
        return blob_world.reset_seed_exact(world, np.asarray(indices) + protocol.seed_offset)
    return blob_world.reset_split(world, split, indices)


def warm_up(world: BounceGridConfig, state: WorldState, steps: int, history_len: int, *,
            step=bounce_grid.step) -> np.ndarray:
    """Run the warm-up physics steps; returns the history (B, N, H, 2), oldest first.

    The history starts with the reset positions and keeps the last `history_len` positions (after
    enough warm-up steps the reset position has scrolled out, as in the seed's fixed-length deque).
    `step` is the world's physics step (BlobWorld's for its env)."""
    frames = [state.pos.copy()]
    for _ in range(steps):
        step(world, state)
        frames.append(state.pos.copy())
    frames = frames[-history_len:]
    history = np.stack(frames, axis=2)
    if history.shape[2] < history_len:  # pad with the oldest position
        pad = np.repeat(history[:, :, :1], history_len - history.shape[2], axis=2)
        history = np.concatenate([pad, history], axis=2)
    return history


def apply_actions(walls: np.ndarray, agent: np.ndarray, actions: np.ndarray, moves: np.ndarray = MOVES) -> np.ndarray:
    """Cells after move `actions` (B,) (indices into `moves`) from `agent` (B, 2); a move off the grid or
    into a wall (B, G, G) leaves the agent in place. The planner never makes such a move."""
    target = agent + moves[actions]
    g = walls.shape[-1]
    inside = np.all((target >= 0) & (target < g), axis=-1)
    clipped = np.clip(target, 0, g - 1)
    free = inside & ~walls[np.arange(len(agent)), clipped[:, 0], clipped[:, 1]]
    return np.where(free[:, None], target, agent)


def end_tests(protocol: Protocol, agent: np.ndarray, goal: np.ndarray, obstacles: np.ndarray):
    """(reached, crashed) per episode after a move and a physics step, in the protocol's order: agent
    (B, 2) within goal_radius of goal (B, 2); any obstacle (B, N, 2) within crash_radius of the agent."""
    dist_goal = np.linalg.norm(agent - goal, axis=-1)
    dist_obs = np.linalg.norm(obstacles - agent[:, None, :], axis=-1).min(axis=1)
    reached = dist_goal < protocol.goal_radius
    crashed = dist_obs < protocol.crash_radius
    if protocol.goal_first:
        crashed &= ~reached
    else:
        reached &= ~crashed
    return reached, crashed


def advance(protocol: Protocol, step, world, state, history: np.ndarray, agent: np.ndarray, idx=None):
    """The end of a closed-loop step, after the agents moved: one physics step of the world (`step`, in
    place), the history shifted by the new positions, and the protocol's `end_tests` for the episodes `idx`
    (None: every one). Returns (history, reached, crashed)."""
    step(world, state)
    history = np.concatenate([history[:, :, 1:], state.pos[:, :, None]], axis=2)
    if idx is None:
        reached, crashed = end_tests(protocol, agent, state.goal, state.pos)
    else:
        reached, crashed = end_tests(protocol, agent[idx], state.goal[idx], state.pos[idx])
    return history, reached, crashed


def observed_history(forecaster: Forecaster | None, shown: int = OBSERVED_HISTORY) -> int:
    """Positions the closed loop keeps: what observers are shown (`shown`), and at least what the
    forecaster reads, so a model trained on a longer window never sees a padded one."""
    return max(shown, getattr(forecaster, "history", 0))


def run_closed_loop(protocol: Protocol, world: BounceGridConfig | None, planner: PlannerConfig,
                    forecaster: Forecaster, indices: np.ndarray, *, history_len: int = OBSERVED_HISTORY,
                    forecast_error: bool = True, policy=None, plan_fn=None, recorder=None,
                    split: str = "test", policy_name: str = "policy") -> EpisodeRecords:
    """Run `forecaster` + planner on the protocol's episodes `indices` (one batch) in `world` (None: the
    protocol's default world; `split` picks non-seed episodes).

    `plan_fn(obs, agents, forecast, idx) -> next cells` replaces the A* planner when given (e.g. the
    space-time diffusion planner): it sees the forecaster's forecast, `idx` are the active episodes'
    indices in this batch, and `planner.horizon` still sets how far the forecast reaches. With `policy`
    (see `hrmlab.policies`), the policy chooses the moves from the observation instead and `forecaster`
    is not used. `history_len` positions are shown to a policy; a forecaster gets at least its own window.
    An exception the policy raises is one line naming `policy_name`, the episode and the step.

    `recorder(idx, agent, forecast, moves)`, if given, sees every planning step of the forecaster loop:
    the positions `idx` of the episodes still running, their cells before the move (b, 2), the forecast
    (b, N', horizon, 2) and the chosen cells (b, 2). Animations record episodes through it, so what they
    show is this loop's run, not a copy of it."""
    world = world or protocol.default_world()
    if policy is not None and protocol.one_shot:
        raise UserError(f"protocol {protocol.name} is one-shot (one plan from the start); policies need a "
                        "closed-loop protocol")
    planner = protocol.planner_for(planner)
    state = make_episodes(protocol, world, indices, split)
    batch = state.batch
    history = warm_up(world, state, protocol.warmup, observed_history(None if policy else forecaster, history_len))
    agent = state.start.copy()
    outcome = np.full(batch, TIMEOUT, dtype=np.int64)
    steps = np.zeros(batch, dtype=np.int64)
    active = np.ones(batch, dtype=bool)
    horizon = planner.horizon
    rec = EpisodeRecords(outcome, steps, ade_sum=np.zeros(horizon))
    walls_obs = state.walls.astype(np.int8) if policy is not None else None

    if protocol.one_shot:
        obs = Observation(history, state, world)
        forecast = forecaster.forecast(obs, horizon)
        moves, status, _ = plan(state.walls, agent, state.goal, forecast, planner)
        if recorder is not None:
            recorder(np.arange(batch), agent.copy(), forecast, moves)
        rec.outcome[:] = np.where(status == STATUS_GOAL, SUCCESS, TIMEOUT)
        return rec

    episode_ids = np.asarray(indices).reshape(-1)
    for t, (idx, sub) in enumerate(running_episodes(state, active, protocol.max_steps)):
        obs = Observation(history[idx], sub, world)
        if policy is not None:
            t0 = time.perf_counter()
            actions = call_policy(policy, observation(agent[idx], sub.goal, walls_obs[idx], obs.history), obs,
                                  policy_name, episodes=episode_ids[idx], step=t)
            agent[idx] = apply_actions(sub.walls, agent[idx], actions)
            rec.plan_seconds += time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            forecast = forecaster.forecast(obs, horizon)
            t1 = time.perf_counter()
            if plan_fn is None:
                moves, _, _ = plan(sub.walls, agent[idx], sub.goal, forecast, planner)
            else:
                moves = plan_fn(obs, agent[idx], forecast, idx)
            t2 = time.perf_counter()
            rec.forecast_seconds += t1 - t0
            rec.plan_seconds += t2 - t1
            if forecast_error and forecast.shape[1] > 0:
                truth = bounce_grid.rollout(world, sub, horizon)
                err = np.linalg.norm(forecast[:, :, :horizon] - truth, axis=-1)  # (b, N, horizon)
                rec.ade_sum += err.sum(axis=(0, 1))
                rec.ade_count += err.shape[0] * err.shape[1]
            if recorder is not None:
                recorder(idx, agent[idx].copy(), forecast, moves)
            agent[idx] = moves
        rec.plan_calls += idx.size
        steps[idx] += 1
        history, reached, crashed = advance(protocol, bounce_grid.step, world, state, history, agent, idx)
        outcome[idx[reached]] = SUCCESS
        outcome[idx[crashed]] = CRASH
        active[idx[reached | crashed]] = False
    return rec


def run_blob_closed_loop(world: BlobWorldConfig, policy, forecaster: Forecaster, indices: np.ndarray, *,
                         horizon: int, max_steps: int, split: str = "test",
                         goal_tolerance: float = blob_world.GOAL_TOLERANCE,
                         collision_radius: float = blob_world.COLLISION_RADIUS,
                         forecast_error: bool = False) -> EpisodeRecords:
    """BlobWorld's closed loop: `policy(obs, agents, forecast, idx) -> next cells` driven by `forecaster`
    (`horizon` steps ahead) on episodes `indices` of `split`, as the diffusion `standard` protocol runs them.

    The agent starts at t = 0 (an episode that starts within `goal_tolerance` of its goal is a success at
    once); history-based forecasters see the obstacles' past run backwards (`blob_world.rewound_history`).
    Then up to `max_steps` times: forecast → plan → move → physics step → crash test (closer than
    `collision_radius` to an obstacle, or an illegal move: more than one cell per axis, off the map or onto
    a disc) → goal test (`BLOB_PROTOCOLS` rules, crash first). `forecast_error` also measures the
    forecast's error against the true future."""
    rules = dataclasses.replace(BLOB_PROTOCOLS["standard"], max_steps=max_steps, goal_radius=goal_tolerance,
                                crash_radius=collision_radius)
    state = blob_world.reset_split(world, split, indices)
    view = blob_world.forecaster_view(world)
    history = blob_world.rewound_history(world, state, observed_history(forecaster))
    batch = state.batch
    agent = state.start.astype(np.int64).copy()
    outcome = np.full(batch, TIMEOUT, dtype=np.int64)
    steps = np.zeros(batch, dtype=np.int64)
    rec = EpisodeRecords(outcome, steps, ade_sum=np.zeros(horizon))
    reached = np.linalg.norm((agent - state.goal).astype(np.float64), axis=-1) < goal_tolerance
    outcome[reached] = SUCCESS
    active = ~reached
    g = world.map_size
    for idx, sub in running_episodes(state, active, max_steps):
        obs = Observation(history[idx], sub, view)
        t0 = time.perf_counter()
        forecast = forecaster.forecast(obs, horizon)
        t1 = time.perf_counter()
        moves = np.asarray(policy(obs, agent[idx], forecast, idx), dtype=np.int64)
        rec.forecast_seconds += t1 - t0
        rec.plan_seconds += time.perf_counter() - t1
        rec.plan_calls += idx.size
        if forecast_error and forecast.shape[1]:
            truth = np.transpose(blob_world.trajectory(world, sub, horizon)[:, 1:], (0, 2, 1, 3))
            rec.ade_sum += np.linalg.norm(forecast - truth, axis=-1).sum(axis=(0, 1))
            rec.ade_count += forecast.shape[0] * forecast.shape[1]
        illegal = (np.abs(moves - agent[idx]).max(axis=1) > 1) | ((moves < 0) | (moves >= g)).any(axis=1)
        cells = np.clip(moves, 0, g - 1)
        illegal |= state.static[idx, cells[:, 0], cells[:, 1]]
        agent[idx] = moves
        steps[idx] += 1
        history, reached, crashed = advance(rules, blob_world.step, world, state, history, agent, idx)
        crashed |= illegal
        reached &= ~illegal
        outcome[idx[reached]] = SUCCESS
        outcome[idx[crashed]] = CRASH
        active[idx[reached | crashed]] = False
    return rec
