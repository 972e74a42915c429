"""Replay one closed-loop episode with everything an animation needs recorded per step.

The batched evaluator keeps only outcomes; to *show* an episode we re-run it alone through the
evaluator's own loop (`run_closed_loop` with a per-step recorder) and record the walls, the true obstacle
positions, every forecast, every planned path and the agent's cells, so the replayed outcome is the
evaluator's outcome by construction. The true world does not depend on the agent, so all forecasters share one obstacle
trajectory; each forecaster drives its own agent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from hrmlab.evaluate.episodes import OUTCOMES, make_episodes, run_closed_loop
from hrmlab.evaluate.protocols import Protocol, get_protocol
from hrmlab.forecast.base import Forecaster
from hrmlab.forecast.registry import ForecasterSpec, build_forecaster
from hrmlab.planning.spacetime_astar import PlannerConfig, plan_path
from hrmlab.worlds import bounce_grid
from hrmlab.worlds.bounce_grid import BounceGridConfig

log = logging.getLogger(__name__)


@dataclass
class ForecasterTrack:
    """One forecaster's episode: L planning steps, L moves."""

    name: str
    agent: np.ndarray  # (L+1, 2) agent cell before step 0, then after each move
    forecasts: np.ndarray  # (L, N', horizon, 2) forecast made at each step (N' = 0 for `ignore`)
    plans: np.ndarray  # (L, horizon, 2) planned cells by time step from the agent's cell, -1 padded
    plan_status: np.ndarray  # (L,) 0 path to goal, 1 partial path toward it, 2 wait
    outcome: str = "timeout"  # success | crash | timeout
    steps: int = 0  # moves made (L)

    @property
    def end_label(self) -> str:
        return f"{self.outcome} at step {self.steps}" if self.outcome != "timeout" else f"timeout after {self.steps} steps"


@dataclass
class EpisodeReplay:
    """A replayed episode: the shared world plus one track per forecaster."""

    protocol: str
    episode: int
    walls: np.ndarray  # (G, G) bool
    start: np.ndarray  # (2,)
    goal: np.ndarray  # (2,)
    obstacles: np.ndarray  # (W + M + 1, N, 2) true positions from reset; planning step k sees index W + k
    warmup: int
    horizon: int
    crash_radius: float
    goal_radius: float
    tracks: dict[str, ForecasterTrack] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Moves of the longest track: an animation shows length + 1 agent positions."""
        return max((t.steps for t in self.tracks.values()), default=0)


def replay_episode(protocol: str | Protocol, world: BounceGridConfig, planner: PlannerConfig,
                   forecasters: list[ForecasterSpec | Forecaster], episode: int, *,
                   device: str = "cpu") -> EpisodeReplay:
    """Re-run episode `episode` of `protocol` with each forecaster, recording every step."""
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    world = world or protocol.default_world()
    planner = protocol.planner_for(planner)
    obstacles = _true_obstacles(protocol, world, episode)
    state = make_episodes(protocol, world, np.array([episode]))
    replay = EpisodeReplay(protocol.name, int(episode), state.walls[0].copy(), state.start[0].copy(),
                           state.goal[0].copy(), obstacles, protocol.warmup, planner.horizon,
                           protocol.crash_radius, protocol.goal_radius)
    for item in forecasters:
        forecaster = build_forecaster(item, device=device) if isinstance(item, ForecasterSpec) else item
        name = item.name
        replay.tracks[name] = _run_one(protocol, world, planner, forecaster, name, episode)
    return replay


def _true_obstacles(protocol: Protocol, world: BounceGridConfig, episode: int) -> np.ndarray:
    """Obstacle positions from reset through warm-up and the longest possible episode."""
    state = make_episodes(protocol, world, np.array([episode]))
    frames = [state.pos[0].copy()]
    for _ in range(protocol.warmup + protocol.max_steps):
        bounce_grid.step(world, state)
        frames.append(state.pos[0].copy())
    return np.stack(frames)


def _run_one(protocol: Protocol, world: BounceGridConfig, planner: PlannerConfig, forecaster: Forecaster,
             name: str, episode: int) -> ForecasterTrack:
    """The evaluator's own loop on a batch of one episode, recording forecasts and whole planned paths."""
    walls = make_episodes(protocol, world, np.array([episode])).walls[0]
    cells, forecasts, plans, statuses = [], [], [], []

    def record(idx, agent, forecast, moves):
        if not cells:
            cells.append(agent[0].copy())
        path, status = plan_path(walls, agent[0], goal, forecast[0], planner)
        if status != 2 and path[1, 0] >= 0 and not np.array_equal(path[1], moves[0]):
            log.warning("%s: drawn path's first move %s differs from the planner's move %s", name, path[1], moves[0])
        forecasts.append(forecast[0])
        plans.append(path)
        statuses.append(status)
        if not protocol.one_shot:
            cells.append(moves[0].copy())

    goal = make_episodes(protocol, world, np.array([episode])).goal[0]
    rec = run_closed_loop(protocol, world, planner, forecaster, np.array([episode]),
                          forecast_error=False, recorder=record)
    return _track(name, cells, forecasts, plans, statuses, int(rec.outcome[0]), planner.horizon)


def _track(name, cells, forecasts, plans, statuses, outcome, horizon) -> ForecasterTrack:
    n_obs = forecasts[0].shape[0] if forecasts else 0
    fc = np.stack(forecasts) if forecasts else np.zeros((0, n_obs, horizon, 2))
    return ForecasterTrack(name, np.stack(cells), fc, np.stack(plans), np.asarray(statuses),
                           OUTCOMES[outcome], len(cells) - 1)
