"""Closed-loop evaluation of planner × forecaster rows on the same episodes, in the grid evaluator's shape.

Rows are `PLANNER+FORECASTER`: `astar` (the world's space-time A*, replanning every step) or
`diffusion` (`planner.py`, replanning every k steps), each driven by the same forecaster on the same
episodes; ablation rows are `diffusion[no-guidance]+oracle` and so on. The summary is the grid
evaluator's (`evaluate.runner.summarize_chunks`), an `EvaluationResult`: per row successes, episodes,
Wilson interval, success / crash / timeout, planning and forecasting ms per step, forecast error,
per-episode outcomes, and exact McNemar tests for every pair (so each diffusion row meets A* with the
same forecaster).

Each world's own closed loop runs the rows (`evaluate/episodes.py`):

* **BounceGrid**: `run_closed_loop` — the protocol's episodes, warm-up, moves, crash-first test — with the
  diffusion policy through its `plan_fn` hook.
* **BlobWorld**: `run_blob_closed_loop` — the diffusion `standard` protocol's test episodes and rules,
  executed step by step from t = 0. A* there is BlobWorld's space-time A* (`planning/blob_astar.py`: 8
  moves + wait, clearance 3) planning on the forecast each step (`ExpertPolicy`); with no plan it takes the
  evade move.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hrmlab.config import from_dict, to_dict
from hrmlab.diffusion.spacetime.planner import DiffusionSTPolicy, STPlannerConfig
from hrmlab.diffusion.spacetime.sampler import STSamplingConfig
from hrmlab.diffusion.spacetime.trajectory import MoveRules, evade_moves
from hrmlab.diffusion.spacetime.worlds import blob_forecaster, blob_rules, grid_rules, obstacles_ahead
from hrmlab.errors import UserError
from hrmlab.evaluate.episodes import run_blob_closed_loop, run_closed_loop
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.evaluate.result import EvaluationResult
from hrmlab.evaluate.runner import ChunkResult, EvalConfig, chunk_record, summarize_chunks
from hrmlab.forecast.base import Observation
from hrmlab.forecast.registry import ForecasterSpec, build_forecaster
from hrmlab.planning import blob_astar
from hrmlab.planning.blob_astar import ExpertConfig
from hrmlab.planning.spacetime_astar import PlannerConfig, warm_up_compiled
from hrmlab.worlds import blob_world
from hrmlab.worlds.blob_world import BlobWorldConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

ABLATIONS = ("no-guidance", "no-check", "no-replan", "no-forecast")


@dataclass
class STEvalConfig:
    """Which rows, on which episodes."""

    forecasters: list[str] = field(default_factory=lambda: ["oracle", "constant-velocity"])
    """Forecasters; each drives every planner. Physics rules by name; `lstm` = the preset's trained LSTM
    (BounceGrid presets with `lstm.train`)."""
    planners: list[str] = field(default_factory=lambda: ["astar", "diffusion"])
    """Planners: astar (the world's space-time A*) and/or diffusion."""
    ablations: list[str] = field(default_factory=list)
    """Extra diffusion rows with one component off: no-guidance, no-check, no-replan, no-forecast; `a+b`
    switches off several (e.g. no-check+no-guidance: the network's own proposals)."""
    ablation_forecasters: list[str] = field(default_factory=lambda: ["oracle"])
    """Forecasters the ablation rows run with."""
    split: str = "test"
    """Episode split: test (results) or val (choosing settings)."""
    test_start: int = 0
    """First episode index."""
    test_episodes: int = 500
    """Episodes per row (the same episodes for every row)."""
    chunk_size: int = 100
    """Episodes per work item (one batched closed loop per row)."""
    max_steps: int = 80
    """BlobWorld: moves before a timeout (BounceGrid: its protocol's)."""
    collision_radius: float = blob_world.COLLISION_RADIUS
    """BlobWorld: the crash test (the diffusion protocols' obstacle radius)."""
    forecast_error: bool = False
    """Also measure each row's forecast error against the true future (slower)."""


def ablated(sampling: STSamplingConfig, planner: STPlannerConfig, ablation: str | None):
    """The sampling and planner settings of one ablation row; `a+b` switches off both."""
    if ablation is None:
        return sampling, planner
    if "+" in ablation:
        for part in ablation.split("+"):
            sampling, planner = ablated(sampling, planner, part)
        return sampling, planner
    if ablation == "no-guidance":
        return dataclasses.replace(sampling, guide_steps=0), planner
    if ablation == "no-check":
        return sampling, dataclasses.replace(planner, check=False)
    if ablation == "no-replan":
        return sampling, dataclasses.replace(planner, replan_every=0)
    if ablation == "no-forecast":
        return sampling, dataclasses.replace(planner, forecast_conditioning=False)
    raise UserError(f"unknown ablation {ablation!r}; valid choices: {', '.join(ABLATIONS)}")


@dataclass
class Row:
    name: str
    planner: str  # astar | diffusion
    forecaster: str
    ablation: str | None = None


def make_rows(cfg: STEvalConfig) -> list[Row]:
    rows = [Row(f"{p}+{f}", p, f) for f in cfg.forecasters for p in cfg.planners]
    rows += [Row(f"diffusion[{a}]+{f}", "diffusion", f, a) for f in cfg.ablation_forecasters for a in cfg.ablations]
    for r in rows:
        if r.planner not in ("astar", "diffusion"):
            raise UserError(f"unknown planner {r.planner!r}; valid choices: astar, diffusion")
        ablated(STSamplingConfig(), STPlannerConfig(), r.ablation)
    return rows


class ExpertPolicy:
    """BlobWorld's A* row: the expert space-time A* on the forecast, replanned every step."""

    def __init__(self, expert: ExpertConfig, rules: MoveRules):
        self.expert, self.rules = expert, rules

    def __call__(self, obs: Observation, agents: np.ndarray, forecast: np.ndarray, idx: np.ndarray) -> np.ndarray:
        state = obs.state
        traj = obstacles_ahead(np.asarray(obs.history[:, :, -1], dtype=np.float64), forecast)
        out = np.array(agents, dtype=np.int64)
        lost = []
        for e in range(len(agents)):
            path = blob_astar.plan(state.static[e], traj[e], agents[e], state.goal[e], self.expert)
            if path is None:
                lost.append(e)
            elif len(path) > 1:
                out[e] = path[1]
        if lost:
            e = np.asarray(lost)
            out[e] = evade_moves(out[e], state.goal[e], state.static[e], traj[e, 1], self.rules)
        return out


# ------------------------------------------------------------------------------------------ chunks


@dataclass
class STChunk:
    """One work item: every row on the same episodes (picklable for `backend.map`)."""

    world_kind: str
    world: dict
    rows: list[Row]
    indices: list[int]
    eval: dict
    sampling: dict
    planner: dict
    expert: dict | None = None
    protocol: str = "standard"
    planner_path: str | None = None
    checkpoints: dict = field(default_factory=dict)
    """Forecaster name → checkpoint of a learned forecaster."""
    device: str = "cpu"


def _forecaster(chunk: STChunk, name: str, world):
    checkpoint = chunk.checkpoints.get(name)
    if chunk.world_kind == "blob":
        return blob_forecaster(name, world, checkpoint)
    return build_forecaster(ForecasterSpec(name, checkpoint), device=chunk.device)


def evaluate_st_chunk(chunk: STChunk) -> ChunkResult:
    """Run every row of `chunk` on its episodes (top level: picklable for any backend)."""
    import torch

    from hrmlab.diffusion.spacetime.train import load_st_planner

    torch.set_num_threads(1) if chunk.device == "cpu" else None
    cfg = from_dict(STEvalConfig, chunk.eval)
    sampling = from_dict(STSamplingConfig, chunk.sampling)
    planner_cfg = from_dict(STPlannerConfig, chunk.planner)
    indices = np.asarray(chunk.indices)
    model = load_st_planner(chunk.planner_path, chunk.device)[0] if chunk.planner_path else None
    if any(r.planner == "diffusion" for r in chunk.rows) and model is None:
        raise UserError("diffusion rows need a trained space-time planner")
    result = ChunkResult(list(chunk.indices))
    if chunk.world_kind == "blob":
        world = from_dict(BlobWorldConfig, chunk.world)
        expert = from_dict(ExpertConfig, chunk.expert)
        rules = blob_rules(world, expert.goal_tolerance, cfg.collision_radius)
        horizon = max(expert.max_steps, model.horizon if model else 0)  # forecast steps ahead
        blob_astar.plan(np.zeros((8, 8), bool), np.zeros((expert.max_steps, 0, 2)), (0, 0), (7, 7), expert)  # JIT
    else:
        world = from_dict(BounceGridConfig, chunk.world)
        protocol = get_protocol(chunk.protocol)
        world = protocol.world or world
        rules = grid_rules(world, protocol.goal_radius, protocol.crash_radius)
        warm_up_compiled()
    for row in chunk.rows:
        forecaster = _forecaster(chunk, row.forecaster, world)
        if row.planner == "diffusion":
            s_cfg, p_cfg = ablated(sampling, planner_cfg, row.ablation)
            policy = DiffusionSTPolicy(model, rules, s_cfg, p_cfg, chunk.device)
        else:
            policy = ExpertPolicy(expert, rules) if chunk.world_kind == "blob" else None
        if chunk.world_kind == "blob":
            rec = run_blob_closed_loop(world, policy, forecaster, indices, horizon=horizon, max_steps=cfg.max_steps,
                                       split=cfg.split, goal_tolerance=expert.goal_tolerance,
                                       collision_radius=cfg.collision_radius, forecast_error=cfg.forecast_error)
        else:
            grid_planner = PlannerConfig() if policy is None else PlannerConfig(horizon=model.horizon - 1)
            rec = run_closed_loop(protocol, world, grid_planner, forecaster, indices,
                                  forecast_error=cfg.forecast_error, plan_fn=policy, split=cfg.split)
        result.per_forecaster[row.name] = {
            **chunk_record(rec), "replans": getattr(policy, "replans", rec.plan_calls),
            "sampled": getattr(policy, "sampled", 0), "sampled_feasible": getattr(policy, "sampled_feasible", 0),
        }
    return result


def make_chunks(world_kind: str, world, rows: list[Row], cfg: STEvalConfig, sampling: STSamplingConfig,
                planner: STPlannerConfig, expert: ExpertConfig | None, planner_path: str | None,
                checkpoints: dict, protocol: str = "standard", device: str = "cpu") -> list[STChunk]:
    indices = list(range(cfg.test_start, cfg.test_start + cfg.test_episodes))
    return [STChunk(world_kind, to_dict(world), rows, indices[i:i + cfg.chunk_size], to_dict(cfg), to_dict(sampling),
                    to_dict(planner), to_dict(expert) if expert else None, protocol, planner_path, checkpoints, device)
            for i in range(0, len(indices), cfg.chunk_size)]


def evaluate_rows(chunks: list[STChunk], backend, progress=None) -> EvaluationResult:
    """Run the chunks and summarise them with the grid evaluator's summariser (the same result type)."""
    results = []
    for res in backend.map(evaluate_st_chunk, chunks):
        results.append(res)
        if progress is not None:
            progress(len(res.indices))
    first = chunks[0]
    names = [r.name for r in first.rows]
    cfg = from_dict(STEvalConfig, first.eval)
    protocol = (first.protocol if first.world_kind == "grid" else "standard") + ("" if cfg.split == "test" else f"-{cfg.split}")
    episodes = sum(len(c.indices) for c in chunks)
    astar = PlannerConfig()
    if first.world_kind == "blob":  # the expert kernel: aligned, 64 steps, clearance 3
        expert = from_dict(ExpertConfig, first.expert)
        astar = PlannerConfig(horizon=expert.max_steps, radius=expert.clearance)
    out = summarize_chunks(EvalConfig(protocol=protocol, episodes=episodes, start=cfg.test_start), None, astar, names, results)
    out.split = cfg.split
    out.planners = {"astar": "space-time A* on the forecast, replanning every step"
                    + (" (the expert kernel: 8 moves + wait, clearance 3)" if first.world_kind == "blob"
                       else " (horizon 20, radius 1, aligned)"),
                    "diffusion": {"sampling": first.sampling, "planner": first.planner}}
    for name in names:
        row = out.rows[name]
        row.replans = int(sum(r.per_forecaster[name]["replans"] for r in results))
        seconds = sum(r.per_forecaster[name]["plan_seconds"] for r in results)
        row.plan_ms_per_replan = 1000 * seconds / max(1, row.replans)
        sampled = sum(r.per_forecaster[name]["sampled"] for r in results)
        if sampled:  # diffusion rows: share of sampled candidates that passed the evaluator's check
            row.candidates_feasible = sum(r.per_forecaster[name]["sampled_feasible"] for r in results) / sampled
    return out


def paired_with_astar(evaluation: EvaluationResult) -> list:
    """The McNemar tests that matter: each diffusion row against A* with the same forecaster, and each
    ablation row against the full diffusion row with the same forecaster."""
    out = []
    for p in evaluation.pairwise:
        (pa, fa), (pb, fb) = p.a.rsplit("+", 1), p.b.rsplit("+", 1)
        if fa != fb:
            continue
        if {pa, pb} == {"astar", "diffusion"} or (pa == "diffusion" and pb.startswith("diffusion[")):
            out.append(p)
    return out


def format_rows(evaluation: EvaluationResult) -> str:
    """Plain-text table of the rows and the paired tests that matter (console, docs)."""
    rows = evaluation.rows
    width = max(len(n) for n in rows) + 2
    lines = [f"protocol {evaluation.protocol} · {evaluation.episodes.count} episodes from {evaluation.episodes.start}",
             f"{'row':<{width}}{'success':>12}{'rate':>8}{'95% CI':>16}{'crash':>7}{'timeout':>8}"
             f"{'ms/step':>9}{'ms/replan':>11}{'feasible':>10}"]
    for name, r in rows.items():
        ci = f"[{100 * r.ci95[0]:.1f}, {100 * r.ci95[1]:.1f}]"
        per_replan = r.plan_ms_per_replan if r.plan_ms_per_replan is not None else r.plan_ms_per_step
        lines.append(f"{name:<{width}}{r.successes:>6}/{r.episodes:<5}{100 * r.success_rate:>7.1f}%{ci:>16}"
                     f"{r.outcomes['crash']:>7}{r.outcomes['timeout']:>8}{r.plan_ms_per_step:>9.2f}{per_replan:>11.2f}"
                     + (f"{100 * r.candidates_feasible:>9.1f}%" if r.candidates_feasible is not None else f"{'—':>10}"))
    pairs = paired_with_astar(evaluation)
    if pairs:
        lines += ["", "paired exact McNemar tests, same forecaster (a-only / b-only successes):"]
        lines += [f"  {p.a:<{width}} vs {p.b:<{width}} {p.a_only:>4} / {p.b_only:<4} p = {p.p_value:.3g}" for p in pairs]
    return "\n".join(lines)
