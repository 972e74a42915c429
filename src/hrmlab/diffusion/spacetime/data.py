"""Expert space-time trajectories: one point per time step, padded at the goal, with the obstacles' true
future on the same time axis — the training set of the space-time denoiser.

* BlobWorld: the expert, BlobWorld's space-time A* (`planning/blob_astar.py` (8 king moves + wait, clearance 3, perfect
  knowledge) from a train-split episode at t = 0. Its plan is already time-parameterised (cell t at
  step t); it is padded with its last cell to T points (T ≥ the expert's `max_steps`).
* BounceGrid: the grid's space-time A* (`planning/spacetime_astar.py`, 4 moves + wait, radius 1) with
  oracle forecasts and its horizon raised to T, after the protocol's warm-up plus a random number of
  extra steps, from the start corner or (fraction `random_start`) a random free cell — closed-loop
  replanning starts from anywhere on the map.

Examples are made in shards (one backend task each) and stored as a `data/shards.py` shard set: atomic
.npy files with sha256 records in `manifest.json`, `DONE` written last, under the directory's lock, a rerun
regenerating only shards that are missing or fail their checksum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrmlab.config import config_hash, from_dict, to_dict
from hrmlab.data import shards as store
from hrmlab.diffusion.spacetime.worlds import obstacles_ahead
from hrmlab.errors import UserError
from hrmlab.planning import blob_astar
from hrmlab.planning.blob_astar import ExpertConfig
from hrmlab.planning.spacetime_astar import STATUS_GOAL, PlannerConfig, plan_path
from hrmlab.worlds import blob_world, bounce_grid
from hrmlab.worlds.blob_world import BlobWorldConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

log = logging.getLogger(__name__)

ARRAYS = ("static", "start", "goal", "obstacles", "path", "cells")
FORMAT_VERSION = 1
"""Part of the data key: bump it when example generation or the layout changes."""


@dataclass
class STDataConfig:
    """Which expert trajectories to make."""

    episodes: int = 4000
    """Train-split episodes to plan (examples = those with a plan)."""
    episodes_per_shard: int = 500
    """Episodes per shard; one shard is one backend task."""
    horizon: int = 64
    """T: points per trajectory (point 0 = now). At least the expert's longest plan."""
    random_start: float = 0.5
    """BounceGrid: fraction of examples that start on a random free cell instead of the start corner."""
    extra_warmup: int = 40
    """BounceGrid: up to this many physics steps after the protocol's warm-up (drawn per example)."""
    grid_radius: float = 1.0
    """BounceGrid: the expert A*'s blocking radius (the grid planner's default)."""
    seed: int = 0
    """Seeds the random starts and extra warm-up steps (episodes come from the train split)."""


def blob_examples(world: BlobWorldConfig, expert: ExpertConfig, horizon: int, split: str,
                  indices: np.ndarray) -> dict:
    """Expert plans from t = 0 of BlobWorld episodes `indices` of `split`, padded to `horizon` points."""
    if horizon < expert.max_steps:
        raise UserError(f"data.horizon {horizon} must be at least expert.max_steps {expert.max_steps}")
    state = blob_world.reset_split(world, split, indices)
    traj = blob_world.trajectory(world, state, horizon - 1, clip=expert.forecast_clip)  # (B, T, N, 2)
    keep, paths, cells = [], [], []
    for e in range(state.batch):
        path = blob_astar.plan(state.static[e], traj[e], state.start[e], state.goal[e], expert)
        if path is None:
            continue
        padded = np.empty((horizon, 2), dtype=np.int64)
        padded[:len(path)] = path
        padded[len(path):] = path[-1]
        keep.append(e)
        paths.append(padded)
        cells.append(len(path))
    keep = np.asarray(keep, dtype=np.int64)
    return _pack(state.static[keep], state.start[keep], state.goal[keep], traj[keep], paths, cells, horizon)


