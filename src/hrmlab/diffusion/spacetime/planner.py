"""The receding-horizon diffusion planner: sample N candidates, project, check, pick, follow k steps.

One `DiffusionSTPolicy` drives a batch of episodes through a closed loop (BlobWorld's in
`closed_loop.py`, BounceGrid's in `evaluate/episodes.py`): every step it gets the active episodes'
observation, agent cells and a fresh forecast, and returns their next cells. Per episode it keeps a
committed plan and

1. replans when it has none, every `replan_every` steps, or — with the check on — as soon as the fresh
   forecast says the rest of the committed plan collides;
2. to replan, samples `candidates` trajectories conditioned on the forecast (one batch over episodes
   and candidates, guided in the late steps; `sampler.py`), walks each onto legal grid moves and checks
   it with the evaluator's collision test against the forecast (`trajectory.py`); the rest of the
   committed plan competes as one more candidate, so a replan never discards a plan the check still
   accepts for a worse one;
3. picks the earliest collision-free arrival (else the collision-free candidate ending nearest the
   goal, else the one colliding latest) and moves along it;
4. falls back to the evade move (the legal move with the most room from the obstacles one step
   ahead) when the next step of its plan would collide.

With `check: false` (ablation) the pick is the earliest arrival plus the guidance cost, without the
collision test, and there is no re-check and no evade; with
`replan_every: 0` (ablation) the first checked plan is followed open loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hrmlab.diffusion.spacetime import trajectory as traj_mod
from hrmlab.diffusion.spacetime.model import STDenoiser, clearance_field
from hrmlab.diffusion.spacetime.sampler import STSamplingConfig, cost_gradient, guide_fields, sample
from hrmlab.diffusion.spacetime.trajectory import MoveRules
from hrmlab.diffusion.spacetime.worlds import obstacles_ahead
from hrmlab.forecast.base import Observation


@dataclass
class STPlannerConfig:
    """How candidates are judged and how often the plan is renewed."""

    replan_every: int = 4
    """k: renew the plan every k steps with a fresh forecast; 0 = plan once (checked) and follow it open
    loop: no re-check, no evade move (ablation)."""
    check: bool = True
    """Judge candidates with the evaluator's collision test against the forecast (and re-check the
    committed plan every step); false = pick the lowest guidance cost, never re-check (ablation)."""
    check_margin: float = 0.0
    """Cells added to the evaluator's collision radius in the check (room for forecast error)."""
    clearance_margin: float = 3.0
    """Cells: the pick's clearance cost counts points closer than this to a forecast obstacle."""
    clearance_weight: float = 0.05
    """Weight of the clearance cost against arrival time in the pick (steps per unit cost)."""
    keep_plan: bool = True
    """The rest of the committed plan is a candidate at each replan."""
    forecast_conditioning: bool = True
    """Condition the network on the forecast; false masks the tokens (ablation; guidance and check
    still use the forecast)."""


def _pad_time(obstacles: np.ndarray, length: int) -> np.ndarray:
    """(b, K, N, 2) → exactly `length` time steps (the last position repeated if K is short)."""
    if obstacles.shape[1] >= length:
        return obstacles[:, :length]
    pad = np.repeat(obstacles[:, -1:], length - obstacles.shape[1], axis=1)
    return np.concatenate([obstacles, pad], axis=1)


