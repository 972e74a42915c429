"""Space-time A* on the grid among forecast obstacles (SPEC §6), compiled with numba.

Search nodes are (row, col, t) from (agent cell, 0); actions are the 4 moves and wait at unit cost,
f = g + Manhattan distance. A child at time t is rejected if off-grid, on a wall, or within radius ρ
of any forecast obstacle position "at its time" — which forecast index that is decides whether the
planner is in phase with the world (see `PlannerConfig.time_index`). Nodes at t ≥ horizon−1 are not
expanded. The plan's first move is returned; failing a path to the goal, the first move toward the
horizon node nearest the goal (the seed's partial-path fallback); failing that, wait.

Everything lives in flat preallocated arrays: a binary heap of (key, node id), node tables, and a
visited stamp per (cell, t) for duplicate detection — no Python object per node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numba as nb
import numpy as np

# Order in which moves are generated: up, down, left, right, wait (row/col deltas).
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]], dtype=np.int64)

STATUS_GOAL, STATUS_FALLBACK, STATUS_WAIT = 0, 1, 2


@dataclass
class PlannerConfig:
    """Receding-horizon space-time A* settings."""

    horizon: int = 20
    """Forecast steps the planner looks ahead; nodes at t ≥ horizon−1 are not expanded."""
    radius: float = 1.0
    """A cell is blocked at time t if a forecast obstacle is closer than this (cells)."""
    time_index: Literal["aligned", "seed"] = "aligned"
    """aligned: a node at time t is checked against the obstacles t steps ahead. seed: against t+1
    steps ahead — the original's off-by-one, which caps even a perfect forecaster at 66% (seed-v3)."""

    @property
    def forecast_offset(self) -> int:
        """Forecast index of a node at time t is t - 1 + offset (forecast[k] = k+1 steps ahead)."""
        return 1 if self.time_index == "seed" else 0


@nb.njit(cache=True)
def blocked_cells(forecast, grid_size, radius, offset, horizon):
    """(B, horizon, G, G) bool: cell blocked for a node at time t (t = 1 … horizon−1).

    forecast: (B, N, K, 2) positions, forecast[b, i, k] = k+1 steps ahead."""
    batch, n_obs, k_steps = forecast.shape[0], forecast.shape[1], forecast.shape[2]
    out = np.zeros((batch, horizon, grid_size, grid_size), dtype=np.bool_)
    r2 = radius * radius
    reach = int(np.ceil(radius))
    for b in range(batch):
        for t in range(1, horizon):
            k = t - 1 + offset
            if k < 0 or k >= k_steps:
                continue
            for i in range(n_obs):
                pr = forecast[b, i, k, 0]
                pc = forecast[b, i, k, 1]
                if not (np.isfinite(pr) and np.isfinite(pc)):
                    continue
                r_lo = max(0, int(np.floor(pr)) - reach)
                r_hi = min(grid_size - 1, int(np.ceil(pr)) + reach)
                c_lo = max(0, int(np.floor(pc)) - reach)
                c_hi = min(grid_size - 1, int(np.ceil(pc)) + reach)
                for r in range(r_lo, r_hi + 1):
                    for c in range(c_lo, c_hi + 1):
                        dr = r - pr
                        dc = c - pc
                        if dr * dr + dc * dc < r2:
                            out[b, t, r, c] = True
    return out


@nb.njit(cache=True, inline="always")
def _less(keys, ids, a, b):
    return keys[a] < keys[b] or (keys[a] == keys[b] and ids[a] < ids[b])


@nb.njit(cache=True)
def _heap_push(keys, ids, size, key, node):
    i = size
    keys[i] = key
    ids[i] = node
    while i > 0:
        parent = (i - 1) >> 1
        if _less(keys, ids, i, parent):
            keys[i], keys[parent] = keys[parent], keys[i]
            ids[i], ids[parent] = ids[parent], ids[i]
            i = parent
        else:
            break
    return size + 1


