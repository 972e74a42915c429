"""Experiment families: the one place that knows which kinds of experiment exist.

A family (diffusion_policy's "workspace" idea, kept small) is how one kind of experiment is loaded,
shrunk for smoke runs, run end to end, summarised and described. The CLI, presets, the study and Modal
orchestration ask this registry for a preset's family and call its methods; none of them compares family
or preset names.

* `grid` — forecasters + space-time A* on BounceGrid (`experiments/grid/`).
* `diffusion` — a denoiser planning paths on BlobWorld (`experiments/diffusion.py`).
* `diffusion-st` — the space-time diffusion planner on BlobWorld or BounceGrid, beside A* + the same
  forecasters (`experiments/diffusion_st.py`).

`Family` is a base class: each family is a subclass whose methods call its module's functions, imported
inside the method, so asking about a family (`hrmlab presets`, a preset's loader) imports neither torch
nor the other families' code, and "go to definition" reaches the function that does the work.
"""

from __future__ import annotations

from typing import Callable, ClassVar

from hrmlab.errors import UserError, choose


class Family:
    """One kind of experiment. Subclasses set the class attributes and implement the five methods."""

    name: ClassVar[str]
    summary: ClassVar[str]
    """What the family's experiments are, in one line (for error messages and docs)."""
    commands: ClassVar[frozenset] = frozenset()
    """Single-stage commands the family supports besides `run`/`presets`/`report` (collect, train, evaluate)."""
    modal: ClassVar[bool] = True
    """Whether `hrmlab run --backend modal` can run the family's presets."""
    studiable: ClassVar[bool] = False
    """Whether its CPU-sized presets (hardware.gpus 0) are worlds of `hrmlab study` (`study_worlds`)."""

    def load(self, data: dict, name: str, overrides=()):
        """Preset dict → the family's config, with `key=value` overrides applied."""
        raise NotImplementedError

    def smoke(self, cfg):
        """The same experiment at toy size: every stage runs for real in seconds."""
        raise NotImplementedError

    def run(self, cfg, opts, backend=None, train_runner=None):
        """The whole experiment (`opts`: `experiments.grid.stages.RunOptions`) → `evaluate.result.RunResult`,
        also written to results.json. backend: where work fans out; train_runner: where training runs."""
        raise NotImplementedError

    def print_summary(self, results, cfg) -> None:
        """The console summary of `hrmlab run`."""
        raise NotImplementedError

    def describe(self, cfg) -> str:
        """One line for `hrmlab presets`."""
        raise NotImplementedError

    def train_task(self) -> Callable | None:
        """How Modal trains the family's model: None = the grid stages' `TrainJob` through the GPU training
        function; else a top-level function training one picklable task, run through the app's generic
        task function."""
        return None

    def require(self, command: str, preset: str) -> None:
        """One line (exit 2) when `command` does not apply to this family's presets."""
        if command not in self.commands:
            raise UserError(f"`hrmlab {command}` does not apply to preset {preset} ({self.name} family: "
                            f"{self.summary}); run it whole with `hrmlab run {preset}`")


class GridFamily(Family):
    name = "grid"
    summary = "forecasters + space-time A* on BounceGrid"
    commands = frozenset({"collect", "train", "evaluate"})
    studiable = True

    def load(self, data, name, overrides=()):
        from hrmlab.experiments.grid.config import load_experiment

        return load_experiment(data, name, overrides)

    def smoke(self, cfg):
        from hrmlab.experiments.grid.config import smoke

        return smoke(cfg)

    def run(self, cfg, opts, backend=None, train_runner=None):
        from hrmlab.experiments.grid.stages import run_experiment

        return run_experiment(cfg, opts, backend=backend, train_runner=train_runner)

    def print_summary(self, results, cfg):
        from hrmlab.experiments.grid.stages import print_summary

        print_summary(results, cfg)

    def describe(self, cfg):
        from hrmlab.experiments.grid.config import describe

        return describe(cfg)


class DiffusionFamily(Family):
    name = "diffusion"
    summary = "a diffusion denoiser planning paths on BlobWorld"

    def load(self, data, name, overrides=()):
        from hrmlab.experiments.diffusion import load_diffusion_experiment

        return load_diffusion_experiment(data, name, overrides)

    def smoke(self, cfg):
        from hrmlab.experiments.diffusion import smoke_config

        return smoke_config(cfg)

    def run(self, cfg, opts, backend=None, train_runner=None):
        from hrmlab.experiments.diffusion import run_diffusion_pipeline

        return run_diffusion_pipeline(cfg, opts, backend=backend, train_runner=train_runner)

    def print_summary(self, results, cfg):
        from hrmlab.experiments.diffusion import print_diffusion_summary

        print_diffusion_summary(results, cfg)

    def describe(self, cfg):
        from hrmlab.experiments.diffusion import describe_diffusion

        return describe_diffusion(cfg)

    def train_task(self):
        from hrmlab.experiments.diffusion import run_train_task

        return run_train_task


class SpaceTimeFamily(Family):
    name = "diffusion-st"
    summary = "a space-time diffusion planner conditioned on forecasts, replanning in the closed loop"
    modal = False

    def load(self, data, name, overrides=()):
        from hrmlab.experiments.diffusion_st import load_st_experiment

        return load_st_experiment(data, name, overrides)

    def smoke(self, cfg):
        from hrmlab.experiments.diffusion_st import smoke

        return smoke(cfg)

    def run(self, cfg, opts, backend=None, train_runner=None):
        from hrmlab.experiments.diffusion_st import run_st_pipeline

        return run_st_pipeline(cfg, opts, backend=backend, train_runner=train_runner)

    def print_summary(self, results, cfg):
        from hrmlab.experiments.diffusion_st import print_st_summary

        print_st_summary(results, cfg)

    def describe(self, cfg):
        from hrmlab.experiments.diffusion_st import describe

        return describe(cfg)


DEFAULT_FAMILY = "grid"
"""The family of a preset that names none."""

FAMILIES: dict[str, Family] = {f.name: f for f in (GridFamily(), DiffusionFamily(), SpaceTimeFamily())}


def get_family(name: str) -> Family:
    return FAMILIES[choose("experiment family", name, FAMILIES)]


def family_of(cfg) -> Family:
    """The family of a loaded experiment config."""
    return get_family(cfg.family)


def preset_family(data: dict) -> Family:
    """The family of a preset's settings (`preset_data`): its `family` key, grid when it names none."""
    return get_family(data.get("family", DEFAULT_FAMILY))


def study_worlds() -> list[str]:
    """The presets `hrmlab study` may take as worlds, in `preset_names` order: those of a studiable family
    (grid) sized for the CPU (`hardware.gpus` 0: `quick` and the scenario suites; the seed replicas
    `hrm-cloud*` are GPU recipes)."""
    from hrmlab.presets.store import preset_data, preset_names

    worlds = []
    for name in preset_names():
        data = preset_data(name)
        if preset_family(data).studiable and not (data.get("hardware") or {}).get("gpus", 0):
            worlds.append(name)
    return worlds