def grid_examples(world: BounceGridConfig, warmup: int, data: STDataConfig, split: str, indices: np.ndarray,
                  seed: int) -> dict:
    """Grid A* plans with the true future, from the start corner or a random free cell, after the
    protocol's warm-up plus a random number of steps (one draw per call)."""
    rng = np.random.default_rng(seed)
    horizon = data.horizon
    state = bounce_grid.reset_split(world, split, indices)
    for _ in range(warmup + int(rng.integers(0, data.extra_warmup + 1))):
        bounce_grid.step(world, state)
    b, g = state.batch, world.grid_size
    agent = state.start.copy()
    move = rng.random(b) < data.random_start
    for e in np.flatnonzero(move):
        free = np.flatnonzero(~state.walls[e].ravel())
        cell = free[rng.integers(len(free))]
        agent[e] = (cell // g, cell % g)
    forecast = bounce_grid.rollout(world, state, horizon - 1)  # (B, N, T-1, 2): k+1 steps ahead
    planner = PlannerConfig(horizon=horizon, radius=data.grid_radius)
    keep, paths, cells = [], [], []
    for e in range(b):
        path, status = plan_path(state.walls[e], agent[e], state.goal[e], forecast[e], planner)
        if status != STATUS_GOAL:
            continue
        length = int((path[:, 0] >= 0).sum())
        path[length:] = path[length - 1]
        keep.append(e)
        paths.append(path)
        cells.append(length)
    keep = np.asarray(keep, dtype=np.int64)
    return _pack(state.walls[keep], agent[keep], state.goal[keep], obstacles_ahead(state.pos, forecast)[keep],
                 paths, cells, horizon)


def _pack(static, start, goal, obstacles, paths, cells, horizon) -> dict:
    n_obs = obstacles.shape[2] if obstacles.ndim == 4 else 0
    return {"static": np.asarray(static, dtype=bool),
            "start": np.asarray(start, dtype=np.int16).reshape(-1, 2),
            "goal": np.asarray(goal, dtype=np.int16).reshape(-1, 2),
            "obstacles": np.asarray(obstacles, dtype=np.float32).reshape(-1, horizon, n_obs, 2),
            "path": np.asarray(paths, dtype=np.int16).reshape(-1, horizon, 2),
            "cells": np.asarray(cells, dtype=np.int16)}


def example_shard(task: dict) -> dict:
    """Backend task (top level, picklable): the examples of one shard as numpy arrays."""
    data = from_dict(STDataConfig, task["data"])
    indices = np.arange(task["first"], task["first"] + task["count"])
    if task["world_kind"] == "blob":
        out = blob_examples(from_dict(BlobWorldConfig, task["world"]), from_dict(ExpertConfig, task["expert"]),
                            data.horizon, "train", indices)
    else:
        out = grid_examples(from_dict(BounceGridConfig, task["world"]), task["warmup"], data, "train", indices,
                            seed=data.seed * 1_000_003 + task["shard"])
    out["shard"] = task["shard"]
    return out


def data_key(world_kind: str, world, expert: ExpertConfig | None, warmup: int, data: STDataConfig) -> str:
    """Hash of exactly what determines the examples."""
    return config_hash({"world_kind": world_kind, "world": to_dict(world),
                        "expert": to_dict(expert) if world_kind == "blob" else None,
                        "warmup": warmup if world_kind == "grid" else None, "data": to_dict(data),
                        "format": FORMAT_VERSION})


def generate(world_kind: str, world, expert: ExpertConfig | None, warmup: int, data: STDataConfig, root,
             backend, progress: bool = True) -> Path:
    """Make (or finish, or verify) the example set in `root`; returns `root`.

    A finished set is verified shard by shard (size and sha256 against the manifest); missing or
    corrupt shards are regenerated, the rest kept (`data/shards.build_shard_set`)."""
    key = data_key(world_kind, world, expert, warmup, data)
    n_shards = max(1, -(-data.episodes // data.episodes_per_shard))
    common = {"world_kind": world_kind, "world": to_dict(world), "expert": to_dict(expert) if expert else None,
              "warmup": warmup, "data": to_dict(data)}
    tasks = {s: {"shard": s, **common, "first": s * data.episodes_per_shard,
                 "count": min(data.episodes_per_shard, data.episodes - s * data.episodes_per_shard)}
             for s in range(n_shards)}
    store.build_shard_set(Path(root), key, common, tasks, example_shard, ARRAYS, backend, progress=progress,
                          desc="space-time expert trajectories")
    return Path(root)


def load(root) -> dict:
    """All examples of a finished set, concatenated in shard order."""
    return store.load_shard_set(Path(root), ARRAYS, "space-time expert data")
