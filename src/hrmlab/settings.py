"""Settings bundles for commands that need only part of an experiment config."""

from __future__ import annotations

from dataclasses import dataclass, field

from hrmlab.evaluate.runner import EvalConfig
from hrmlab.planning.spacetime_astar import PlannerConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig


@dataclass
class EvaluateSettings:
    """`hrmlab evaluate`: the world, the planner and the evaluation (all `--set`-able)."""

    world: BounceGridConfig = field(default_factory=BounceGridConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
