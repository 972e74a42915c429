"""The expert / oracle: perfect-knowledge space-time A* on BlobWorld (SPEC §8), compiled with numba.

Search nodes are (row, col, t) from (start, 0). Actions are the 8 king moves plus wait; a move costs its
Euclidean length (1 or √2), a wait costs `wait_cost` (the seed: 0); h = Euclidean distance to the goal;
f = g + h. A neighbour is rejected off the map, on a disc, or at distance < `clearance` (3) from any
obstacle's position after t+1 physics steps. A popped node with t ≥ `max_steps` (64) is dropped; a popped
node within `goal_tolerance` (2) of the goal ends the search. Ties in f are broken by g, then by
(row, col, t), exactly like the seed's `heapq` tuples, so path lengths match the original bit for bit.

Everything lives in flat preallocated arrays (a per-process workspace, reused through stamps): a
(row, col, t) node is one integer with a closed flag, a best g and a parent, obstacle clearance is
rasterised once per time layer, and the open list is a binary heap of (f, g, node) rows. Pushes that the seed
would only discard when popped (closed nodes, dominated g, t ≥ max_steps) are never made, which changes
nothing but the work done. Among equal-cost parents the first found is kept (the seed kept the
lexicographically smaller path list), so the cells of a path can differ in rare ties, never its length.

Expert data generation (shards of training-split episodes through `backend.map`, stored as a
`data/shards.py` shard set: checksummed, locked, resumable) is at the bottom of this file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from hrmlab.config import config_hash, from_dict, to_dict
from hrmlab.data import shards
from hrmlab.worlds import blob_world
from hrmlab.worlds.blob_world import BlobWorldConfig

log = logging.getLogger(__name__)


@dataclass
class ExpertConfig:
    """Space-time A* settings. Defaults are the seed's, except `forecast_clip` (see there)."""

    max_steps: int = 64
    """A popped node at t ≥ max_steps is dropped, so a plan has at most max_steps cells."""
    wait_cost: float = 0.0
    """Cost of waiting one step in place (the seed: 0, so waiting is free)."""
    clearance: float = 3.0
    """A cell at distance < clearance from any obstacle at its time is rejected (the seed: radius 2 + 1)."""
    goal_tolerance: float = 2.0
    """The search succeeds at the first popped cell closer than this to the goal."""
    forecast_clip: bool = True
    """True: the planner knows the world's exact future (bounced coordinates are clipped as the world
    does). False: the seed planner's own roll-out, which only flipped velocities at the border."""


# ----------------------------------------------------------------------------------------------------
# numba kernel


@numba.njit(cache=True, nogil=True)
def _fill_blocked_layer(blocked, static, traj, t, clearance):
    """blocked[t] = disc cells, or distance < clearance from an obstacle after t steps — the very
    comparison the seed made per neighbour, rasterised once per layer so a neighbour test is a lookup."""
    size = static.shape[0]
    blocked[t] = static
    for k in range(traj.shape[1]):
        pr = traj[t, k, 0]
        pc = traj[t, k, 1]
        r0 = max(0, int(math.floor(pr - clearance)))
        r1 = min(size - 1, int(math.ceil(pr + clearance)))
        c0 = max(0, int(math.floor(pc - clearance)))
        c1 = min(size - 1, int(math.ceil(pc + clearance)))
        for r in range(r0, r1 + 1):
            er = r - pr
            for c in range(c0, c1 + 1):
                ec = c - pc
                if math.sqrt(er * er + ec * ec) < clearance:
                    blocked[t, r, c] = True


