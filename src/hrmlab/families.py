"""Experiment families: the one place that knows which kinds of experiment exist.

A family (diffusion_policy's "workspace" idea, kept small) is how one kind of experiment is loaded,
shrunk for smoke runs, run end to end, summarised and described. The CLI, presets, Modal orchestration
and reports ask this registry for a preset's family and call it; none of them compares family names.

* `grid` — forecaster + space-time A* on BounceGrid (`hrmlab.experiment`, `hrmlab.pipeline`).
* `diffusion` — a denoiser planning paths on BlobWorld (`hrmlab.diffusion.experiment`).
* `diffusion-st` — the space-time diffusion planner on BlobWorld or BounceGrid, beside A* + the same
  forecasters (`hrmlab.diffusion.spacetime.experiment`).

Functions are named as "module:attribute" and imported when first called, so asking about a family
imports neither torch nor the other family's code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from hrmlab.errors import UserError, choose


def _ref(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    """What the family's experiments are, in one line (for error messages and docs)."""
    load: str
    """module:function(preset_dict, name, overrides) → config."""
    smoke: str
    """module:function(config) → the same experiment at toy size."""
    run: str
    """module:function(config, RunOptions, backend=None, train_runner=None) → `evaluate.result.RunResult`
    (also written to results.json)."""
    print_summary: str
    """module:function(results, config) → None: the console summary of `hrmlab run`."""
    describe: str
    """module:function(config) → one line for `hrmlab presets`."""
    commands: frozenset = frozenset()
    """Single-stage commands the family supports besides `run`/`presets`/`report` (collect, train, evaluate)."""
    remote_training: str = "job"
    """How Modal runs its training: `job` (a pipeline TrainJob through the GPU training function) or
    `task` (a picklable task through the app's generic task function)."""
    train_task: str = ""
    """module:function training one such task (`remote_training = task`)."""
    modal: bool = True
    """Whether `hrmlab run --backend modal` can run the family's presets."""

    def ref(self, what: str):
        """The function named by field `what`."""
        return _ref(getattr(self, what))

    def call(self, what: str, *args, **kwargs):
        return self.ref(what)(*args, **kwargs)

    def require(self, command: str, preset: str) -> None:
        """One line (exit 2) when `command` does not apply to this family's presets."""
        if command not in self.commands:
            raise UserError(f"`hrmlab {command}` does not apply to preset {preset} ({self.name} family: "
                            f"{self.summary}); run it whole with `hrmlab run {preset}`")


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("grid", "forecasters + space-time A* on BounceGrid",
           load="hrmlab.experiment:load_experiment", smoke="hrmlab.experiment:smoke",
           run="hrmlab.pipeline:run_experiment", print_summary="hrmlab.pipeline:print_summary",
           describe="hrmlab.experiment:describe", commands=frozenset({"collect", "train", "evaluate"})),
    Family("diffusion", "a diffusion denoiser planning paths on BlobWorld",
           load="hrmlab.diffusion.experiment:load_diffusion_experiment", smoke="hrmlab.diffusion.experiment:smoke",
           run="hrmlab.diffusion.experiment:run_diffusion_pipeline",
           print_summary="hrmlab.diffusion.experiment:print_diffusion_summary",
           describe="hrmlab.diffusion.experiment:describe_diffusion", remote_training="task",
           train_task="hrmlab.diffusion.experiment:run_train_task"),
    Family("diffusion-st", "a space-time diffusion planner conditioned on forecasts, replanning in the closed loop",
           load="hrmlab.diffusion.spacetime.experiment:load_st_experiment",
           smoke="hrmlab.diffusion.spacetime.experiment:smoke",
           run="hrmlab.diffusion.spacetime.experiment:run_st_pipeline",
           print_summary="hrmlab.diffusion.spacetime.experiment:print_st_summary",
           describe="hrmlab.diffusion.spacetime.experiment:describe", modal=False),
)}


def get_family(name: str) -> Family:
    return FAMILIES[choose("experiment family", name, FAMILIES)]


def family_of(cfg) -> Family:
    """The family of a loaded experiment config."""
    return get_family(cfg.family)
