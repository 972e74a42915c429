"""Evaluation of the diffusion planner and its baselines on BlobWorld (SPEC §8), paired per episode.

Methods, all on the same episodes: `diffusion` (best of N refined samples), `diffusion-raw` (best of the
same N samples before refinement), `line` (straight start → goal), `line+refine` (the line through the
same refinement, no network) and `oracle` (the expert space-time A* with perfect knowledge).

Protocols (BlobWorld's path rules, `worlds/blob_world.py`):

* `seed` — the original evaluation: legacy seeds 1000–1049, open loop, each path checked by
  `check_seed_protocol`. The oracle "succeeds" when a plan exists (it is not executed, as in the seed).
* `standard` — held-out test-split episodes, every path executed on the grid by `execute_standard`
  (cell k at time k; infeasible, off-map, disc, collision and not-at-goal failures). The oracle's own
  path is executed the same way.

Each method reports successes, a 95% Wilson interval, outcomes by first failure, and planning time;
every pair of methods gets an exact McNemar test — `evaluate/result.summarize`, the grid's summariser,
so the result is the same `EvaluationResult`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from hrmlab.diffusion.noise import PathDiffusion
from hrmlab.diffusion.refine import distance_field, refine_paths
from hrmlab.diffusion.sample import SamplingConfig, line_paths, plan_with_diffusion
from hrmlab.errors import UserError
from hrmlab.evaluate.result import EvaluationResult, summarize
from hrmlab.planning import blob_astar
from hrmlab.planning.blob_astar import ExpertConfig
from hrmlab.worlds import blob_world
from hrmlab.worlds.blob_world import PATH_OUTCOMES, BlobWorldConfig, check_seed_protocol, execute_standard

log = logging.getLogger(__name__)

METHODS = ("diffusion", "diffusion-raw", "line", "line+refine", "oracle")


@dataclass
class DiffusionEvalConfig:
    """Which protocols to run and on how many episodes."""

    protocols: list[str] = field(default_factory=lambda: ["standard", "seed"])
    """Protocols to run, in order; the first is the run's primary (headline) protocol: standard, seed."""
    seed_first: int = blob_world.SEED_FIRST
    """First legacy seed of the seed protocol (the original: 1000)."""
    seed_episodes: int = 50
    """Episodes of the seed protocol (the original: 50, seeds 1000–1049)."""
    test_episodes: int = 500
    """Test-split episodes of the standard protocol."""
    collision_radius: float = blob_world.COLLISION_RADIUS
    """A point closer than this to an obstacle fails (the seed: the obstacle radius 2)."""
    records: int = 2
    """Episodes per protocol saved as .npz records for the report's animations (0: none)."""


def protocol_episodes(protocol: str, world: BlobWorldConfig, cfg: DiffusionEvalConfig) -> tuple:
    """(state at t = 0, human-readable description of the episode set)."""
    if protocol == "seed":
        seeds = range(cfg.seed_first, cfg.seed_first + cfg.seed_episodes)
        return blob_world.reset_seed_exact(world, seeds), f"legacy seeds {seeds.start}–{seeds.stop - 1}"
    if protocol == "standard":
        return (blob_world.reset_split(world, "test", np.arange(cfg.test_episodes)),
                f"test split, episodes 0–{cfg.test_episodes - 1}")
    raise UserError(f"unknown diffusion protocol {protocol!r}; valid choices: seed, standard")


