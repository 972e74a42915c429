"""BlobWorld's space-time A* (SPEC §8), compiled with numba: the expert that makes the diffusion families'
training paths, the oracle of their evaluations and the A* rows of the space-time planner's closed loop.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from hrmlab.worlds import blob_world
from hrmlab.worlds.blob_world import BlobWorldConfig

MOVES = np.array([[dr, dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1)], dtype=np.int64)
"""The search's moves in its neighbour order: the 8 king moves and wait (0, 0) — BlobWorld's actions
(the Gymnasium env's `KING_MOVES`)."""


@dataclass
class ExpertConfig:
    """Space-time A* settings (the `expert` section of the diffusion presets). Defaults are the seed's,
    except `forecast_clip` (see there); step limit and goal tolerance are BlobWorld's rules."""

    max_steps: int = blob_world.MAX_STEPS
    """A popped node at t ≥ max_steps is dropped, so a plan has at most max_steps cells."""
    wait_cost: float = 0.0
    """Cost of waiting one step in place (the seed: 0, so waiting is free)."""
    clearance: float = 3.0
    """A cell at distance < clearance from any obstacle at its time is rejected (the seed: radius 2 + 1)."""
    goal_tolerance: float = blob_world.GOAL_TOLERANCE
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


@numba.njit(cache=True, nogil=True, inline="always")
def _less(f1, g1, n1, f2, g2, n2):
    """The open list's order: (f, g, node id) compared as the seed's heap tuples."""
    return f1 < f2 or (f1 == f2 and (g1 < g2 or (g1 == g2 and n1 < n2)))


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
                if right < heap_size and _less(hp[right, 0], hp[right, 1], hp[right, 2], hp[child, 0], hp[child, 1],
                                               hp[child, 2]):
                    child = right
                if _less(hp[child, 0], hp[child, 1], hp[child, 2], lf, lg, ln):
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
                    if _less(nf, ng, child_node, hp[up, 0], hp[up, 1], hp[up, 2]):
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
