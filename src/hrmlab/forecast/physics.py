"""Physics forecasters: reference points any learned model must beat (SPEC §4)."""

from __future__ import annotations

import numpy as np

from hrmlab.forecast.base import Forecaster, Observation
from hrmlab.worlds import bounce_grid


class IgnoreForecaster(Forecaster):
    """Pretends there are no moving obstacles: the planner only avoids walls."""

    name = "ignore"

    def forecast(self, obs: Observation, horizon: int) -> np.ndarray:
        return np.zeros((obs.history.shape[0], 0, horizon, 2))


class ZeroMotionForecaster(Forecaster):
    """Obstacles stay where they were last seen."""

    name = "zero"

    def forecast(self, obs: Observation, horizon: int) -> np.ndarray:
        now = obs.history[:, :, -1]
        return np.repeat(now[:, :, None], horizon, axis=2)


def _last_velocity(history: np.ndarray) -> np.ndarray:
    if history.shape[2] < 2:
        return np.zeros_like(history[:, :, -1])
    return history[:, :, -1] - history[:, :, -2]


class ConstantVelocityForecaster(Forecaster):
    """Extrapolates the last observed displacement in a straight line (no reflection)."""

    name = "constant-velocity"

    def forecast(self, obs: Observation, horizon: int) -> np.ndarray:
        now = obs.history[:, :, -1]
        vel = _last_velocity(obs.history)
        steps = np.arange(1, horizon + 1, dtype=np.float64)[None, None, :, None]
        return now[:, :, None] + steps * vel[:, :, None]


class BounceAwareForecaster(Forecaster):
    """Constant velocity with the world's border reflection: exact for the seed world except right
    after a bounce, where the observed displacement is shortened by the clip."""

    name = "bounce-aware"

    def forecast(self, obs: Observation, horizon: int) -> np.ndarray:
        b, n = obs.history.shape[:2]
        g = obs.world.grid_size
        pos = obs.history[:, :, -1].copy()
        vel = _last_velocity(obs.history)
        # a displacement shortened by a clip says nothing about the true speed: keep its direction,
        # reflected for the axis that was clipped at the border
        clipped = (pos <= 0.0) | (pos >= obs.world.clip_hi)
        vel = np.where(clipped & (np.sign(vel) == np.where(pos <= 0.0, -1, 1)), -vel, vel)
        out = np.empty((b, n, horizon, 2))
        for k in range(horizon):
            pos = pos + vel
            bounced = (pos < 0) | (pos >= g)
            vel = np.where(bounced, -vel, vel)
            pos = np.where(bounced, np.clip(pos, 0.0, obs.world.clip_hi), pos)
            out[:, :, k] = pos
        return out


class OracleForecaster(Forecaster):
    """Perfect knowledge: steps a copy of the true world."""

    name = "oracle"

    def forecast(self, obs: Observation, horizon: int) -> np.ndarray:
        return bounce_grid.rollout(obs.world, obs.state, horizon)


PHYSICS_FORECASTERS = {
    cls.name: cls
    for cls in (IgnoreForecaster, ZeroMotionForecaster, ConstantVelocityForecaster, BounceAwareForecaster,
                OracleForecaster)
}