@numba.njit(cache=True, nogil=True)
def _space_time_astar(static, traj, sr, sc, gr, gc, max_steps, wait_cost, clearance, goal_tolerance,
                      ws_stamp, ws_closed, ws_seen, ws_best_g, ws_parent, ws_blocked, ws_layer):
    """Returns (path (L, 2) int64, expansions); L = 0 when no plan exists.

    The ws_* arrays are a reusable workspace (see `_Workspace`): entries are valid only where their
    stamp equals this search's stamp, so nothing is cleared between searches. Per-node arrays are
    indexed time-major (t·G² + cell) so that a node's neighbours share cache lines; the heap orders by
    (f, g, node id) with node id = cell·(max_steps+1) + t, i.e. the seed's (f, g, row, col, t); its
    entries are rows (f, g, node id) of one float64 array so that a sift touches one cache line."""
    size = static.shape[0]
    horizon = max_steps + 1
    cells = size * size
    ws_stamp[0] += 1
    stamp = ws_stamp[0]
    heuristic = np.empty(cells)
    for r in range(size):
        for c in range(size):
            heuristic[r * size + c] = math.sqrt(float((r - gr) * (r - gr) + (c - gc) * (c - gc)))
    diagonal = math.sqrt(2.0)
    cap = 1 << 14
    hp = np.empty((cap, 3))
    start_cell = sr * size + sc
    hp[0, 0] = 0.0
    hp[0, 1] = 0.0
    hp[0, 2] = start_cell * horizon
    ws_seen[start_cell] = stamp
    ws_best_g[start_cell] = 0.0
    heap_size = 1
    expansions = 0
    found = -1
    while heap_size > 0:
        g0 = hp[0, 1]
        node = np.int64(hp[0, 2])
        heap_size -= 1
        if heap_size > 0:  # sift the last entry down from the root (hole method)
            lf = hp[heap_size, 0]
            lg = hp[heap_size, 1]
            ln = hp[heap_size, 2]
            i = 0
            while True:
                child = 2 * i + 1
                if child >= heap_size:
                    break
                right = child + 1
                if right < heap_size and (hp[right, 0] < hp[child, 0] or (hp[right, 0] == hp[child, 0] and (
                        hp[right, 1] < hp[child, 1] or (hp[right, 1] == hp[child, 1] and hp[right, 2] < hp[child, 2])))):
                    child = right
                if hp[child, 0] < lf or (hp[child, 0] == lf and (hp[child, 1] < lg or (hp[child, 1] == lg and hp[child, 2] < ln))):
                    hp[i, 0] = hp[child, 0]
                    hp[i, 1] = hp[child, 1]
                    hp[i, 2] = hp[child, 2]
                    i = child
                else:
                    break
            hp[i, 0] = lf
            hp[i, 1] = lg
            hp[i, 2] = ln
        t = node % horizon
        cell = node // horizon
        if t >= max_steps:
            continue
        if heuristic[cell] < goal_tolerance:
            found = node
            break
        slot = t * cells + cell
        if ws_closed[slot] == stamp:
            continue
        ws_closed[slot] = stamp
        expansions += 1
        nt = t + 1
        if nt >= max_steps:  # such children would only be dropped when popped
            continue
        if ws_layer[nt] != stamp:
            _fill_blocked_layer(ws_blocked, static, traj, nt, clearance)
            ws_layer[nt] = stamp
        r = cell // size
        c = cell % size
        for dr in range(-1, 2):
            nr = r + dr
            if nr < 0 or nr >= size:
                continue
            for dc in range(-1, 2):
                nc = c + dc
                if nc < 0 or nc >= size or ws_blocked[nt, nr, nc]:
                    continue
                child_cell = nr * size + nc
                child_slot = nt * cells + child_cell
                if ws_closed[child_slot] == stamp:
                    continue
                if dr == 0 and dc == 0:
                    ng = g0 + wait_cost
                elif dr == 0 or dc == 0:
                    ng = g0 + 1.0
                else:
                    ng = g0 + diagonal
                if ws_seen[child_slot] == stamp and ng >= ws_best_g[child_slot]:
                    continue
                ws_seen[child_slot] = stamp
                ws_best_g[child_slot] = ng
                ws_parent[child_slot] = slot
                nf = ng + heuristic[child_cell]
                child_node = child_cell * horizon + nt
                if heap_size == cap:
                    cap *= 2
                    hp2 = np.empty((cap, 3))
                    hp2[:heap_size] = hp[:heap_size]
                    hp = hp2
                j = heap_size  # sift the new entry up (hole method)
                heap_size += 1
                while j > 0:
                    up = (j - 1) // 2
                    if nf < hp[up, 0] or (nf == hp[up, 0] and (ng < hp[up, 1] or (ng == hp[up, 1] and child_node < hp[up, 2]))):
                        hp[j, 0] = hp[up, 0]
                        hp[j, 1] = hp[up, 1]
                        hp[j, 2] = hp[up, 2]
                        j = up
                    else:
                        break
                hp[j, 0] = nf
                hp[j, 1] = ng
                hp[j, 2] = child_node
    if found < 0:
        return np.empty((0, 2), dtype=np.int64), expansions
    length = found % horizon + 1  # one cell per time step, start included
    path = np.empty((length, 2), dtype=np.int64)
    slot = (found % horizon) * cells + found // horizon
    for i in range(length - 1, -1, -1):
        cell = slot % cells
        path[i, 0] = cell // size
        path[i, 1] = cell % size
        slot = ws_parent[slot]
    return path, expansions


