"""BlobWorld: the diffusion scripts' 64×64 map of filled discs with bouncing disc obstacles (SPEC §2.2).

A batch of episodes is stepped at once with numpy. Two ways to make episodes, as for BounceGrid:

* `reset_seed_exact(cfg, seeds)` replays the original `DynamicEnv(seed)` draw order (NumPy's legacy
  global RNG) through a private `RandomState(seed)` per episode: 10 × (`randint(0,64,2)` centre,
  `randint(2,6)` radius), then per obstacle `rand(2)*64` and `(rand(2)-0.5)*1.5`, then start and goal
  as `randint(0,64,2)` redrawn while on a disc. The seed protocol therefore sees the original evaluation
  episodes bit for bit.
* `reset_split(cfg, split, indices)` draws train / val / test episodes from the counter-based hash of
  `seeding.py`: vectorised, independent of batching, and disjoint across splits by construction.

Coordinates are (row, col) in cell units. Obstacle positions are continuous; start, goal and the
static discs are integer cells. Obstacles ignore the discs and each other and reflect off the border.

The rules (bottom of the file) are BlobWorld's one definition of success, read by the diffusion evaluation,
the space-time planner's closed loop, the expert's search settings and the Gymnasium env: the goal is
reached within `GOAL_TOLERANCE`, an obstacle closer than `COLLISION_RADIUS` is a collision, the expert's
plans and the env's episodes last `MAX_STEPS`, and the original's evaluation used legacy seeds from
`SEED_FIRST`. `execute_standard` and `check_seed_protocol` judge whole paths (the open-loop protocols).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrmlab.worlds import seeding
from hrmlab.worlds.bounce_grid import BounceGridConfig

GOAL_TOLERANCE = 2.0
"""The goal is reached closer than this to it (cells; the seed's expert stopped there)."""
COLLISION_RADIUS = 2.0
"""A cell closer than this to an obstacle collides (the seed: the obstacle radius 2)."""
MAX_STEPS = 64
"""Steps of a plan or episode: the expert's plans have at most this many cells, the env's episodes this
many moves."""
SEED_FIRST = 1000
"""The original evaluation's first legacy seed (seeds 1000–1049)."""
PATH_OUTCOMES = ("success", "no_plan", "infeasible", "off_map", "static", "collision", "not_at_goal")
"""What becomes of a path (`execute_standard`, `check_seed_protocol`), in the order of its checks."""


@dataclass
class BlobWorldConfig:
    """World settings. Defaults are the diffusion scripts' world."""

    map_size: int = 64
    """Cells per side of the square map."""
    num_discs: int = 10
    """Static filled discs per map (they may overlap and are clipped at the border)."""
    disc_radius_min: int = 2
    """Smallest disc radius (cells, inclusive)."""
    disc_radius_max: int = 5
    """Largest disc radius (cells, inclusive)."""
    num_obstacles: int = 8
    """Moving disc obstacles per episode."""
    obstacle_radius: int = 2
    """Radius of an obstacle when rasterised into the occupancy grid (cells)."""
    max_speed: float = 0.75
    """Obstacle velocity is uniform in [-max_speed, max_speed) per axis (cells per step)."""
    clip_margin: float = 0.01
    """A bounced coordinate is clipped into [0, map_size - clip_margin] (the seed's 63.99)."""
    seed: int = 0
    """Base seed of split-based episodes: changing it gives a different, equally disjoint, episode set."""


@dataclass
class BlobState:
    """A batch of B episodes with N obstacles each. `t` counts physics steps since reset."""

    static: np.ndarray  # (B, G, G) bool — the discs
    pos: np.ndarray  # (B, N, 2) float64
    vel: np.ndarray  # (B, N, 2) float64
    start: np.ndarray  # (B, 2) int64
    goal: np.ndarray  # (B, 2) int64
    t: int = 0

    @property
    def batch(self) -> int:
        return self.pos.shape[0]

    def copy(self) -> "BlobState":
        return BlobState(self.static.copy(), self.pos.copy(), self.vel.copy(), self.start.copy(),
                         self.goal.copy(), self.t)

    def subset(self, idx) -> "BlobState":
        return BlobState(self.static[idx].copy(), self.pos[idx].copy(), self.vel[idx].copy(),
                         self.start[idx].copy(), self.goal[idx].copy(), self.t)


def disc_offsets(radius: int) -> np.ndarray:
    """(K, 2) integer offsets (dr, dc) with dr² + dc² ≤ radius² — the seed's disc stencil."""
    r = np.arange(-radius, radius + 1)
    dr, dc = np.meshgrid(r, r, indexing="ij")
    keep = dr * dr + dc * dc <= radius * radius
    return np.stack([dr[keep], dc[keep]], axis=1)


def _stamp_discs(grid: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> None:
    """Set cells within `radii` of integer `centres` (B, 2) to True in `grid` (B, G, G), in place."""
    g = grid.shape[-1]
    rows = np.arange(g)
    dr2 = (rows[None, :] - centres[:, 0:1]) ** 2  # (B, G)
    dc2 = (rows[None, :] - centres[:, 1:2]) ** 2
    grid |= dr2[:, :, None] + dc2[:, None, :] <= (radii * radii)[:, None, None]


def reset_seed_exact(cfg: BlobWorldConfig, seeds) -> BlobState:
    """Episodes exactly as the original `DynamicEnv(seed)` drew them with NumPy's legacy global RNG.

    (The original only reseeded for a truthy seed, so its seed 0 continued the global stream; here seed 0
    is simply `RandomState(0)`.)"""
    seeds = [int(s) for s in np.atleast_1d(seeds)]
    g, n = cfg.map_size, cfg.num_obstacles
    b = len(seeds)
    static = np.zeros((b, g, g), dtype=bool)
    pos = np.zeros((b, n, 2))
    vel = np.zeros((b, n, 2))
    start = np.zeros((b, 2), dtype=np.int64)
    goal = np.zeros((b, 2), dtype=np.int64)
    for e, s in enumerate(seeds):
        rng = np.random.RandomState(s)
        for _ in range(cfg.num_discs):
            centre = rng.randint(0, g, 2)
            radius = rng.randint(cfg.disc_radius_min, cfg.disc_radius_max + 1)
            _stamp_discs(static[e:e + 1], centre[None].astype(np.int64), np.array([radius]))
        for k in range(n):
            pos[e, k] = rng.rand(2) * g
            vel[e, k] = (rng.rand(2) - 0.5) * (2 * cfg.max_speed)
        for out in (start, goal):
            cell = rng.randint(0, g, 2)
            while static[e, cell[0], cell[1]]:
                cell = rng.randint(0, g, 2)
            out[e] = cell
    return BlobState(static, pos, vel, start, goal)


_ENDPOINT_CANDIDATES = 32
"""Candidate cells drawn for start (and goal): a fixed count, so episodes do not depend on the batch."""


def reset_split(cfg: BlobWorldConfig, split: str, indices) -> BlobState:
    """Episodes `indices` of `split` ('train', 'val', 'test'), vectorised; the same whatever the batch."""
    return reset_ids(cfg, seeding.episode_ids(split, indices))


def reset_ids(cfg: BlobWorldConfig, ids: np.ndarray) -> BlobState:
    g, n = cfg.map_size, cfg.num_obstacles
    keys = seeding.episode_keys(ids, cfg.seed, salt=2)  # salt 2: BlobWorld's own stream
    b = len(keys)
    counter = 0

    def draw() -> np.ndarray:
        nonlocal counter
        u = seeding.uniform(keys, counter)
        counter += 1
        return u

    def draw_cell() -> np.ndarray:
        cell = np.minimum((draw() * g * g).astype(np.int64), g * g - 1)
        return np.stack([cell // g, cell % g], axis=1)

    static = np.zeros((b, g, g), dtype=bool)
    span = cfg.disc_radius_max - cfg.disc_radius_min + 1
    for _ in range(cfg.num_discs):
        centre = draw_cell()
        radius = cfg.disc_radius_min + np.minimum((draw() * span).astype(np.int64), span - 1)
        _stamp_discs(static, centre, radius)
    pos = np.zeros((b, n, 2))
    vel = np.zeros((b, n, 2))
    for k in range(n):
        for axis in range(2):
            pos[:, k, axis] = draw() * g
        for axis in range(2):
            vel[:, k, axis] = (draw() - 0.5) * (2 * cfg.max_speed)
    rows = np.arange(b)
    ends = []
    for _endpoint in range(2):  # start, then goal: the first of a fixed number of candidates not on a disc
        candidates = np.stack([draw_cell() for _ in range(_ENDPOINT_CANDIDATES)], axis=1)  # (B, K, 2)
        free = ~static[rows[:, None], candidates[..., 0], candidates[..., 1]]
        cell = candidates[rows, free.argmax(axis=1)]
        none_free = ~free.any(axis=1)
        if none_free.any():  # pragma: no cover - needs a map almost covered by discs
            first_free = np.argmax(~static.reshape(b, -1), axis=1)
            cell = np.where(none_free[:, None], np.stack([first_free // g, first_free % g], 1), cell)
        ends.append(cell.astype(np.int64))
    return BlobState(static, pos, vel, ends[0], ends[1])


def step(cfg: BlobWorldConfig, state: BlobState, clip: bool = True) -> None:
    """Advance every episode one physics step, in place. A coordinate that leaves [0, G) flips its
    velocity component and (with `clip`, as the world does) is clipped back into [0, G - clip_margin];
    `clip=False` is the seed planner's own roll-out, which only flipped the velocity."""
    pos = state.pos + state.vel
    out = (pos < 0) | (pos >= cfg.map_size)
    if out.any():
        state.vel = np.where(out, -state.vel, state.vel)
        if clip:
            pos = np.where(out, np.clip(pos, 0.0, cfg.map_size - cfg.clip_margin), pos)
    state.pos = pos
    state.t += 1


def trajectory(cfg: BlobWorldConfig, state: BlobState, steps: int, clip: bool = True) -> np.ndarray:
    """Obstacle positions of a copy of `state` after 0..steps physics steps: (B, steps + 1, N, 2)."""
    sim = state.copy()
    out = np.empty((sim.batch, steps + 1, sim.pos.shape[1], 2))
    out[:, 0] = sim.pos
    for k in range(1, steps + 1):
        step(cfg, sim, clip=clip)
        out[:, k] = sim.pos
    return out


def occupancy_grid(cfg: BlobWorldConfig, state: BlobState) -> np.ndarray:
    """(B, G, G) bool: discs plus each obstacle rasterised as a disc of `obstacle_radius` around its
    truncated position — the t = 0 map the diffusion model is conditioned on (the seed's `get_grid`)."""
    grid = state.static.copy()
    b, n, _ = state.pos.shape
    cells = state.pos.astype(np.int64)  # int() truncation, as the seed; positions are ≥ 0
    offsets = disc_offsets(cfg.obstacle_radius)
    g = cfg.map_size
    rr = cells[:, :, None, 0] + offsets[None, None, :, 0]  # (B, N, K)
    cc = cells[:, :, None, 1] + offsets[None, None, :, 1]
    inside = (rr >= 0) & (rr < g) & (cc >= 0) & (cc < g)
    ep = np.broadcast_to(np.arange(b)[:, None, None], rr.shape)
    grid[ep[inside], rr[inside], cc[inside]] = True
    return grid


def rewound_history(cfg: BlobWorldConfig, state: BlobState, length: int) -> np.ndarray:
    """(B, N, length, 2) obstacle positions before t = 0, oldest first, last = now.

    BlobWorld episodes start with the agent at t = 0 (the `standard` protocol's episodes); the obstacles'
    past is the same physics run backwards (velocities negated), exact except within a step of a border
    clip. It gives history-based forecasters (constant velocity, learned) something to look at without
    changing the episodes."""
    sim = state.copy()
    sim.vel = -sim.vel
    frames = [sim.pos.copy()]
    for _ in range(length - 1):
        step(cfg, sim)
        frames.append(sim.pos.copy())
    return np.stack(frames[::-1], axis=2)


def forecaster_view(cfg: BlobWorldConfig) -> BounceGridConfig:
    """A BounceGrid config with BlobWorld's map size and border clip, for forecasters that read
    `obs.world.grid_size` / `clip_hi` (bounce-aware)."""
    return BounceGridConfig(grid_size=cfg.map_size, clip_max=(cfg.map_size - cfg.clip_margin) * 20.0
                            / cfg.map_size, num_obstacles=cfg.num_obstacles)


# ------------------------------------------------------------------------------------------------ rules


def check_seed_protocol(paths: np.ndarray, cfg: BlobWorldConfig, state: BlobState,
                        collision_radius: float = COLLISION_RADIUS) -> np.ndarray:
    """The original's open-loop check, outcome per episode for paths (B, L, 2): path point k against the
    world after k + 1 steps; it fails off the map, on a disc cell (truncated coordinates) or closer than
    `collision_radius` to an obstacle."""
    b, length, _ = paths.shape
    traj = trajectory(cfg, state, length)[:, 1:]  # (B, L, N, 2): point k after k + 1 steps
    g = cfg.map_size
    off = ((paths < 0) | (paths >= g)).any(axis=-1)
    cells = np.clip(np.trunc(paths), 0, g - 1).astype(np.int64)
    on_static = state.static[np.arange(b)[:, None], cells[..., 0], cells[..., 1]] & ~off
    dist = np.linalg.norm(paths[:, :, None, :] - traj, axis=-1).min(axis=-1)
    hit = (dist < collision_radius) & ~off & ~on_static
    return first_failure({"off_map": off, "static": on_static, "collision": hit})


def execute_standard(paths: list, cfg: BlobWorldConfig, state: BlobState, collision_radius: float = COLLISION_RADIUS,
                     goal_tolerance: float = GOAL_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Execute each path (list of (L_b, 2) arrays, None = no plan) on the grid from t = 0: points are
    rounded to cells, the agent is at cell k after k physics steps, and fails if a move spans more than one
    cell per axis (infeasible), leaves the map, enters a disc, comes closer than `collision_radius` to an
    obstacle (points k ≥ 1), or ends `goal_tolerance` or farther from the goal.
    Returns (outcome per episode, steps per episode)."""
    b = state.batch
    g = cfg.map_size
    lengths = np.array([0 if p is None else len(p) for p in paths])
    horizon = max(1, int(lengths.max()))
    cells = np.zeros((b, horizon, 2), dtype=np.int64)
    for e, p in enumerate(paths):
        if p is not None:
            c = np.floor(np.asarray(p, dtype=np.float64) + 0.5).astype(np.int64)
            cells[e, :len(c)] = c
            cells[e, len(c):] = c[-1]
    valid = np.arange(horizon)[None, :] < lengths[:, None]
    moving = valid.copy()
    moving[:, 0] = False  # the start cell is given, not chosen
    traj = trajectory(cfg, state, horizon - 1)  # (B, H, N, 2): after k steps
    jump = np.zeros((b, horizon), dtype=bool)
    jump[:, 1:] = np.abs(np.diff(cells, axis=1)).max(axis=-1) > 1
    off = ((cells < 0) | (cells >= g)).any(axis=-1)
    clipped = np.clip(cells, 0, g - 1)
    on_static = state.static[np.arange(b)[:, None], clipped[..., 0], clipped[..., 1]] & ~off
    dist = np.linalg.norm(cells[:, :, None, :].astype(np.float64) - traj, axis=-1).min(axis=-1)
    hit = (dist < collision_radius) & ~off & ~on_static
    outcome = first_failure({"infeasible": jump & moving, "off_map": off & moving, "static": on_static & moving,
                             "collision": hit & moving})
    last = cells[np.arange(b), np.maximum(lengths - 1, 0)]
    far = np.linalg.norm((last - state.goal).astype(np.float64), axis=-1) >= goal_tolerance
    outcome = np.where((outcome == "success") & far, "not_at_goal", outcome)
    outcome = np.where(lengths == 0, "no_plan", outcome)
    return outcome, np.maximum(lengths - 1, 0)


def first_failure(checks: dict) -> np.ndarray:
    """Per episode, the check that fails at the earliest step (ties in dict order), else 'success'."""
    names = list(checks)
    stacked = np.stack([checks[n] for n in names], axis=-1)  # (B, L, C)
    b, length, _ = stacked.shape
    any_fail = stacked.any(axis=-1)
    out = np.full(b, "success", dtype=object)
    failed = any_fail.any(axis=1)
    first_step = any_fail.argmax(axis=1)
    for e in np.nonzero(failed)[0]:
        out[e] = names[int(stacked[e, first_step[e]].argmax())]
    return out
