"""BounceGrid: the seed's 20×20 grid with static walls and obstacles bouncing off the border (SPEC §2.1).

All episodes of a batch are stepped at once with numpy. Two ways to make episodes:

* `reset_seed_exact(cfg, seeds)` replays the original's legacy NumPy draw order through a private
  `RandomState(seed)` per episode, so the seed protocols see the original evaluation episodes bit for bit.
* `reset_split(cfg, split, indices)` draws train / val / test episodes from a counter-based hash keyed
  by the episode id (see `seeding.py`): vectorised, and disjoint across splits by construction.

Coordinates are (row, col) in cell units; obstacle positions are continuous, the agent's are integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from hrmlab.worlds import seeding


@dataclass
class BounceGridConfig:
    """World settings. Defaults are the seed's v2–8gpu world."""

    grid_size: int = 20
    """Cells per side; start is (0,0), goal (grid_size-1, grid_size-1)."""
    num_obstacles: int = 6
    """Moving obstacles per episode."""
    wall_draws: int = 20
    """Random wall cells drawn (duplicates allowed, so at most this many walls)."""
    velocity: Literal["unit_speed", "gaussian"] = "unit_speed"
    """unit_speed: random direction at speed `speed` (v2+); gaussian: N(0, velocity_std²) per axis (v1)."""
    speed: float = 0.7
    """Obstacle speed for `unit_speed` (cells per step); the upper speed with `speed_min` < speed."""
    speed_min: float = -1.0
    """Mixed speeds: if ≥ 0, each obstacle's speed is uniform in [speed_min, speed] (split episodes only)."""
    velocity_std: float = 0.5
    """Per-axis velocity std for `gaussian` velocities."""
    obstacle_draw: Literal["cell", "uniform"] = "cell"
    """cell: each obstacle starts on a random wall-free integer cell (v2+); uniform: anywhere in
    [0, grid_size)², walls ignored, as v1 drew them (rand(2) · size)."""
    coordinates: Literal["normalised", "cells"] = "normalised"
    """What learned forecasters are trained on and fed: positions / grid_size (v2+) or raw cell
    coordinates (v1)."""
    clip_max: float = 19.99
    """Upper clip of a bounced coordinate (the seed's 19.99 for a 20-cell grid); scaled with grid_size."""
    wall_bounce: bool = False
    """Obstacles also reflect off wall cells (the seed's obstacles pass through walls)."""
    turn_prob: float = 0.0
    """Random turning: per step, each obstacle's heading is redrawn with this probability."""
    patrol: bool = False
    """Patrol: each obstacle walks a closed loop of waypoints (a rectangle) at its speed."""
    patrol_min_side: int = 3
    """Smallest side (cells) of a patrol rectangle."""
    patrol_max_side: int = 0
    """Largest side (cells) of a patrol rectangle; 0 = grid_size // 2."""
    turn_period_min: int = 0
    """Clockwork turning: if > 0, every obstacle turns its heading by 90° every k of its steps, with
    k uniform in [turn_period_min, turn_period_max], a turn direction (left or right) and a phase drawn
    per obstacle and episode. Deterministic, and the history shows k, the direction and the phase."""
    turn_period_max: int = 0
    """Largest clockwork period k (≥ turn_period_min)."""
    seed: int = 0
    """Base seed of split-based episodes: changing it gives a different, equally disjoint, episode set."""

    @property
    def clip_hi(self) -> float:
        return self.clip_max * self.grid_size / 20.0

    @property
    def position_scale(self) -> float:
        """Learned forecasters see positions divided by this (`coordinates`)."""
        return float(self.grid_size) if self.coordinates == "normalised" else 1.0


