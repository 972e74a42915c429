"""Expert data for the diffusion planner (SPEC §8 'Data'): BlobWorld's space-time A* (`planning/blob_astar.py`,
perfect knowledge) plans training-split episodes; the kept plans, resampled to the model's points, are
stored as a `data/shards.py` shard set (checksummed, locked, resumable), made in shards through
`backend.map`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrmlab.config import config_hash, from_dict, to_dict
from hrmlab.data import shards
from hrmlab.planning.blob_astar import ExpertConfig, plan
from hrmlab.worlds import blob_world
from hrmlab.worlds.blob_world import BlobWorldConfig

log = logging.getLogger(__name__)


def resample_path(path: np.ndarray, points: int) -> np.ndarray:
    """Linearly resample a (L, 2) path to `points` points along its index (the seed's np.interp)."""
    path = np.asarray(path, dtype=np.float64)
    old = np.linspace(0.0, 1.0, len(path))
    new = np.linspace(0.0, 1.0, points)
    return np.stack([np.interp(new, old, path[:, 0]), np.interp(new, old, path[:, 1])], axis=1)


# ----------------------------------------------------------------------------------------------------
# expert data: shards + manifest through backend.map


@dataclass
class ExpertDataConfig:
    """Expert path data set (SPEC §8 'Data'). Defaults are the seed's v2 (50 workers × 100 paths)."""

    num_paths: int = 5000
    """Paths to generate in total (kept paths, after the length filter)."""
    paths_per_shard: int = 100
    """Paths per shard; one shard is one backend task (the seed: one Modal worker)."""
    attempts_per_path: int = 3
    """A shard tries at most paths_per_shard × attempts_per_path episodes (the seed: 3×)."""
    min_path_cells: int = 11
    """Keep plans with at least this many cells (the seed: more than 10)."""
    path_points: int = 64
    """Each kept path is resampled to this many points (the model's sequence length)."""
    split: str = "train"
    """Episode split the expert plans on (never the evaluation split)."""


def expert_shard(task: dict) -> dict:
    """Backend task (top level, picklable): plan episodes of one shard until it has its paths.

    Returns numpy arrays (the caller writes the shard), so remote backends need no shared disk."""
    world = from_dict(BlobWorldConfig, task["world"])
    expert = from_dict(ExpertConfig, task["expert"])
    data = from_dict(ExpertDataConfig, task["data"])
    first, attempts, target = task["first_episode"], task["attempts"], task["target"]
    grids, sg, paths, episodes, lengths = [], [], [], [], []
    chunk = max(1, min(attempts, 2 * target))
    for lo in range(first, first + attempts, chunk):
        if len(paths) >= target:
            break
        idx = np.arange(lo, min(lo + chunk, first + attempts))
        state = blob_world.reset_split(world, data.split, idx)
        traj = blob_world.trajectory(world, state, expert.max_steps, clip=expert.forecast_clip)
        occupancy = blob_world.occupancy_grid(world, state)
        for e in range(state.batch):
            path = plan(state.static[e], traj[e], state.start[e], state.goal[e], expert)
            if path is None or len(path) < data.min_path_cells:
                continue
            grids.append(occupancy[e])
            sg.append(np.concatenate([state.start[e], state.goal[e]]).astype(np.float32))
            paths.append(resample_path(path, data.path_points).astype(np.float32))
            episodes.append(int(idx[e]))
            lengths.append(len(path))
            if len(paths) >= target:
                break
    g = world.map_size
    return {
        "shard": task["shard"],
        "grids": np.asarray(grids, dtype=bool).reshape(-1, g, g),
        "start_goal": np.asarray(sg, dtype=np.float32).reshape(-1, 4),
        "paths": np.asarray(paths, dtype=np.float32).reshape(-1, data.path_points, 2),
        "episodes": np.asarray(episodes, dtype=np.int64),
        "path_cells": np.asarray(lengths, dtype=np.int64),
    }


DATA_FORMAT_VERSION = 2
"""Part of the data cache key: bump it when episode generation or the shard layout changes (2: a
`data/shards.py` shard set of .npy arrays instead of .npz files)."""
EXPERT_ARRAYS = ("grids", "start_goal", "paths", "episodes", "path_cells")


def expert_data_key(world: BlobWorldConfig, expert: ExpertConfig, data: ExpertDataConfig) -> str:
    """Hash of exactly the settings that determine the expert data set."""
    return config_hash({"world": to_dict(world), "expert": to_dict(expert), "data": to_dict(data),
                        "format": DATA_FORMAT_VERSION})


def generate_expert_data(world: BlobWorldConfig, expert: ExpertConfig, data: ExpertDataConfig,
                         out_dir, backend, progress: bool = True) -> Path:
    """Generate (or resume, or verify) the expert data set in `out_dir`; returns its manifest path.

    A `data/shards.py` shard set: one atomic .npy per array and shard with its sha256 in `manifest.json`,
    made under the directory's lock, DONE written last; a rerun keeps the shards that match their checksum
    and redoes the rest."""
    out_dir = Path(out_dir)
    n_shards = max(1, math.ceil(data.num_paths / data.paths_per_shard))
    attempts = data.paths_per_shard * data.attempts_per_path
    config = {"world": to_dict(world), "expert": to_dict(expert), "data": to_dict(data)}
    tasks = {s: {"shard": s, **config, "first_episode": s * attempts, "attempts": attempts,
                 "target": min(data.paths_per_shard, data.num_paths - s * data.paths_per_shard)}
             for s in range(n_shards)}
    shards.build_shard_set(out_dir, expert_data_key(world, expert, data), config, tasks, expert_shard, EXPERT_ARRAYS,
                           backend, progress=progress, desc="expert paths")
    return out_dir / shards.MANIFEST


def load_expert_data(manifest_path) -> dict:
    """The arrays of a finished expert data set (shard order), each shard checked against its checksum."""
    return shards.load_shard_set(Path(manifest_path).parent, EXPERT_ARRAYS, "expert data")