class DiffusionSTPolicy:
    """Receding-horizon diffusion planning for one batch of episodes (create one per closed loop)."""

    def __init__(self, model: STDenoiser, rules: MoveRules, sampling: STSamplingConfig, cfg: STPlannerConfig,
                 device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.rules, self.sampling, self.cfg = rules, sampling, cfg
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        self.horizon = model.horizon
        self.static = None
        self.replans = 0
        self.sampled = 0
        """Candidates sampled (the kept plan not counted) and how many of them passed the check: a measure
        of the network's proposals by themselves."""
        self.sampled_feasible = 0

    # ------------------------------------------------------------------------------------ state
    def _admit(self, idx: np.ndarray, static: np.ndarray) -> None:
        """Per-episode state for episodes not seen before (their static map, clearance, guidance fields)."""
        size = int(idx.max()) + 1
        if self.static is None or size > len(self.static):
            grow = lambda a, fill: np.concatenate([a, np.full((size - len(a),) + a.shape[1:], fill, a.dtype)])  # noqa: E731
            if self.static is None:
                g, t_len = static.shape[-1], self.horizon
                self.static = np.zeros((0, g, g), dtype=bool)
                self.clearance = np.zeros((0, g, g), dtype=np.float32)
                self.fields = torch.zeros((0, 3, g, g))
                self.plan = np.zeros((0, t_len, 2), dtype=np.int64)
                self.arrival = np.zeros(0, dtype=np.int64)
                self.pointer = np.zeros(0, dtype=np.int64)
                self.age = np.zeros(0, dtype=np.int64)
                self.valid = np.zeros(0, dtype=bool)
                self.seen = np.zeros(0, dtype=bool)
            self.static, self.clearance = grow(self.static, False), grow(self.clearance, 0.0)
            self.fields = torch.cat([self.fields, torch.zeros((size - len(self.fields),) + self.fields.shape[1:])])
            self.plan, self.arrival = grow(self.plan, 0), grow(self.arrival, self.horizon)
            self.pointer, self.age = grow(self.pointer, 0), grow(self.age, 0)
            self.valid, self.seen = grow(self.valid, False), grow(self.seen, False)
        new = ~self.seen[idx]
        if new.any():
            e = idx[new]
            self.static[e] = static[new]
            self.clearance[e] = clearance_field(self.static[e])
            self.fields[torch.as_tensor(e)] = guide_fields(self.clearance[e])
            self.seen[e] = True

    def __call__(self, obs: Observation, agents: np.ndarray, forecast: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Next cells (b, 2) of the active episodes `idx` (their indices in the closed loop's batch)."""
        state = obs.state
        idx = np.asarray(idx, dtype=np.int64)
        self._admit(idx, np.asarray(state.walls if hasattr(state, "walls") else state.static, dtype=bool))
        agents = np.asarray(agents, dtype=np.int64)
        goals = np.asarray(state.goal, dtype=np.int64)
        obstacles = obstacles_ahead(np.asarray(obs.history[:, :, -1], dtype=np.float64), forecast)
        radius = self.rules.collision_radius + self.cfg.check_margin
        t_len = self.horizon
        rows = np.arange(len(idx))

        closed_loop = self.cfg.replan_every > 0
        recheck = self.cfg.check and closed_loop
        need = ~self.valid[idx] | np.any(self.plan[idx, self.pointer[idx]] != agents, axis=1)
        if closed_loop:
            need |= self.age[idx] >= self.cfg.replan_every
        rest = self._rest(idx)
        if recheck:
            hit, _ = traj_mod.check_paths(rest[0], rows, rest[1], obstacles, radius, self.cfg.clearance_margin)
            need |= hit < t_len
        todo = np.flatnonzero(need)
        for lo in range(0, len(todo), self.sampling.episodes_per_batch):
            part = todo[lo:lo + self.sampling.episodes_per_batch]
            self._replan(idx[part], agents[part], goals[part], obstacles[part], rest[0][part], radius)

        nxt = self.plan[idx, np.minimum(self.pointer[idx] + 1, t_len - 1)]
        if recheck and obstacles.shape[2]:
            close = np.linalg.norm(nxt[:, None, :] - obstacles[:, 1], axis=-1).min(axis=1) < radius
            if close.any():
                e = np.flatnonzero(close)
                nxt[e] = traj_mod.evade_moves(agents[e], goals[e], self.static[idx[e]], obstacles[e, 1], self.rules)
                self.valid[idx[e]] = False
        self.pointer[idx] = np.minimum(self.pointer[idx] + 1, t_len - 1)
        self.age[idx] += 1
        return nxt

    def _rest(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The committed plans from their current point on, padded to T points, and their arrivals."""
        t_len = self.horizon
        take = np.minimum(self.pointer[idx, None] + np.arange(t_len)[None], t_len - 1)
        cells = self.plan[idx[:, None], take]
        arrival = np.maximum(self.arrival[idx] - self.pointer[idx], 0)
        return np.ascontiguousarray(cells), arrival

    # ------------------------------------------------------------------------------------ replan
    def _replan(self, episodes, agents, goals, obstacles, rest, radius) -> None:
        cfg, t_len, g = self.cfg, self.horizon, self.rules.grid_size
        b = len(episodes)
        s = self.sampling.candidates
        obstacles_t = _pad_time(obstacles, t_len)
        dev = self.device
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=dev)  # noqa: E731
        obs_t = as_t(obstacles_t)
        mask = torch.full((b,), 1.0 if cfg.forecast_conditioning and obstacles.shape[2] else 0.0, device=dev)
        with torch.no_grad():
            cond = self.model.encode(as_t(self.static[episodes]), as_t(self.clearance[episodes]), as_t(agents),
                                     as_t(goals), obs_t, mask)
            fields = self.fields[torch.as_tensor(episodes)].to(dev)
            samples = sample(self.model, cond, as_t(agents), obs_t, fields, self.sampling, self.generator)
            if not cfg.check:
                _, cost = cost_gradient(samples, obs_t, fields, self.sampling, g, with_cost=True)
        samples = samples.cpu().numpy().astype(np.float64)
        self.replans += b
        if cfg.keep_plan:
            kept = np.where(self.valid[episodes, None, None], rest, samples[:, 0])
            samples = np.concatenate([samples, kept[:, None].astype(np.float64)], axis=1)
        n = samples.shape[1]
        which = np.repeat(np.arange(b), n)
        cells, arrival = traj_mod.project_paths(samples.reshape(b * n, t_len, 2), which, agents, goals,
                                                self.static[episodes], self.rules.moves, self.rules.goal_tolerance)
        hit, clear = traj_mod.check_paths(cells, which, arrival, obstacles_t, radius, cfg.clearance_margin)
        feasible = ((hit >= t_len) & (arrival < t_len)).reshape(b, n)[:, :s]
        self.sampled += b * s
        self.sampled_feasible += int(feasible.sum())
        end = np.linalg.norm((cells[:, -1] - goals[which]).astype(np.float64), axis=-1).reshape(b, n)
        if cfg.check:
            best, _ = traj_mod.pick_candidates(arrival.reshape(b, n), hit.reshape(b, n), clear.reshape(b, n), end,
                                               t_len, cfg.clearance_weight)
        else:  # unchecked: the earliest arrival (else the nearest end), guidance cost as the clearance term
            arrive = arrival.reshape(b, n)[:, :s]
            score = np.where(arrive < t_len, arrive, t_len + end[:, :s]) + cfg.clearance_weight * cost.cpu().numpy()
            best = score.argmin(axis=1)  # the sampled candidates only: no judged plan to keep
        pick = np.arange(b) * n + best
        self.plan[episodes] = cells[pick]
        self.arrival[episodes] = arrival[pick]
        self.pointer[episodes] = 0
        self.age[episodes] = 0
        self.valid[episodes] = True