@dataclass
class WorldState:
    """A batch of episodes. Arrays are owned (copied on `copy()`), shapes use B episodes, N obstacles."""

    walls: np.ndarray  # (B, G, G) bool
    pos: np.ndarray  # (B, N, 2) float64
    vel: np.ndarray  # (B, N, 2) float64
    start: np.ndarray  # (B, 2) int64
    goal: np.ndarray  # (B, 2) int64
    keys: np.ndarray  # (B,) uint64 — per-episode keys for stochastic dynamics
    t: int | np.ndarray = 0  # physics steps since reset; (B, 1) int64 when episodes started apart (vector env)
    waypoints: np.ndarray | None = None  # (B, N, 4, 2) patrol rectangle corners
    next_wp: np.ndarray | None = None  # (B, N) index of the waypoint each obstacle walks to
    speeds: np.ndarray | None = None  # (B, N) patrol speed
    turn_period: np.ndarray | None = None  # (B, N) clockwork period k
    turn_sign: np.ndarray | None = None  # (B, N) +1: turn left (counter-clockwise in (row, col)), −1: right
    until_turn: np.ndarray | None = None  # (B, N) steps left before the next clockwork turn (1 … k)

    @property
    def batch(self) -> int:
        return self.pos.shape[0]

    def copy(self) -> "WorldState":
        def c(a):
            return None if a is None else a.copy()

        t = self.t.copy() if isinstance(self.t, np.ndarray) else self.t  # `t += 1` on a copy stays there
        return WorldState(self.walls.copy(), self.pos.copy(), self.vel.copy(), self.start.copy(),
                          self.goal.copy(), self.keys.copy(), t, c(self.waypoints), c(self.next_wp),
                          c(self.speeds), c(self.turn_period), c(self.turn_sign), c(self.until_turn))

    def subset(self, idx) -> "WorldState":
        def s(a):
            return None if a is None else a[idx].copy()

        t = self.t[idx].copy() if isinstance(self.t, np.ndarray) else self.t
        return WorldState(self.walls[idx].copy(), self.pos[idx].copy(), self.vel[idx].copy(),
                          self.start[idx].copy(), self.goal[idx].copy(), self.keys[idx].copy(), t,
                          s(self.waypoints), s(self.next_wp), s(self.speeds), s(self.turn_period),
                          s(self.turn_sign), s(self.until_turn))


def _corners(cfg: BounceGridConfig, batch: int) -> tuple[np.ndarray, np.ndarray]:
    g = cfg.grid_size
    start = np.zeros((batch, 2), dtype=np.int64)
    goal = np.full((batch, 2), g - 1, dtype=np.int64)
    return start, goal


def reset_seed_exact(cfg: BounceGridConfig, seeds) -> WorldState:
    """Episodes exactly as the original's `env.reset(seed)` drew them with NumPy's legacy global RNG."""
    seeds = [int(s) for s in np.atleast_1d(seeds)]
    g, n = cfg.grid_size, cfg.num_obstacles
    b = len(seeds)
    walls = np.zeros((b, g, g), dtype=bool)
    pos = np.zeros((b, n, 2))
    vel = np.zeros((b, n, 2))
    start, goal = _corners(cfg, b)
    for e, s in enumerate(seeds):
        rng = np.random.RandomState(s)
        for _ in range(cfg.wall_draws):
            cell = rng.randint(0, g, 2)
            walls[e, cell[0], cell[1]] = True
        walls[e, 0, 0] = walls[e, g - 1, g - 1] = False  # the original drew, then cleared start and goal
        for k in range(n):
            if cfg.obstacle_draw == "uniform":  # v1: {'pos': rand(2) * size, 'vel': randn(2) * std} per obstacle
                cell = rng.rand(2) * g
            else:
                cell = rng.randint(0, g, 2)
                while walls[e, cell[0], cell[1]]:
                    cell = rng.randint(0, g, 2)
            if cfg.velocity == "gaussian":
                v = rng.randn(2) * cfg.velocity_std
            else:
                v = rng.randn(2)
                norm = np.linalg.norm(v)
                v = v / norm * cfg.speed if norm > 1e-12 else np.array([cfg.speed, 0.0])
            pos[e, k] = cell
            vel[e, k] = v
    ids = seeding.episode_ids("seed", seeds)
    keys = seeding.episode_keys(ids, cfg.seed, salt=1)
    state = WorldState(walls, pos, vel, start, goal, keys)
    _init_dynamics(cfg, state)
    return state


def reset_split(cfg: BounceGridConfig, split: str, indices) -> WorldState:
    """Episodes `indices` of `split`, vectorised; identical whatever batch they are generated in."""
    ids = seeding.episode_ids(split, indices)
    return reset_ids(cfg, ids)


