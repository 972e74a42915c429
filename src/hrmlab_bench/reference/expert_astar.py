"""Pure-Python space-time A*: the same search as `hrmlab/diffusion/expert.py`, written the way the seed
wrote it.

Kept as a test oracle for the numba kernel and as the baseline of `hrmlab bench` (expert paths per
second per core). It uses `heapq` tuples (f, g, row, col, t), a visited set and a parent dict — one
Python object per node, which is what the compiled kernel avoids. Semantics are identical (see the
docstring of `expert.py`), so both return paths of the same length for every episode.
"""

from __future__ import annotations

import heapq
import math

import numpy as np


def plan_reference(static: np.ndarray, traj: np.ndarray, start, goal, max_steps: int = 64,
                   wait_cost: float = 0.0, clearance: float = 3.0,
                   goal_tolerance: float = 2.0) -> np.ndarray | None:
    """Returns the (L, 2) int64 cell path (start included) or None when no plan exists."""
    size = static.shape[0]
    blocked = static.tolist()
    obstacles = traj.tolist()  # [t][k] -> [row, col]
    gr, gc = int(goal[0]), int(goal[1])
    start_node = (int(start[0]), int(start[1]), 0)
    open_heap = [(0.0, 0.0) + start_node]
    parent = {start_node: None}
    best_g = {start_node: 0.0}
    visited = set()
    while open_heap:
        _f, g, r, c, t = heapq.heappop(open_heap)
        if t >= max_steps:
            continue
        if math.sqrt((r - gr) ** 2 + (c - gc) ** 2) < goal_tolerance:
            path = []
            node = (r, c, t)
            while node is not None:
                path.append(node[:2])
                node = parent[node]
            return np.array(path[::-1], dtype=np.int64)
        if (r, c, t) in visited:
            continue
        visited.add((r, c, t))
        nt = t + 1
        if nt >= max_steps:
            continue
        positions = obstacles[nt]
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                nr, nc = r + dr, c + dc
                if not (0 <= nr < size and 0 <= nc < size) or blocked[nr][nc]:
                    continue
                child = (nr, nc, nt)
                if child in visited:
                    continue
                if any(math.sqrt((nr - pr) ** 2 + (nc - pc) ** 2) < clearance for pr, pc in positions):
                    continue
                ng = g + (wait_cost if dr == 0 and dc == 0 else math.sqrt(dr * dr + dc * dc))
                if ng >= best_g.get(child, math.inf):
                    continue
                best_g[child] = ng
                parent[child] = (r, c, t)
                h = math.sqrt((nr - gr) ** 2 + (nc - gc) ** 2)
                heapq.heappush(open_heap, (ng + h, ng, nr, nc, nt))
    return None


def plan_seed_style(static: np.ndarray, traj: np.ndarray, start, goal, max_steps: int = 64,
                    wait_cost: float = 0.0, clearance: float = 3.0,
                    goal_tolerance: float = 2.0) -> np.ndarray | None:
    """The same search with the original script's per-node costs: every heap entry carries its whole
    path as a list, every distance is a `np.linalg.norm` call, and nothing is pruned on push (stale
    entries are only skipped when popped). Results equal `plan_reference`; it exists so that
    `hrmlab bench` can quote the speed-up over the seed's own implementation style."""
    size = static.shape[0]
    goal_cell = (int(goal[0]), int(goal[1]))
    first = (int(start[0]), int(start[1]))
    open_heap = [(0.0, 0.0, first[0], first[1], 0, [first])]
    visited = set()
    while open_heap:
        _f, g, r, c, t, path = heapq.heappop(open_heap)
        if t >= max_steps:
            continue
        if np.linalg.norm([r - goal_cell[0], c - goal_cell[1]]) < goal_tolerance:
            return np.array(path, dtype=np.int64)
        if (r, c, t) in visited:
            continue
        visited.add((r, c, t))
        nt = t + 1
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                nr, nc = r + dr, c + dc
                if not (0 <= nr < size and 0 <= nc < size) or static[nr, nc]:
                    continue
                if any(np.linalg.norm([nr - p[0], nc - p[1]]) < clearance for p in traj[min(nt, len(traj) - 1)]):
                    continue
                step = wait_cost if dr == 0 and dc == 0 else float(np.linalg.norm([dr, dc]))
                ng = g + step
                h = float(np.linalg.norm([nr - goal_cell[0], nc - goal_cell[1]]))
                heapq.heappush(open_heap, (ng + h, ng, nr, nc, nt, path + [(nr, nc)]))
    return None
