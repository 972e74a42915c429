"""Checks of user input, in one place, so that a bad value is one line (exit code 2) before any work starts.

* Config values: `check_config(cfg, where)` runs the rules of `cfg`'s section (`RULES`, by class) and is
  called by `config.from_dict` whenever a config is built — presets, `--set` overrides, the Gymnasium envs'
  keyword settings — so every path that resolves a config checks it, naming the key:
  `eval.episodes must be >= 1, got 0`. A failed check is an `InvalidValue` (a UserError to the CLI, a
  ValueError to a Python caller).
* Paths a command will write (`writable_dir`, `writable_file`): checked up front by creating and removing a
  probe file in the nearest existing folder, so `--out /proc/x` or a path below a file fails before any
  stage runs and leaves nothing behind.
* Integer options (`count_option`): argparse types with a lower bound (`--workers 0` is refused by argparse,
  naming the option).

Rules are keyed by class path ("module.Class") rather than by class, so this module imports no config
module (the world configs are used without torch, by the envs); tests/test_cli.py checks every key still
names a dataclass with those fields.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from hrmlab.errors import InvalidValue

Problem = tuple[str, str]  # (field, what is wrong)


def _at_least(cfg, name: str, minimum) -> Iterator[Problem]:
    value = getattr(cfg, name)
    if not value >= minimum:  # NaN fails too
        yield name, f"must be >= {minimum}, got {value!r}"


def _positive(cfg, name: str) -> Iterator[Problem]:
    value = getattr(cfg, name)
    if not (value > 0 and math.isfinite(value)):
        yield name, f"must be a positive number, got {value!r}"


def _between(cfg, name: str, low, high) -> Iterator[Problem]:
    value = getattr(cfg, name)
    if not low <= value <= high:
        yield name, f"must be between {low} and {high}, got {value!r}"


def _finite_at_least(cfg, name: str, minimum) -> Iterator[Problem]:
    value = getattr(cfg, name)
    if not (value >= minimum and math.isfinite(value)):
        yield name, f"must be a finite number >= {minimum}, got {value!r}"


def _bounce_grid(w) -> Iterator[Problem]:
    yield from _at_least(w, "grid_size", 2)  # start (0, 0) and goal (G-1, G-1) are different cells
    yield from _at_least(w, "num_obstacles", 0)
    yield from _at_least(w, "wall_draws", 0)
    yield from _finite_at_least(w, "speed", 0.0)
    if w.speed_min >= 0 and w.speed_min > w.speed:
        yield "speed_min", f"must be <= speed ({w.speed}), or negative for one speed; got {w.speed_min!r}"
    yield from _finite_at_least(w, "velocity_std", 0.0)
    yield from _positive(w, "clip_max")
    yield from _between(w, "turn_prob", 0.0, 1.0)
    yield from _at_least(w, "patrol_min_side", 1)
    yield from _at_least(w, "patrol_max_side", 0)
    yield from _at_least(w, "turn_period_min", 0)
    if w.turn_period_min > 0 and w.turn_period_max < w.turn_period_min:
        yield "turn_period_max", f"must be >= turn_period_min ({w.turn_period_min}), got {w.turn_period_max!r}"
    yield from _at_least(w, "seed", 0)


def _blob_world(w) -> Iterator[Problem]:
    yield from _at_least(w, "map_size", 2)
    yield from _at_least(w, "num_discs", 0)
    yield from _at_least(w, "disc_radius_min", 0)
    if w.disc_radius_max < w.disc_radius_min:
        yield "disc_radius_max", f"must be >= disc_radius_min ({w.disc_radius_min}), got {w.disc_radius_max!r}"
    yield from _at_least(w, "num_obstacles", 0)
    yield from _at_least(w, "obstacle_radius", 0)
    yield from _finite_at_least(w, "max_speed", 0.0)
    yield from _at_least(w, "seed", 0)


def _eval(e) -> Iterator[Problem]:
    yield from _at_least(e, "episodes", 1)
    yield from _at_least(e, "start", 0)
    yield from _at_least(e, "chunk_size", 1)


def _planner(p) -> Iterator[Problem]:
    yield from _at_least(p, "horizon", 1)
    yield from _finite_at_least(p, "radius", 0.0)


def _train(t) -> Iterator[Problem]:
    """The grid models' recipe (train/trainer.TrainConfig)."""
    yield from _at_least(t, "epochs", 1)
    yield from _at_least(t, "max_steps", 0)  # 0 = no cap
    yield from _at_least(t, "batch_size", 1)
    yield from _positive(t, "lr")
    yield from _at_least(t, "early_stopping_patience", 0)
    yield from _at_least(t, "checkpoint_every_steps", 0)  # 0 = epoch ends only
    yield from _at_least(t, "log_every_steps", 0)
    yield from _at_least(t, "val_batch_size", 0)
    yield from _at_least(t, "cpu_threads", 0)  # 0 = every CPU this process may use
    yield from _at_least(t, "max_consecutive_nonfinite", 1)