def reset_ids(cfg: BounceGridConfig, ids: np.ndarray) -> WorldState:
    g, n = cfg.grid_size, cfg.num_obstacles
    keys = seeding.episode_keys(ids, cfg.seed)
    b = len(keys)
    rows = np.arange(b)
    walls = np.zeros((b, g, g), dtype=bool)
    # one draw counter per episode, advanced only where that episode draws, so an episode's content
    # never depends on which other episodes share its batch
    counter = np.zeros(b, dtype=np.uint64)

    def draw(mask=None):
        u = seeding.uniform(keys, counter)
        counter[:] += np.uint64(1) if mask is None else mask.astype(np.uint64)
        return u

    def draw_cell(mask=None):
        cell = np.minimum((draw(mask) * g * g).astype(np.int64), g * g - 1)
        return cell // g, cell % g

    for _ in range(cfg.wall_draws):
        r, c = draw_cell()
        walls[rows, r, c] = True
    walls[:, 0, 0] = walls[:, g - 1, g - 1] = False  # start and goal stay free, as in the seed
    pos = np.zeros((b, n, 2))
    vel = np.zeros((b, n, 2))
    for k in range(n):
        if cfg.obstacle_draw == "uniform":  # v1: anywhere, walls ignored
            pos[:, k, 0], pos[:, k, 1] = draw() * g, draw() * g
        else:
            r, c = draw_cell()
            for _attempt in range(256):
                bad = walls[rows, r, c]
                if not bad.any():
                    break
                r2, c2 = draw_cell(bad)
                r, c = np.where(bad, r2, r), np.where(bad, c2, c)
            pos[:, k, 0], pos[:, k, 1] = r, c
        if cfg.velocity == "gaussian":
            u1, u2 = 1.0 - draw(), draw()
            radius = np.sqrt(-2.0 * np.log(u1)) * cfg.velocity_std
            vel[:, k, 0] = radius * np.cos(2 * np.pi * u2)
            vel[:, k, 1] = radius * np.sin(2 * np.pi * u2)
        else:
            angle = 2 * np.pi * draw()
            speed = np.full(b, cfg.speed)
            if cfg.speed_min >= 0:
                speed = cfg.speed_min + (cfg.speed - cfg.speed_min) * draw()
            vel[:, k, 0] = speed * np.cos(angle)
            vel[:, k, 1] = speed * np.sin(angle)
    start, goal = _corners(cfg, b)
    state = WorldState(walls, pos, vel, start, goal, seeding.splitmix64(keys))
    _init_dynamics(cfg, state)
    return state


def _init_dynamics(cfg: BounceGridConfig, state: WorldState) -> None:
    """Per-obstacle state of the optional dynamics, drawn from each episode's key."""
    if cfg.patrol:
        _init_patrol(cfg, state)
    if cfg.turn_period_min > 0:
        _init_clockwork(cfg, state)


def _init_clockwork(cfg: BounceGridConfig, state: WorldState) -> None:
    """Draw each obstacle's period k, turn direction and phase (steps until its first turn, 1 … k)."""
    lo, hi = cfg.turn_period_min, max(cfg.turn_period_min, cfg.turn_period_max)
    n = state.pos.shape[1]
    u = seeding.uniform(state.keys[:, None, None], 20_000 + 3 * np.arange(n)[None, :, None] + np.arange(3))  # (B, N, 3)
    state.turn_period = lo + np.minimum(np.floor(u[..., 0] * (hi - lo + 1)), hi - lo).astype(np.int64)
    state.turn_sign = np.where(u[..., 1] < 0.5, 1.0, -1.0)
    state.until_turn = 1 + np.minimum(np.floor(u[..., 2] * state.turn_period), state.turn_period - 1).astype(np.int64)


def _init_patrol(cfg: BounceGridConfig, state: WorldState) -> None:
    """Give each obstacle a rectangular loop with one corner at its start cell, walked at its speed in
    a random direction. Side lengths are drawn in [patrol_min_side, patrol_max_side]."""
    g = cfg.grid_size
    b, n, _ = state.pos.shape
    wps = np.zeros((b, n, 4, 2))
    side = cfg.patrol_min_side
    longest = cfg.patrol_max_side or g // 2
    for k in range(n):
        u = seeding.uniform(state.keys[:, None], 10_000 + 4 * k + np.arange(3)[None, :])  # (B, 3)
        height = side + np.floor(u[:, 0] * (longest - side + 1))
        width = side + np.floor(u[:, 1] * (longest - side + 1))
        r0, c0 = state.pos[:, k, 0], state.pos[:, k, 1]
        dr = np.where(r0 + height <= g - 1, height, -height)  # stay inside the grid
        dc = np.where(c0 + width <= g - 1, width, -width)
        rows_first = u[:, 2] < 0.5
        second = (np.where(rows_first, r0 + dr, r0), np.where(rows_first, c0, c0 + dc))
        fourth = (np.where(rows_first, r0, r0 + dr), np.where(rows_first, c0 + dc, c0))
        for j, (r, c) in enumerate([(r0, c0), second, (r0 + dr, c0 + dc), fourth]):
            wps[:, k, j, 0], wps[:, k, j, 1] = r, c
    state.waypoints = wps
    state.next_wp = np.ones((b, n), dtype=np.int64)
    state.speeds = np.linalg.norm(state.vel, axis=-1)
    _patrol_velocity(state)


