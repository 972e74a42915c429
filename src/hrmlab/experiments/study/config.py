"""What `hrmlab study` compares and with how much compute: the settings (`StudyConfig`), the arms (a model and
the roll-out it is trained for and evaluated with) and the one recipe every arm trains with.

Pure: importing this module runs no pipeline and loads no preset (the helpers that do import lazily).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

STATEFUL_SUFFIX = "-stateful"
"""An arm rolled out `stateful` is named after its model with this suffix (`lstm-stateful`)."""


@dataclass(frozen=True)
class Arm:
    """One compared forecaster: a model kind trained for and rolled out with one roll-out."""

    name: str
    """Row name in the document and the results file (`lstm`, `lstm-stateful`)."""
    model: str
    """Model kind (its config section in the preset)."""
    rollout: str
    """`direct` (one pass predicts the whole horizon) or `stateful` (one-step model, recurrence advanced per
    step feeding back its predictions)."""

    def label(self, seed: int, scale: float = 1.0) -> str:
        """The evaluation row of one trained copy (`lstm@s1`, `trm@s2*4` at 4× its trained recursion)."""
        return f"{self.name}@s{seed}" + ("" if scale == 1.0 else f"*{scale:g}")


@dataclass
class StudyConfig:
    """What the study compares and with how much compute.

    Equal recipes: every arm trains with the preset's LSTM recipe (optimiser, schedule with its warm-up, clipping,
    batch, epochs, precision: the same optimiser steps); only the learning rate is searched. No arm keeps a weight EMA:
    trm's `ema_decay` (the only model with one) is set to 0, so every model is evaluated with its live weights.
    Training runs use one CPU thread each (`cpu_threads=1`: a pool worker's), which is part of their cache key."""

    worlds: list[str] = field(default_factory=lambda: ["quick", "suite-clockwork", "suite-patrol", "suite-turning",
                                                       "suite-mixed", "suite-rush"])
    """Grid presets, one per world: `quick` (the seed's world) and the scenario suites — those with the most
    room above the best physics rule first, so an interrupted study has measured the informative worlds."""
    models: list[str] = field(default_factory=lambda: ["lstm", "hrm", "hrm-act", "trm"])
    """Learned models trained and rolled out `direct` (the one roll-out all four kinds offer: hrm-act and trm
    are not recurrent over time); each is an arm named after its model."""
    stateful_arms: list[str] = field(default_factory=lambda: ["lstm"])
    """Recurrent models also trained one-step and rolled out `stateful` (their best mode), each a separate arm
    (`lstm-stateful`) with its own rate selection on its own validation loss and the same recipe; empty = none."""
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    """Candidate learning rates; each arm picks one on validation loss. With the earlier grid 3e-4/1e-3/3e-3
    (docs/study-lowgrid.md) no model chose 3e-4 and 10 of 12 choices were the top rate; a check with 1e-2
    added (docs/study-lr-check.md) moved the grid up half a decade."""
    grid_extensions: int = 1
    """How often an arm's grid may grow: a rate chosen at an edge of the grid adds the next rate beyond that
    edge (edge × edge/neighbour, one significant digit: 1e-2 → 3e-2, 1e-3 → 3e-4), the selection seeds train
    there and the choice is redone. 0: the grid is fixed."""
    selection_seeds: int = 1
    """Training seeds 0 … k−1 train at every candidate rate; the rate with the lowest mean validation loss wins.
    They are never evaluated (a seed that won the selection would flatter its rate)."""
    seeds: int = 3
    """Evaluated training seeds per arm: k … k+seeds−1, trained fresh at the chosen rate. Runs per arm:
    rates × k + seeds (+ k per grid extension): 6 (or 7) by default."""
    episodes: int = 1000
    """Test episodes per world."""
    compute_scales: list[float] = field(default_factory=lambda: [0.5, 2.0, 4.0])
    """Test-time compute: every evaluated seed of each recursive model (hrm-act, trm) is also run with these
    multiples of its trained recursion (×1 is the main evaluation); empty = skip."""
    compute_worlds: list[str] = field(default_factory=list)
    """Worlds whose recursive models get the test-time-compute evaluation; none by default: it is a side
    question (does more recursion at inference help?) that costs 5.6× a world's main evaluation (on quick,
    19 of the world's 50 minutes), so `hrmlab study --compute-worlds quick` asks it where wanted."""
    rollout: str = "direct"
    """Roll-out of the `models` arms (forecast.rollout): the same objective (per-step displacement MSE over the
    planner's horizon) and the same cost per forecast, one pass, for every kind."""

    def scales_for(self, world: str) -> list[float]:
        """The test-time-compute multiples evaluated in `world` (none outside `compute_worlds`)."""
        return list(self.compute_scales) if world in self.compute_worlds else []

    def arms(self) -> list[Arm]:
        """Every compared arm: the `models` rolled out `rollout`, then the `stateful_arms`."""
        return ([Arm(m, m, self.rollout) for m in self.models]
                + [Arm(m + STATEFUL_SUFFIX, m, "stateful") for m in self.stateful_arms])

    def selection_seed_ids(self) -> list[int]:
        return list(range(self.selection_seeds))

    def evaluated_seeds(self) -> list[int]:
        return list(range(self.selection_seeds, self.selection_seeds + self.seeds))


def smoke_study_defaults() -> dict:
    """`hrmlab study --smoke`: toy sizes — two rates, two seeds, one compute scale in quick (every code path)."""
    return {"lrs": [1e-3, 3e-3], "seeds": 2, "compute_scales": [2.0], "compute_worlds": ["quick"]}


RECURSIVE_MODELS = ("hrm-act", "trm")
"""The models whose recursion can be scaled at inference (forecast/models.set_test_time_compute)."""


# ------------------------------------------------------------------------------------------ recipes
def train_field(model: str) -> str:
    """The experiment-config field holding `model`'s training recipe (`train_hrm`, `train_hrm_act`, ...)."""
    return "train_" + model.replace("-", "_")


def with_recipe(cfg, model: str, **changes):
    """`cfg` with `model`'s training recipe replaced by `changes`."""
    name = train_field(model)
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **changes)})


def equal_recipes(cfg, models: list[str]):
    """Every model gets the preset's LSTM recipe (same optimiser, schedule, batch, epochs, steps) and no weight
    EMA (a model config with `ema_decay` gets 0), so no model is evaluated with an averaging the others lack."""
    template = cfg.train_lstm
    for model in models:
        cfg = with_recipe(cfg, model, **{f.name: getattr(template, f.name) for f in dataclasses.fields(template)})
        section = model.replace("-", "_")
        arch = getattr(cfg, section)
        if hasattr(arch, "ema_decay"):
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(arch, ema_decay=0.0)})
    return cfg


def arm_configs(preset: str, study: StudyConfig, overrides=(), smoke: bool = False) -> dict[str, object]:
    """Roll-out → the world's experiment config for the arms of that roll-out (their models listed, equal recipes).
    A roll-out's models are checked by the config loader (stateful needs recurrent models)."""
    from hrmlab.presets import resolve

    out = {}
    for rollout in dict.fromkeys(arm.rollout for arm in study.arms()):
        models = [arm.model for arm in study.arms() if arm.rollout == rollout]
        cfg = resolve(preset, [f"forecast.rollout={rollout}", f"models=[{','.join(models)}]", *overrides],
                      smoke=smoke)
        out[rollout] = equal_recipes(dataclasses.replace(cfg, models=models), models)
    return out


def study_worlds() -> list[str]:
    """The presets a study may use as worlds (the family registry decides: CPU-sized grid presets)."""
    from hrmlab.experiments.families import study_worlds as registry_worlds

    return registry_worlds()
