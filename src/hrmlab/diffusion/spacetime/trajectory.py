"""Space-time trajectories on a grid: projection onto legal moves, the candidate check, the pick.

A trajectory has one point per time step, t = 0 … T−1 (point 0 = the agent now). A world's `MoveRules`
say which moves exist (BlobWorld: 8 king moves + wait; BounceGrid: 4 moves + wait), when the goal is
reached and what counts as a collision — the evaluators' own rules:

* BlobWorld (`diffusion/evaluate.py`, `standard`): a cell closer than 2 to an obstacle at its time
  collides; reaching within `goal_tolerance` 2 of the goal ends the episode.
* BounceGrid (`evaluate/episodes.py`): the agent after move t is tested against the obstacles after
  t physics steps, crash closer than 0.8; the goal is its cell (distance < 0.5).

Everything here is vectorised over P candidates of B episodes (numba kernels, numpy for the pick).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

KING_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1], [-1, -1], [-1, 1], [1, -1], [1, 1]],
                      dtype=np.int64)
"""BlobWorld's moves (the expert's): wait, 4 straight, 4 diagonal."""
GRID_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)
"""BounceGrid's moves (the grid A*'s): wait and 4 straight."""


@dataclass(frozen=True)
class MoveRules:
    """What a legal, safe, finished trajectory is in one world (the evaluator's rules)."""

    grid_size: int
    moves: np.ndarray
    """(K, 2) row/col deltas allowed per step, wait included."""
    goal_tolerance: float
    """The goal is reached at distance < goal_tolerance (cells)."""
    collision_radius: float
    """The evaluator's crash test: closer than this to an obstacle at the same time."""


@nb.njit(cache=True)
def project_paths(samples, which, starts, goals, static, moves, goal_tolerance):
    """Walk each sample with legal moves: cells (P, T, 2) int64 and arrival step (P,) (T = never).

    From the start cell, step t takes the legal move (on the map, not static) whose cell is nearest to
    the sampled point t (ties: first in `moves`); so consecutive cells are always one move apart and
    never on a static cell. From the first cell within goal_tolerance on, the path waits there."""
    p_count, length = samples.shape[0], samples.shape[1]
    size = static.shape[1]
    cells = np.empty((p_count, length, 2), dtype=np.int64)
    arrival = np.full(p_count, length, dtype=np.int64)
    tol2 = goal_tolerance * goal_tolerance
    for p in range(p_count):
        b = which[p]
        r = starts[b, 0]
        c = starts[b, 1]
        gr = goals[b, 0]
        gc = goals[b, 1]
        arrived = False
        for t in range(length):
            if t > 0 and not arrived:
                tr = samples[p, t, 0]
                tc = samples[p, t, 1]
                best = 1e300
                br = r
                bc = c
                for m in range(moves.shape[0]):
                    nr = r + moves[m, 0]
                    nc = c + moves[m, 1]
                    if nr < 0 or nr >= size or nc < 0 or nc >= size or static[b, nr, nc]:
                        continue
                    d = (nr - tr) * (nr - tr) + (nc - tc) * (nc - tc)
                    if d < best:
                        best = d
                        br = nr
                        bc = nc
                r = br
                c = bc
            cells[p, t, 0] = r
            cells[p, t, 1] = c
            if not arrived and (r - gr) * (r - gr) + (c - gc) * (c - gc) < tol2:
                arrived = True
                arrival[p] = t
    return cells, arrival


@nb.njit(cache=True)
def check_paths(cells, which, arrival, obstacles, radius, margin):
    """The evaluator's collision test against a forecast, for every cell path.

    cells (P, T, 2); obstacles (B, T', N, 2) with obstacles[b, t] = positions t steps from now.
    Checks steps 1 … min(arrival, T−1, T'−1) (the episode ends on arrival). Returns first_hit (P,)
    (the first colliding step, T when none) and the clearance cost (P,) Σ max(0, margin − d)²."""
    p_count, length = cells.shape[0], cells.shape[1]
    n_obs = obstacles.shape[2]
    first_hit = np.full(p_count, length, dtype=np.int64)
    cost = np.zeros(p_count)
    r2 = radius * radius
    for p in range(p_count):
        b = which[p]
        last = min(arrival[p], length - 1, obstacles.shape[1] - 1)
        for t in range(1, last + 1):
            best = 1e300
            for i in range(n_obs):
                orow = obstacles[b, t, i, 0]
                ocol = obstacles[b, t, i, 1]
                if not (math.isfinite(orow) and math.isfinite(ocol)):
                    continue
                d2 = (cells[p, t, 0] - orow) ** 2 + (cells[p, t, 1] - ocol) ** 2
                if d2 < best:
                    best = d2
            if best < r2 and first_hit[p] == length:
                first_hit[p] = t
            if best < margin * margin:
                gap = margin - math.sqrt(best)
                cost[p] += gap * gap
    return first_hit, cost


def pick_candidates(arrival: np.ndarray, first_hit: np.ndarray, clearance_cost: np.ndarray,
                    goal_distance: np.ndarray, length: int, clearance_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Best candidate per episode from (B, S) check results; returns (index (B,), kind (B,)).

    kind 0, feasible (no collision, reaches the goal within the T points): the earliest arrival wins,
    plus clearance_weight × clearance cost. kind 1, none feasible but some collision-free: the one
    ending nearest the goal (receding horizon). kind 2, every candidate collides: the one whose first
    collision comes latest (the planner replans before it)."""
    safe = first_hit >= length
    kind = np.where(safe & (arrival < length), 0, np.where(safe, 1, 2))
    score = np.where(kind == 0, arrival, np.where(kind == 1, goal_distance, -first_hit)).astype(np.float64)
    score = score + clearance_weight * clearance_cost + 1e9 * kind
    best = score.argmin(axis=1)
    return best, kind[np.arange(len(best)), best]


def evade_moves(agents: np.ndarray, goals: np.ndarray, static: np.ndarray, next_obstacles: np.ndarray,
                rules: MoveRules) -> np.ndarray:
    """The fallback move: the legal move (wait included) with the most room from the obstacles one
    step ahead; ties go to the move nearer the goal. agents, goals (b, 2); next_obstacles (b, N, 2)."""
    cand = agents[:, None, :] + rules.moves[None]  # (b, K, 2)
    g = rules.grid_size
    on_map = ((cand >= 0) & (cand < g)).all(axis=-1)
    clipped = np.clip(cand, 0, g - 1)
    legal = on_map & ~static[np.arange(len(agents))[:, None], clipped[..., 0], clipped[..., 1]]
    if next_obstacles.shape[1]:
        room = np.linalg.norm(cand[:, :, None, :] - next_obstacles[:, None], axis=-1).min(axis=-1)
        room = np.minimum(room, 4.0 * rules.collision_radius)  # beyond a few radii, room does not matter
    else:
        room = np.zeros(on_map.shape)
    to_goal = np.linalg.norm(cand - goals[:, None, :], axis=-1)
    score = np.where(legal, room - 1e-3 * to_goal, -np.inf)
    return cand[np.arange(len(agents)), score.argmax(axis=1)]