def _patrol_velocity(state: WorldState) -> None:
    b, n = state.next_wp.shape
    target = np.take_along_axis(state.waypoints, state.next_wp[:, :, None, None].repeat(2, -1), axis=2)[:, :, 0]
    delta = target - state.pos
    dist = np.linalg.norm(delta, axis=-1)
    state.vel = np.where(dist[..., None] > 1e-12, delta / np.maximum(dist, 1e-12)[..., None] * state.speeds[..., None], 0.0)


def step(cfg: BounceGridConfig, state: WorldState) -> None:
    """Advance every episode one physics step, in place."""
    if cfg.patrol:
        _patrol_step(state)
        state.t += 1
        return
    if cfg.turn_prob > 0:
        turn = seeding.uniform(state.keys[:, None], 1_000_000 + state.t * 64 + np.arange(state.pos.shape[1])) < cfg.turn_prob
        if turn.any():
            angle = 2 * np.pi * seeding.uniform(state.keys[:, None], 2_000_000 + state.t * 64 + np.arange(state.pos.shape[1]))
            speed = np.linalg.norm(state.vel, axis=-1)
            new = np.stack([speed * np.cos(angle), speed * np.sin(angle)], axis=-1)
            state.vel = np.where(turn[..., None], new, state.vel)
    if state.until_turn is not None:
        _clockwork_turn(state)
    old = state.pos
    pos = old + state.vel
    hi = cfg.grid_size
    out = (pos < 0) | (pos >= hi)
    if out.any():
        state.vel = np.where(out, -state.vel, state.vel)
        pos = np.where(out, np.clip(pos, 0.0, cfg.clip_hi), pos)
    if cfg.wall_bounce:
        pos = _wall_reflect(cfg, state, old, pos)
    state.pos = pos
    state.t += 1


def _clockwork_turn(state: WorldState) -> None:
    """Obstacles whose countdown ends turn 90° (by their sign) before this step's move; the countdown
    restarts at their period."""
    state.until_turn = state.until_turn - 1
    turn = state.until_turn == 0
    if turn.any():
        rotated = np.stack([-state.turn_sign * state.vel[..., 1], state.turn_sign * state.vel[..., 0]], axis=-1)
        state.vel = np.where(turn[..., None], rotated, state.vel)
        state.until_turn = np.where(turn, state.turn_period, state.until_turn)


def _wall_reflect(cfg: BounceGridConfig, state: WorldState, old: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Reflect obstacles whose new cell is a wall: flip the velocity component(s) whose axis crossed
    into the wall cell and stay at the old position (a cell-level bounce)."""
    g = cfg.grid_size
    b = np.arange(state.batch)[:, None]
    cell = np.clip(np.floor(pos + 0.5).astype(np.int64), 0, g - 1)
    hit = state.walls[b, cell[..., 0], cell[..., 1]]
    if not hit.any():
        return pos
    ocell = np.clip(np.floor(old + 0.5).astype(np.int64), 0, g - 1)
    row_only = state.walls[b, cell[..., 0], ocell[..., 1]]
    col_only = state.walls[b, ocell[..., 0], cell[..., 1]]
    flip_r = hit & (row_only | ~col_only)
    flip_c = hit & (col_only | ~row_only)
    state.vel[..., 0] = np.where(flip_r, -state.vel[..., 0], state.vel[..., 0])
    state.vel[..., 1] = np.where(flip_c, -state.vel[..., 1], state.vel[..., 1])
    return np.where(hit[..., None], old, pos)


def _patrol_step(state: WorldState) -> None:
    target = np.take_along_axis(state.waypoints, state.next_wp[:, :, None, None].repeat(2, -1), axis=2)[:, :, 0]
    delta = target - state.pos
    dist = np.linalg.norm(delta, axis=-1)
    arrive = dist <= state.speeds
    state.pos = np.where(arrive[..., None], target, state.pos + state.vel)
    state.next_wp = np.where(arrive, (state.next_wp + 1) % 4, state.next_wp)
    _patrol_velocity(state)


def rollout(cfg: BounceGridConfig, state: WorldState, steps: int) -> np.ndarray:
    """Positions after 1..steps physics steps of a copy of `state`: (B, N, steps, 2). The oracle."""
    sim = state.copy()
    out = np.empty((sim.batch, sim.pos.shape[1], steps, 2))
    for k in range(steps):
        step(cfg, sim)
        out[:, :, k] = sim.pos
    return out