@nb.njit(cache=True)
def _heap_pop(keys, ids, size):
    node = ids[0]
    size -= 1
    keys[0] = keys[size]
    ids[0] = ids[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and _less(keys, ids, left + 1, left):
            child = left + 1
        if _less(keys, ids, child, i):
            keys[i], keys[child] = keys[child], keys[i]
            ids[i], ids[child] = ids[child], ids[i]
            i = child
        else:
            break
    return node, size


@nb.njit(cache=True, inline="always")
def _key(f, g, r, c, t):
    # lexicographic (f, g, row, col, t), like comparing the tuples a heap of (f, g, cell, t) would
    return (((f * 1024 + g) * 1024 + r) * 1024 + c) * 1024 + t


@nb.njit(cache=True)
def plan_one(walls, start_r, start_c, goal_r, goal_c, blocked, horizon, moves, work_keys, work_ids,
             node_r, node_c, node_t, node_g, node_parent, visited, stamp, path_out):
    """One space-time A* search. Returns (next_r, next_c, status, expansions); the planned cells
    (start first, one per time step) are written to `path_out` when it has rows, padded with -1."""
    g_size = walls.shape[0]
    size = 0
    n_nodes = 0
    node_r[0] = start_r
    node_c[0] = start_c
    node_t[0] = 0
    node_g[0] = 0
    node_parent[0] = -1
    n_nodes = 1
    h0 = abs(start_r - goal_r) + abs(start_c - goal_c)
    size = _heap_push(work_keys, work_ids, size, _key(h0, 0, start_r, start_c, 0), 0)
    best_node = -1
    goal_node = -1
    expansions = 0
    cap = node_r.shape[0]
    while size > 0:
        node, size = _heap_pop(work_keys, work_ids, size)
        r = node_r[node]
        c = node_c[node]
        t = node_t[node]
        if r == goal_r and c == goal_c:
            goal_node = node
            break
        cell_t = (r * g_size + c) * horizon + t
        if visited[cell_t] == stamp:
            continue
        visited[cell_t] = stamp
        if t >= horizon - 1:
            # Horizon nodes all have g = horizon-1, so they pop in order of h, and with a consistent
            # heuristic popped f never decreases: the first horizon node popped is the one nearest the
            # goal (first among equals), and no goal node can pop after it. Stopping here gives exactly
            # the result of exhausting the search, at a fraction of the cost.
            best_node = node
            break
        expansions += 1
        g = node_g[node]
        nt = t + 1
        for m in range(moves.shape[0]):
            nr = r + moves[m, 0]
            nc = c + moves[m, 1]
            if nr < 0 or nr >= g_size or nc < 0 or nc >= g_size:
                continue
            if walls[nr, nc] or blocked[nt, nr, nc]:
                continue
            if visited[(nr * g_size + nc) * horizon + nt] == stamp:
                continue
            if n_nodes >= cap:
                continue
            node_r[n_nodes] = nr
            node_c[n_nodes] = nc
            node_t[n_nodes] = nt
            node_g[n_nodes] = g + 1
            node_parent[n_nodes] = node
            h = abs(nr - goal_r) + abs(nc - goal_c)
            size = _heap_push(work_keys, work_ids, size, _key(g + 1 + h, g + 1, nr, nc, nt), n_nodes)
            n_nodes += 1
    target = goal_node
    status = STATUS_GOAL
    if target < 0:
        target = best_node
        status = STATUS_FALLBACK
    if target <= 0:  # no node, or the start itself: wait
        return start_r, start_c, STATUS_WAIT, expansions
    if path_out.shape[0] > 0:
        path_out[:] = -1
        node = target
        while node >= 0:
            path_out[node_t[node], 0] = node_r[node]
            path_out[node_t[node], 1] = node_c[node]
            node = node_parent[node]
    while node_parent[target] != 0:
        target = node_parent[target]
    return node_r[target], node_c[target], status, expansions


@nb.njit(cache=True)
def plan_batch(walls, agents, goals, blocked, active, horizon, moves):
    """Plan every active episode; returns (next cells (B, 2), status (B,), expansions (B,))."""
    batch = walls.shape[0]
    g_size = walls.shape[1]
    cap = g_size * g_size * horizon * moves.shape[0] + 1
    work_keys = np.empty(cap, dtype=np.int64)
    work_ids = np.empty(cap, dtype=np.int64)
    node_r = np.empty(cap, dtype=np.int64)
    node_c = np.empty(cap, dtype=np.int64)
    node_t = np.empty(cap, dtype=np.int64)
    node_g = np.empty(cap, dtype=np.int64)
    node_parent = np.empty(cap, dtype=np.int64)
    visited = np.zeros(g_size * g_size * horizon, dtype=np.int64)
    out = agents.copy()
    status = np.full(batch, STATUS_WAIT, dtype=np.int64)
    expansions = np.zeros(batch, dtype=np.int64)
    no_path = np.empty((0, 2), dtype=np.int64)
    for b in range(batch):
        if not active[b]:
            continue
        nr, nc, st, ex = plan_one(walls[b], agents[b, 0], agents[b, 1], goals[b, 0], goals[b, 1], blocked[b],
                                  horizon, moves, work_keys, work_ids, node_r, node_c, node_t, node_g,
                                  node_parent, visited, b + 1, no_path)
        out[b, 0] = nr
        out[b, 1] = nc
        status[b] = st
        expansions[b] = ex
    return out, status, expansions


def plan(walls: np.ndarray, agents: np.ndarray, goals: np.ndarray, forecast: np.ndarray,
         cfg: PlannerConfig, active: np.ndarray | None = None):
    """Next cell for every episode given forecasts (B, N, K, 2); K must cover the horizon."""
    walls = np.ascontiguousarray(walls, dtype=np.bool_)
    batch, grid = walls.shape[0], walls.shape[1]
    if active is None:
        active = np.ones(batch, dtype=np.bool_)
    forecast = np.ascontiguousarray(forecast, dtype=np.float64)
    blocked = blocked_cells(forecast, grid, float(cfg.radius), cfg.forecast_offset, cfg.horizon)
    return plan_batch(walls, np.ascontiguousarray(agents, dtype=np.int64),
                      np.ascontiguousarray(goals, dtype=np.int64), blocked, np.asarray(active, dtype=np.bool_),
                      cfg.horizon, MOVES)


def plan_path(walls: np.ndarray, agent, goal, forecast: np.ndarray, cfg: PlannerConfig) -> tuple[np.ndarray, int]:
    """The whole planned path of one episode, (horizon, 2) cells by time step (-1 past its end), and
    the status. For rendering and debugging; evaluation only needs the first move (`plan`)."""
    walls = np.ascontiguousarray(walls, dtype=np.bool_)
    grid = walls.shape[0]
    blocked = blocked_cells(np.ascontiguousarray(forecast[None], dtype=np.float64), grid, float(cfg.radius),
                            cfg.forecast_offset, cfg.horizon)[0]
    cap = grid * grid * cfg.horizon * MOVES.shape[0] + 1
    arrays = [np.empty(cap, dtype=np.int64) for _ in range(7)]
    visited = np.zeros(grid * grid * cfg.horizon, dtype=np.int64)
    path = np.full((cfg.horizon, 2), -1, dtype=np.int64)
    _, _, status, _ = plan_one(walls, int(agent[0]), int(agent[1]), int(goal[0]), int(goal[1]), blocked,
                               cfg.horizon, MOVES, *arrays, visited, 1, path)
    if status == STATUS_WAIT:
        path[0] = agent
    return path, int(status)


def warm_up_compiled() -> None:
    """Compile (or load from numba's cache) the planner before anything is timed."""
    plan(np.zeros((1, 4, 4), dtype=bool), np.zeros((1, 2), dtype=np.int64), np.full((1, 2), 3, dtype=np.int64),
         np.zeros((1, 1, 4, 2)), PlannerConfig(horizon=4))
