"""Evaluation protocols (SPEC §7): which episodes, how long, and what counts as success or a crash.

The `seed-*` protocols replay the original evaluation episodes (episode s = legacy seed s + offset) with
the original's thresholds and test order; `standard` uses the held-out test split, crash test first,
and is the default for new results. `BLOB_PROTOCOLS` are BlobWorld's closed-loop rules (the Gymnasium env
runs them), made from the world's own rules (`worlds/blob_world.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hrmlab.config import from_dict
from hrmlab.errors import choose
from hrmlab.worlds import blob_world
from hrmlab.worlds.bounce_grid import BounceGridConfig


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    seed_offset: int | None
    """Episode s uses legacy seed s + seed_offset (seed-exact); None → the test split."""
    warmup: int = 20
    """Physics steps before the agent moves (builds the forecasters' history)."""
    max_steps: int = 80
    """Agent moves before the episode is a timeout."""
    goal_radius: float = 0.5
    crash_radius: float = 0.8
    goal_first: bool = True
    """The seed tested the goal before crashes; `standard` tests crashes first (a crash on the goal
    cell is a crash)."""
    one_shot: bool = False
    """seed-v1: a single plan from the start; success = the plan reaches the goal."""
    horizon: int | None = None
    """Planner horizon the protocol imposes (None = the planner config's)."""
    radius: float | None = None
    """Planner radius the protocol imposes (None = the planner config's)."""
    world: BounceGridConfig | None = None
    """The world this protocol's episodes are drawn in by default (None = the seed's world). A run's config
    starts from it and `--set world.*` changes it; the evaluator uses the world it is given."""

    def default_world(self) -> BounceGridConfig:
        return self.world or BounceGridConfig()

    def planner_for(self, planner):
        """The planner with the horizon and radius this protocol imposes (seed-v1), else unchanged."""
        if self.horizon is None and self.radius is None:
            return planner
        return dataclasses.replace(planner, horizon=self.horizon or planner.horizon,
                                   radius=self.radius or planner.radius)


# v1 (hrm_cloud.py): 8 obstacles drawn anywhere (walls ignored) with N(0, 0.5²) velocities, 40 wall draws (the
# intended cells; the as-run code filled whole rows), bounces clipped at size − 0.1, raw cell coordinates.
V1_WORLD = BounceGridConfig(num_obstacles=8, wall_draws=40, velocity="gaussian", velocity_std=0.5,
                            obstacle_draw="uniform", clip_max=19.9, coordinates="cells")

# Scenario suites (docs/suites.md): worlds where forecasting matters. Each is the `standard` protocol
# (test split, crash test first) on its own world. The world is defined once, in the `world` section of
# the suite's preset file (presets/suite-NAME.yaml), whose description says what the world is; the preset
# trains on that world and this protocol evaluates on it.
def _suite_presets() -> dict[str, dict]:
    from hrmlab.presets.store import preset_data, suite_names

    return {name: preset_data(name) for name in suite_names()}


_SUITES = _suite_presets()
SUITE_WORLDS: dict[str, BounceGridConfig] = {
    name: from_dict(BounceGridConfig, data["world"], f"presets/{name}.yaml: world") for name, data in _SUITES.items()}
SUITE_DESCRIPTIONS: dict[str, str] = {name: data["description"] for name, data in _SUITES.items()}

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("seed-v1", "hrm_cloud.py (v1): seeds s+9999, one-shot plan, horizon 15, radius 1.1",
                 seed_offset=9999, warmup=10, one_shot=True, horizon=15, radius=1.1, world=V1_WORLD),
        Protocol("seed-v2", "hrm_cloudv2.py: seeds s+5000, 10 warm-up steps, 100 moves, goal test first",
                 seed_offset=5000, warmup=10, max_steps=100),
        Protocol("seed-v3", "v3 … 8gpu: seeds s+100, 20 warm-up steps, 80 moves, goal test first",
                 seed_offset=100),
        Protocol("seed-v4", "8gpu_v2: seeds s+100, goal within 1.5, crash within 1.0, goal test first",
                 seed_offset=100, goal_radius=1.5, crash_radius=1.0),
        Protocol("standard", "held-out test split, 20 warm-up steps, 80 moves, crash test first",
                 seed_offset=None, goal_first=False),
        *(Protocol(name, SUITE_DESCRIPTIONS[name], seed_offset=None, goal_first=False, world=world)
          for name, world in SUITE_WORLDS.items()),
    )
}


_BLOB_RULES = dict(warmup=0, max_steps=blob_world.MAX_STEPS, goal_radius=blob_world.GOAL_TOLERANCE,
                   crash_radius=blob_world.COLLISION_RADIUS, goal_first=False)
BLOB_PROTOCOLS: dict[str, Protocol] = {
    "standard": Protocol("standard", "BlobWorld test split, closed loop", seed_offset=None, **_BLOB_RULES),
    "seed": Protocol("seed", f"BlobWorld legacy seeds {blob_world.SEED_FIRST} + i", seed_offset=blob_world.SEED_FIRST,
                     **_BLOB_RULES),
}
"""BlobWorld's closed-loop rules: no warm-up (its episodes start at t = 0), the expert's step limit, the goal
tolerance and collision radius of its path rules, crash test first. `seed`: the original's legacy seeds."""


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS[choose("protocol", name, PROTOCOLS)]