class _Workspace:
    """Per-process search arrays for one (map size, max_steps), reused by every search (stamped).
    Not shared between threads: parallelism comes from processes (the backends)."""

    _cache: dict = {}

    @classmethod
    def get(cls, size: int, max_steps: int) -> tuple:
        key = (size, max_steps)
        ws = cls._cache.get(key)
        if ws is None or ws[0][0] >= np.iinfo(np.int32).max - 1:  # new, or stamps about to wrap
            nodes = size * size * (max_steps + 1)
            ws = (np.zeros(1, dtype=np.int64),  # stamp of the current search
                  np.zeros(nodes, dtype=np.int32),  # closed stamp per node
                  np.zeros(nodes, dtype=np.int32),  # best-g-valid stamp per node
                  np.empty(nodes),  # best g per node
                  np.empty(nodes, dtype=np.int32),  # parent slot per node
                  np.empty((max_steps + 1, size, size), dtype=np.bool_),  # blocked cells per time step
                  np.zeros(max_steps + 1, dtype=np.int64))  # stamp of each blocked layer
            cls._cache[key] = ws
        return ws


def plan(static: np.ndarray, traj: np.ndarray, start, goal, cfg: ExpertConfig) -> np.ndarray | None:
    """Plan one episode. `static` (G, G) bool, `traj` (≥ max_steps, N, 2) obstacle positions after
    0, 1, … physics steps. Returns the (L, 2) int64 cell path (start included) or None."""
    if traj.shape[0] < cfg.max_steps:
        raise ValueError(f"trajectory has {traj.shape[0]} steps, the planner needs {cfg.max_steps}")
    static = np.ascontiguousarray(static, dtype=np.bool_)
    path, _ = _space_time_astar(static, np.ascontiguousarray(traj, dtype=np.float64), int(start[0]),
                                int(start[1]), int(goal[0]), int(goal[1]), int(cfg.max_steps),
                                float(cfg.wait_cost), float(cfg.clearance), float(cfg.goal_tolerance),
                                *_Workspace.get(static.shape[0], int(cfg.max_steps)))
    return path if len(path) else None


def plan_episodes(world: BlobWorldConfig, state: blob_world.BlobState, cfg: ExpertConfig) -> list:
    """Plan every episode of a freshly reset batch (t = 0); a list of paths / None."""
    traj = blob_world.trajectory(world, state, cfg.max_steps, clip=cfg.forecast_clip)
    return [plan(state.static[e], traj[e], state.start[e], state.goal[e], cfg) for e in range(state.batch)]


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
