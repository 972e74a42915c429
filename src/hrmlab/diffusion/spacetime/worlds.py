"""The two worlds as the space-time planner sees them: move rules, forecasts, histories.

The planner works on any square grid with static cells, a goal and moving disc obstacles. BounceGrid
brings its forecasters (`hrmlab.forecast`); BlobWorld gets the same forecaster interface here: the
history-only physics rules are reused as they are (BounceGrid's `bounce-aware` rule through
`blob_world.forecaster_view`, a view of the BlobWorld map), the oracle steps a copy of the BlobWorld. Both
worlds' closed loops are in `evaluate/episodes.py`; BlobWorld's rules in `worlds/blob_world.py`.
"""

from __future__ import annotations

import numpy as np

from hrmlab.diffusion.spacetime.trajectory import GRID_MOVES, KING_MOVES, MoveRules
from hrmlab.errors import UserError
from hrmlab.forecast.base import Forecaster, Observation
from hrmlab.forecast.physics import PHYSICS_FORECASTERS
from hrmlab.worlds import blob_world
from hrmlab.worlds.blob_world import BlobWorldConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

WORLDS = ("blob", "grid")


def blob_rules(world: BlobWorldConfig, goal_tolerance: float, collision_radius: float) -> MoveRules:
    """BlobWorld: 8 king moves + wait (the expert's), goal and collision as the `standard` protocol."""
    return MoveRules(world.map_size, KING_MOVES, goal_tolerance, collision_radius)


def grid_rules(world: BounceGridConfig, goal_radius: float, crash_radius: float) -> MoveRules:
    """BounceGrid: 4 moves + wait (the grid A*'s), goal and crash radii of the protocol."""
    return MoveRules(world.grid_size, GRID_MOVES, goal_radius, crash_radius)


def obstacles_ahead(now: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """Positions now (B, N, 2) + forecast (B, N, K, 2) (k+1 steps ahead) → (B, K+1, N, 2), index = steps
    from now: the time axis of a space-time trajectory."""
    return np.concatenate([now[:, None], np.transpose(forecast, (0, 2, 1, 3))], axis=1)


# ------------------------------------------------------------------------------------------ BlobWorld


class BlobOracleForecaster(Forecaster):
    """Perfect knowledge on BlobWorld: steps a copy of the true world (`Observation.state` is a BlobState)."""

    name = "oracle"

    def __init__(self, world: BlobWorldConfig):
        self.world = world

    def forecast(self, obs: Observation, horizon: int) -> np.ndarray:
        traj = blob_world.trajectory(self.world, obs.state, horizon)[:, 1:]  # (B, horizon, N, 2)
        return np.transpose(traj, (0, 2, 1, 3))


def blob_forecaster(name: str, world: BlobWorldConfig, checkpoint: str | None = None) -> Forecaster:
    """A forecaster for BlobWorld: a physics rule by name, or a trained checkpoint (it sees positions
    divided by its own training grid size, so a BounceGrid model is out of its training range here)."""
    if checkpoint is not None:
        from hrmlab.forecast.loading import load_forecaster

        return load_forecaster(checkpoint, name=name)
    if name == "oracle":
        return BlobOracleForecaster(world)
    if name not in PHYSICS_FORECASTERS:
        raise UserError(f"unknown forecaster {name!r}; valid choices: {', '.join(PHYSICS_FORECASTERS)}")
    return PHYSICS_FORECASTERS[name]()
