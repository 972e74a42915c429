"""`render_mode="rgb_array"`: the env's episode drawn by the report animations' own panel code.

The env records the obstacles' positions (its history at reset, then one frame per move) and the
agent's cells; each `render()` updates one `report.animate` panel in place and grabs the frame, so an
env frame looks like a frame of `hrmlab render` (walls, obstacles with trails, agent and its trail,
goal, crash marker), without forecasts: the env does not know what a policy predicted.
"""

from __future__ import annotations

import numpy as np

from hrmlab.evaluate.protocols import Protocol
from hrmlab.report.animate import PanelFigure, panel_figure
from hrmlab.report.replay import EpisodeReplay, ForecasterTrack


class EpisodeCanvas:
    """One episode's drawing state; the matplotlib figure is made on the first `draw`."""

    def __init__(self, world_name: str, rules: Protocol, source: str, index: int, walls: np.ndarray,
                 start: np.ndarray, goal: np.ndarray, history: np.ndarray, agent: np.ndarray):
        self.title = f"{world_name} · {source} episode {index}"
        self.max_steps = rules.max_steps
        self.obstacles = list(np.transpose(history, (1, 0, 2)))  # (H, N, 2): the frames before the first move
        self.cells = [np.array(agent)]
        self.replay = EpisodeReplay(rules.name, int(index), np.asarray(walls, dtype=bool), np.array(start),
                                    np.array(goal), np.stack(self.obstacles), warmup=len(self.obstacles) - 1,
                                    horizon=1, crash_radius=rules.crash_radius, goal_radius=rules.goal_radius)
        self.track = ForecasterTrack("agent", np.stack(self.cells), forecasts=np.zeros((0, 0, 1, 2)),
                                     plans=np.zeros((0, 1, 2), dtype=np.int64), plan_status=np.zeros(0, dtype=np.int64))
        self.figure: PanelFigure | None = None

    def record(self, positions: np.ndarray, agent: np.ndarray) -> None:
        self.obstacles.append(np.array(positions))
        self.cells.append(np.array(agent))

    def draw(self, outcome: str | None) -> np.ndarray:
        """The current frame; `outcome` (success / crash / timeout) once the episode is over."""
        k = len(self.cells) - 1
        self.replay.obstacles = np.stack(self.obstacles)
        self.track.agent = np.stack(self.cells)
        self.track.outcome = outcome or "timeout"
        self.track.steps = k if outcome else k + 1  # a panel shows its end label once frame ≥ steps
        if self.figure is None:
            self.figure = panel_figure(self.replay, [self.track])
        return self.figure.frame(k, f"{self.title} — step {k}/{self.max_steps}")

    def close(self) -> None:
        if self.figure is not None:
            self.figure.close()
            self.figure = None