def evaluate_protocol(protocol: str, world: BlobWorldConfig, expert: ExpertConfig, sampling: SamplingConfig,
                      cfg: DiffusionEvalConfig, planner=None, noise_cfg=None, path_points: int = 64,
                      progress: bool = False, record_dir=None, records: int = 0) -> EvaluationResult:
    """Run every method on the protocol's episodes; `planner` (a PlannerModule) None skips diffusion.

    With `record_dir` and `records` > 0, that many episodes (those where diffusion and line+refine
    disagree first) are saved as `.npz` records for `hrmlab.report.animate.render_diffusion`; their
    file names are listed under the result's `records`."""
    state, description = protocol_episodes(protocol, world, cfg)
    occupancy = blob_world.occupancy_grid(world, state)
    field_ = distance_field(occupancy)
    paths: dict[str, object] = {}
    seconds: dict[str, float] = {}
    samples = None

    t0 = time.perf_counter()
    line = line_paths(state.start, state.goal, path_points)
    paths["line"] = line
    seconds["line"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths["line+refine"] = refine_paths(line, field_, sampling.refine_steps, sampling.refine_step_size,
                                        sampling.clearance_margin)
    seconds["line+refine"] = time.perf_counter() - t0
    if planner is not None:
        t0 = time.perf_counter()
        out = plan_with_diffusion(planner.denoiser, PathDiffusion(noise_cfg), occupancy, state.start, state.goal,
                                  sampling, path_points, world.map_size, progress=progress)
        paths["diffusion"], paths["diffusion-raw"] = out["paths"], out["raw_paths"]
        samples = out["samples"]
        seconds["diffusion"] = seconds["diffusion-raw"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    oracle = blob_astar.plan_episodes(world, state, expert)
    seconds["oracle"] = time.perf_counter() - t0

    outcomes: dict[str, np.ndarray] = {}
    steps: dict[str, np.ndarray] = {}
    order = [m for m in METHODS if m in paths or m == "oracle"]
    for name in order:
        if name == "oracle":
            if protocol == "seed":
                outcomes[name] = np.array(["success" if p is not None else "no_plan" for p in oracle], dtype=object)
                steps[name] = np.array([0 if p is None else len(p) - 1 for p in oracle])
            else:
                outcomes[name], steps[name] = execute_standard(oracle, world, state, cfg.collision_radius,
                                                               expert.goal_tolerance)
        elif protocol == "seed":
            outcomes[name] = check_seed_protocol(np.asarray(paths[name]), world, state, cfg.collision_radius)
            steps[name] = np.full(state.batch, path_points - 1)
        else:
            outcomes[name], steps[name] = execute_standard(list(np.asarray(paths[name])), world, state,
                                                           cfg.collision_radius, expert.goal_tolerance)
    first = cfg.seed_first if protocol == "seed" else 0
    result = summarize(outcomes, protocol=protocol, indices=range(first, first + state.batch), vocabulary=PATH_OUTCOMES,
                       steps=steps, description=description)
    for name, row in result.rows.items():
        row.plan_ms_per_episode = 1000 * seconds.get(name, 0.0) / max(1, row.episodes)
    if record_dir is not None and records > 0 and "diffusion" in paths:
        result.records = write_records(record_dir, protocol, world, state, paths["diffusion"], samples, oracle,
                                       outcomes, records, cfg.collision_radius)
    return result


def write_records(record_dir, protocol: str, world: BlobWorldConfig, state: blob_world.BlobState,
                  best: np.ndarray, samples: np.ndarray, oracle: list, outcomes: dict, count: int,
                  radius: float) -> list[str]:
    """Save `count` episodes as render_diffusion records; returns the file names."""
    from pathlib import Path

    record_dir = Path(record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    disagree = outcomes["diffusion"] != outcomes["line+refine"]
    order = np.concatenate([np.nonzero(disagree)[0], np.nonzero(~disagree)[0]])[:count]
    length = best.shape[1]
    offset = 1 if protocol == "seed" else 0  # point k is checked after k + offset physics steps
    traj = blob_world.trajectory(world, state, length + offset)[:, offset:offset + length]
    names = []
    for e in order:
        e = int(e)
        record = {"static": state.static[e], "obstacles": traj[e], "samples": samples[e], "best": best[e],
                  "start": state.start[e], "goal": state.goal[e], "radius": np.float64(radius),
                  "title": f"{protocol} episode {e}: diffusion {outcomes['diffusion'][e]}, "
                           f"line+refine {outcomes['line+refine'][e]}",
                  "outcome": str(outcomes["diffusion"][e])}
        if oracle[e] is not None:
            record["oracle"] = oracle[e]
        name = f"{protocol}-episode-{e:04d}.npz"
        np.savez(record_dir / name, **record)
        names.append(name)
    return names


def format_table(result: EvaluationResult) -> str:
    """Plain-text table of one protocol's results (for logs and the report)."""
    lines = [f"protocol {result.protocol} — {result.episodes.description}",
             f"{'method':<14} {'success':>9} {'rate':>6}  {'95% CI':<15} outcomes"]
    for name, r in result.rows.items():
        lo, hi = r.ci95
        other = ", ".join(f"{k} {v}" for k, v in r.outcomes.items() if k != "success" and v)
        lines.append(f"{name:<14} {r.successes:>4}/{r.episodes:<4} {100 * r.success_rate:>5.1f}%  "
                     f"[{100 * lo:4.1f}, {100 * hi:5.1f}]  {other}")
    return "\n".join(lines)