def _steps_trainer(t, min_batch: int) -> Iterator[Problem]:
    """The denoisers' recipes (a number of optimiser steps, not epochs)."""
    yield from _at_least(t, "steps", 1)
    yield from _at_least(t, "batch_size", min_batch)
    yield from _positive(t, "lr")
    yield from _at_least(t, "checkpoint_every_steps", 0)
    yield from _at_least(t, "log_every_steps", 0)


def _experiment(cfg) -> Iterator[Problem]:
    if cfg.seed_protocol:
        yield from _at_least(cfg, "seed_episodes", 1)


RULES: dict[str, Callable[[object], Iterator[Problem]]] = {
    "hrmlab.worlds.bounce_grid.BounceGridConfig": _bounce_grid,
    "hrmlab.worlds.blob_world.BlobWorldConfig": _blob_world,
    "hrmlab.evaluate.runner.EvalConfig": _eval,
    "hrmlab.planning.spacetime_astar.PlannerConfig": _planner,
    "hrmlab.train.trainer.TrainConfig": _train,
    "hrmlab.diffusion.train.DiffusionTrainConfig": lambda t: _steps_trainer(t, 0),  # 0 = full batch
    "hrmlab.diffusion.spacetime.train.STTrainConfig": lambda t: _steps_trainer(t, 1),
    "hrmlab.experiments.grid.config.ExperimentConfig": _experiment,
}
"""Class path → the checks of that config section (fields of nested sections are checked by their own)."""


def check_config(cfg, where: str = "") -> None:
    """Raise `InvalidValue` naming the key (`where.field`) of the first value of `cfg` out of its range."""
    rules = RULES.get(f"{type(cfg).__module__}.{type(cfg).__qualname__}")
    for name, problem in rules(cfg) if rules else ():
        raise InvalidValue(f"{where + '.' if where else ''}{name} {problem}")


# -------------------------------------------------------------------------------------------------- paths
def _nearest_existing(path: Path) -> Path:
    while not (path.exists() or path.is_symlink()):
        if path.parent == path:
            break
        path = path.parent
    return path


def _probe(folder: Path, what: str, path: Path) -> None:
    """Create and remove a file in `folder`: the one test of writability that also holds for root, read-only
    mounts and pseudo file systems (/proc)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".hrmlab-write-check-", dir=folder)
    except OSError as exc:
        raise InvalidValue(f"{what} {path} is not writable: creating a file in {folder} fails "
                           f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def writable_dir(path, what: str) -> Path:
    """`path` as a folder a command will write into: an existing writable folder, or one that can be created.
    `what` names it in the message (`--out`, `--cache`, ...). Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidValue(f"{what} {path} is a file, not a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise InvalidValue(f"{what} {path} cannot be created: {existing} is a file, not a folder")
    _probe(existing, what, path)
    return path


def writable_file(path, what: str) -> Path:
    """`path` as a file a command will write (replacing it if it exists): not a folder, and its folder exists
    writable or can be created. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise InvalidValue(f"{what} {path} is a folder, not a file")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise InvalidValue(f"{what} {path} cannot be created: {existing} is a file, not a folder")
    _probe(existing, what, path)
    return path


# ------------------------------------------------------------------------------------------------ options
def count_option(minimum: int):
    """An argparse `type`: an integer >= `minimum` (argparse names the option in its one-line error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse
