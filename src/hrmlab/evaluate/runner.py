"""Paired evaluation of several forecasters on the same episodes, and its summary.

Work is cut into chunks of episodes; each chunk is a picklable `ChunkSpec` run by `evaluate_chunk`, so
the same code runs serially, on a local process pool, or on Modal containers through `backend.map`.
Forecasters travel as `ForecasterSpec`s (a name plus, for learned models, a checkpoint path) and are
built inside the worker; outside policies likewise as `PolicySpec`s ("module:factory", see
`hrmlab.policies`), run through the same closed loop and reported in the same table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hrmlab.config import NOT_IN_KEY
from hrmlab.errors import UserError
from hrmlab.evaluate.episodes import OUTCOMES, SUCCESS, run_closed_loop
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.evaluate.result import EvaluationResult, summarize
from hrmlab.forecast.registry import ForecasterSpec, build_forecaster
from hrmlab.planning.spacetime_astar import PlannerConfig, warm_up_compiled
from hrmlab.policies import PolicySpec, build_policy
from hrmlab.worlds.bounce_grid import BounceGridConfig


@dataclass
class EvalConfig:
    """What to evaluate and how to cut the work."""

    protocol: str = "standard"
    """seed-v1 | seed-v2 | seed-v3 | seed-v4 | standard (SPEC §7)."""
    episodes: int = 1000
    """Episodes per forecaster (the same episodes for all)."""
    start: int = 0
    """First episode index (seed protocols: episode s uses the original's seed s + offset)."""
    chunk_size: int = field(default=250, metadata=NOT_IN_KEY)
    """Episodes per work item (one batched closed loop)."""
    forecast_error: bool = True
    """Also measure forecast ADE/FDE against the true future at every planning step."""


@dataclass
class ChunkSpec:
    protocol: str
    world: BounceGridConfig
    planner: PlannerConfig
    forecasters: list[ForecasterSpec]
    indices: list[int]
    forecast_error: bool = True
    device: str = "cpu"
    policies: list[PolicySpec] = field(default_factory=list)


@dataclass
class ChunkResult:
    indices: list[int]
    per_forecaster: dict = field(default_factory=dict)  # name → dict of arrays and timings


def evaluate_chunk(spec: ChunkSpec) -> ChunkResult:
    """Run every forecaster of `spec` on the chunk's episodes (top-level: picklable for any backend)."""
    protocol = get_protocol(spec.protocol)
    # policies are built first: a factory that raises stops the evaluation before any episode runs
    policies = [(pspec.name, build_policy(pspec)) for pspec in spec.policies]
    warm_up_compiled()  # keep JIT compilation out of the planning-time figures
    indices = np.asarray(spec.indices)
    result = ChunkResult(list(spec.indices))
    for fspec in spec.forecasters:
        forecaster = build_forecaster(fspec, device=spec.device)
        rec = run_closed_loop(protocol, spec.world, spec.planner, forecaster, indices,
                              forecast_error=spec.forecast_error)
        result.per_forecaster[fspec.name] = chunk_record(rec)
    for name, policy in policies:
        rec = run_closed_loop(protocol, spec.world, spec.planner, None, indices,
                              forecast_error=False, policy=policy, policy_name=name)
        result.per_forecaster[name] = chunk_record(rec)
    return result


def chunk_record(rec) -> dict:
    """What a chunk keeps of one row's closed-loop records (merged across chunks by `summarize_chunks`)."""
    return {"outcome": rec.outcome, "steps": rec.steps, "plan_seconds": rec.plan_seconds,
            "forecast_seconds": rec.forecast_seconds, "plan_calls": rec.plan_calls,
            "ade_sum": rec.ade_sum, "ade_count": rec.ade_count}


def make_chunks(cfg: EvalConfig, world: BounceGridConfig, planner: PlannerConfig,
                forecasters: list[ForecasterSpec], device: str = "cpu",
                policies: list[PolicySpec] | None = None) -> list[ChunkSpec]:
    indices = list(range(cfg.start, cfg.start + cfg.episodes))
    return [ChunkSpec(cfg.protocol, world, planner, forecasters, indices[i:i + cfg.chunk_size],
                      cfg.forecast_error, device, list(policies or []))
            for i in range(0, len(indices), cfg.chunk_size)]


def evaluate(cfg: EvalConfig, world: BounceGridConfig, planner: PlannerConfig,
             forecasters: list[ForecasterSpec], backend, device: str = "cpu", progress=None,
             policies: list[PolicySpec] | None = None) -> EvaluationResult:
    """Evaluate all forecasters (and outside policies) on the same episodes (see `summarize_chunks`)."""
    protocol = get_protocol(cfg.protocol)  # fail fast on a bad name
    policies = list(policies or [])
    names = [f.name for f in forecasters] + [p.name for p in policies]
    if len(set(names)) != len(names):
        raise UserError(f"forecaster and policy names must be unique, got {', '.join(names)}")
    if policies and protocol.one_shot:
        raise UserError(f"protocol {protocol.name} is one-shot (one plan from the start); policies need a "
                        "closed-loop protocol")
    chunks = make_chunks(cfg, world, planner, forecasters, device, policies)
    results = []
    for res in backend.map(evaluate_chunk, chunks):
        results.append(res)
        if progress is not None:
            progress(len(res.indices))
    out = summarize_chunks(cfg, world, planner, names, results)
    out.policies = {p.name: p.target for p in policies}
    return out


def _merge(results: list[ChunkResult], names: list[str]) -> dict:
    merged = {}
    for name in names:
        parts = [r.per_forecaster[name] for r in results]
        merged[name] = {
            "outcome": np.concatenate([p["outcome"] for p in parts]),
            "steps": np.concatenate([p["steps"] for p in parts]),
            "plan_seconds": sum(p["plan_seconds"] for p in parts),
            "forecast_seconds": sum(p["forecast_seconds"] for p in parts),
            "plan_calls": sum(p["plan_calls"] for p in parts),
            "ade_sum": np.sum([p["ade_sum"] for p in parts], axis=0),
            "ade_count": sum(p["ade_count"] for p in parts),
        }
    return merged


def summarize_chunks(cfg: EvalConfig, world: BounceGridConfig, planner: PlannerConfig, names: list[str],
              results: list[ChunkResult]) -> EvaluationResult:
    """`result.summarize` of the merged chunks, plus what the closed loop measures: path length vs the
    oracle, planning and forecasting time per step, forecast error by horizon step."""
    merged = _merge(results, names)
    indices = [i for r in results for i in r.indices]
    out = summarize({name: [OUTCOMES[o] for o in merged[name]["outcome"]] for name in names},
                    protocol=cfg.protocol, indices=indices, vocabulary=OUTCOMES,
                    steps={name: merged[name]["steps"] for name in names})
    out.episodes.start = cfg.start
    out.planner = {"time_index": planner.time_index, "horizon": planner.horizon, "radius": planner.radius}
    oracle = merged.get("oracle")
    for name in names:
        m, row = merged[name], out.rows[name]
        row.plan_ms_per_step = 1000 * m["plan_seconds"] / max(1, m["plan_calls"])
        row.forecast_ms_per_step = 1000 * m["forecast_seconds"] / max(1, m["plan_calls"])
        if oracle is not None:
            both = (m["outcome"] == SUCCESS) & (oracle["outcome"] == SUCCESS)
            row.path_length_vs_oracle = (float(np.mean(m["steps"][both] / np.maximum(1, oracle["steps"][both])))
                                         if both.any() else None)
        if m["ade_count"]:
            per_step = m["ade_sum"] / m["ade_count"]
            row.forecast_ade = float(per_step.mean())
            row.forecast_fde = float(per_step[-1])
            row.forecast_error_by_step = [float(v) for v in per_step]
    return out


def format_table(results: EvaluationResult) -> str:
    """A plain-text table of an evaluation (console and report)."""
    lines = [f"protocol {results.protocol} · planner time_index={results.planner.get('time_index')} · "
             f"{results.episodes.count} episodes"]
    header = f"{'forecaster':<22}{'success':>14}{'rate':>8}{'95% CI':>16}{'crash':>7}{'timeout':>8}{'len/oracle':>11}{'ADE':>7}{'plan ms':>9}"
    lines.append(header)
    lines.append("-" * len(header))
    for name, r in results.rows.items():
        ratio, ade = r.path_length_vs_oracle, r.forecast_ade
        lines.append(
            f"{name:<22}{r.successes:>7}/{r.episodes:<6}{100 * r.success_rate:>7.1f}%"
            f"{'[' + format(100 * r.ci95[0], '.1f') + ', ' + format(100 * r.ci95[1], '.1f') + ']':>16}"
            f"{r.outcomes.get('crash', 0):>7}{r.outcomes.get('timeout', 0):>8}"
            f"{(format(ratio, '.3f') if ratio is not None else '—'):>11}{(format(ade, '.3g') if ade is not None else '—'):>7}"
            f"{r.plan_ms_per_step or 0.0:>9.3f}")
    if results.pairwise:
        lines.append("")
        lines.append("paired exact McNemar tests (a-only / b-only successes, two-sided p):")
        for p in results.pairwise:
            lines.append(f"  {p.a:>20} vs {p.b:<20} {p.a_only:>5} / {p.b_only:<5} p={p.p_value:.3g}")
    return "\n".join(lines)


@dataclass
class EvaluateSettings:
    """`hrmlab evaluate`: the world, the planner and the evaluation (all `--set`-able)."""

    world: BounceGridConfig = field(default_factory=BounceGridConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
