"""What a study world evaluates, cut into units that travel: each trained run evaluates its own rows in its
training task, and the physics rules are one more unit.

WHY. A world's record needs outcomes, not checkpoints. When the task that trains a run also evaluates it (its
row, its test-time-compute rows, its learning-curve snapshots), what the task hands back is a few kB of
outcomes that the world's progress file keeps (progress.py), so a world cut off on one machine resumes on
another with no stage cache. Every forecaster runs its own closed loop on the same test episodes
(evaluate/runner.py), so a row is the same whether it is evaluated alone or beside others.
"""

from __future__ import annotations

from dataclasses import dataclass

from hrmlab.experiments.study.summary import OUTCOME_CODES


@dataclass
class RunEvaluation:
    """The rows a training task evaluates once its run is trained (picklable: it travels with the run)."""

    cfg: object
    """The world's experiment config: its world and planner."""
    eval_cfg: object
    """The evaluation: protocol, test episodes."""
    rollout: str
    """How the run's model is rolled out."""
    rows: list[tuple[str, object, float]]
    """(row label, checkpoint: "best" or the index of a snapshot, test-time compute scale) per row."""

    def key(self) -> str:
        return evaluation_key(self.cfg, self.eval_cfg, self.rows, self.rollout)


def evaluation_key(cfg, eval_cfg, rows: list, rollout: str | None = None) -> str:
    """What evaluated rows depend on besides the forecasters' weights, as the evaluation stage keys it: the world,
    the planner, the evaluation (protocol, episodes), the rows, the roll-out and the result format (a stored row
    is reused only where this code would evaluate the same thing)."""
    from hrmlab.evaluate.result import RESULT_FORMAT
    from hrmlab.stage_cache import stage_key

    rows = [list(r) if isinstance(r, tuple) else r for r in rows]  # (label, checkpoint, scale) or a physics name
    return stage_key({"world": cfg.world, "planner": cfg.planner, "eval": eval_cfg, "rows": rows,
                      "rollout": rollout}, RESULT_FORMAT)


def evaluate_trained(summary: dict, ev: RunEvaluation, opts) -> dict:
    """A trained run's rows, closed loop on the test episodes, in this process (the run's task is the unit of
    parallel work): {"rows": label → `row_outcomes`, "eval_seconds"}; cached as an evaluation stage."""
    from hrmlab.backends.local import SerialBackend
    from hrmlab.experiments.grid.stages import stage_evaluate
    from hrmlab.forecast.registry import ForecasterSpec

    specs, keys = [], {}
    for label, which, scale in ev.rows:
        if which == "best":
            checkpoint, key = summary["checkpoint"], summary["key"]
        else:
            snap = summary["snapshots"][which]
            checkpoint, key = snap["checkpoint"], f"{summary['key']}@{snap['step']}"
        specs.append(ForecasterSpec(label, checkpoint, rollout=ev.rollout, compute_scale=scale))
        keys[label] = key
    result = stage_evaluate(ev.cfg, ev.eval_cfg, ev.cfg.planner, specs, keys, opts, SerialBackend())
    return {"rows": {spec.name: row_outcomes(result.rows[spec.name]) for spec in specs},
            "eval_seconds": result.seconds}


def with_evaluation(summary: dict, ev: RunEvaluation | None, opts) -> dict:
    """A training task's result: its summary, plus its evaluated rows when it has an evaluation and trained."""
    if ev is not None and "diverged" not in summary:
        summary.update(evaluate_trained(summary, ev, opts))
    return summary


def physics_rows(cfg, eval_cfg, opts, backend, progress) -> dict:
    """The physics rules and the oracle on the test episodes, through the backend's chunks; a unit of the
    world's progress: {"rows", "episodes", "indices", "seconds"}."""
    from hrmlab.experiments.grid.stages import stage_evaluate
    from hrmlab.forecast.registry import ForecasterSpec

    names = list(cfg.physics_forecasters)
    key = evaluation_key(cfg, eval_cfg, names)
    stored = progress.get("physics", key)
    if stored is not None:
        return stored
    evaluation = stage_evaluate(cfg, eval_cfg, cfg.planner, [ForecasterSpec(n) for n in names], {}, opts, backend)
    value = {"rows": {n: row_outcomes(evaluation.rows[n]) for n in names}, "episodes": evaluation.episodes.count,
             "indices": episode_indices(evaluation.indices), "seconds": evaluation.seconds}
    progress.put("physics", key, value)
    return value


def episode_indices(indices: list[int]) -> dict | list[int]:
    """An evaluation's episode indices: {start, count} when consecutive (always, for the study's protocols)."""
    if indices and indices == list(range(indices[0], indices[0] + len(indices))):
        return {"start": indices[0], "count": len(indices)}
    return list(indices)


def encode_outcomes(labels: list[str]) -> str:
    """Per-episode outcome labels → one string of one-letter codes (`OUTCOME_CODES`)."""
    try:
        return "".join(OUTCOME_CODES[o] for o in labels)
    except KeyError as exc:
        raise ValueError(f"outcome {exc.args[0]!r} has no code in the episodes file's table") from None


def row_record(row) -> dict:
    """The figures a world record keeps of a row (an EvaluationResult row, or a stored `row_outcomes`)."""
    if isinstance(row, dict):
        return {k: row[k] for k in ("successes", "ade", "fde", "forecast_ms_per_step")}
    return {"successes": row.successes, "ade": row.forecast_ade, "fde": row.forecast_fde,
            "forecast_ms_per_step": row.forecast_ms_per_step}


def row_outcomes(row) -> dict:
    """An evaluated row as a unit keeps it: its figures, per-episode outcome codes and end steps."""
    return {**row_record(row), "outcomes": encode_outcomes(row.per_episode), "steps": row.steps}
