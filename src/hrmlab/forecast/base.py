"""The forecaster interface the planner uses: one batched call per planning step.

A forecaster sees the last H observed positions of every obstacle of every episode and returns their
positions over the horizon: `forecast(obs, horizon)[b, i, k]` is obstacle i of episode b after k+1
more physics steps. Learned models (LSTM, HRM) and physics rules implement the same call, so the
evaluator runs them all on the same episodes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from hrmlab.worlds.bounce_grid import BounceGridConfig, WorldState

ROLLOUTS = ("window", "stateful", "direct")
"""How a learned forecaster rolls a model out over the horizon; defined and documented in learned.py."""


@dataclass
class Observation:
    """What a forecaster may look at. Only the `oracle` reads `state` (the true world)."""

    history: np.ndarray  # (B, N, H, 2) observed positions in cell units, oldest first, last = now
    state: WorldState
    world: BounceGridConfig


class Forecaster(ABC):
    name: str = "forecaster"
    history: int = 0
    """Positions of history the forecaster reads (a learned model: its training window; 0: any). The
    closed loop keeps at least this many (`evaluate.episodes.observed_history`)."""

    @abstractmethod
    def forecast(self, obs: Observation, horizon: int) -> np.ndarray:
        """(B, N', horizon, 2) future positions; N' = 0 means 'no obstacles' (the `ignore` baseline)."""
