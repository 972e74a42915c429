"""Learning curves (`hrmlab study --budgets 1,2,4,8`, issue 30): does more training close the gap to the oracle?

A budget b is b × S optimiser steps, S the budget-1 step count of the study's equal recipe in that world (epochs ×
steps per epoch, capped by max_steps). Data are held: budget b passes b times over the same training set, each
epoch in its own seeded order. One long run per (arm, seed) gives every budget of the curve: the learning rate is
constant (no schedule that depends on the run's length), so the first b·S steps of the long run are step for step
those of a run trained to budget b alone, and the trainer writes a snapshot at each b·S (TrainConfig.snapshot_steps).
A budget point evaluates that snapshot: an exponential moving average of the weights (decay `SNAPSHOT_EMA`) at its
step — one rule for every point, arm and seed, doing what annealing the rate would, without a schedule that ends.

Each arm's rate is chosen at budget 1 on the snapshot's validation loss by selection seeds that are never evaluated
(`run.select_rates`, the grid extended at an edge); evaluated seeds train fresh. A long run's task evaluates its
snapshots closed loop right after it trains (the grid pipeline's `stage_evaluate`, in the task), on the same test
episodes as the physics rules and the oracle, so what it hands back is outcomes, not checkpoints: each finished
unit goes into the world's progress file (`progress.py`) and a world of many hours resumes on a fresh machine.
A capacity point trains the best arm at one budget with its width doubled (its own rate selection).
`scaling.py` turns the stored records into docs/scaling.md and its plots.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from hrmlab.config import changed_dict, config_hash
from hrmlab.errors import UserError
from hrmlab.experiments.study.config import Arm, StudyConfig, arm_configs, with_recipe
from hrmlab.experiments.study.evaluation import RunEvaluation, physics_rows, row_record
from hrmlab.experiments.study.run import (WallLedger, check_study, episodes_path, episodes_text,
                                          longest_first, read_episodes, read_results, select_rates)
from hrmlab.fileio import write_json_atomic, write_text_atomic

log = logging.getLogger("hrmlab.study.budgets")

CURVE_FORMAT = 1
"""Format of the learning-curve results file, its world records and the long-run stages' keys."""
KIND = "learning-curves"
"""The results file's `kind`: a study results file (docs/study.json) is refused as --json, and vice versa."""
SNAPSHOT_EMA = 0.995
"""Decay of the weight average every budget point evaluates: a memory of ~200 steps, under a tenth of a
suite's budget-1 run (2,421 direct steps), so budget 1 is not an average over the untrained start."""
CAPACITY_WIDTH = 2
"""The capacity point's width multiple."""
WIDTH_FIELDS = {"lstm": "hidden", "hrm": "d_model", "hrm-act": "d_model", "trm": "d_model"}
"""Model kind → the architecture field that is its width."""
DEFAULT_OUT = Path("docs/scaling.md")


@dataclass
class CurveConfig:
    """The learning-curve settings on top of the study's (`StudyConfig`: worlds, arms, rates, seeds, episodes)."""

    budgets: list[int]
    """Multiples of the budget-1 optimiser steps, increasing (`--budgets 1,2,4,8`)."""
    capacity_budget: int = 0
    """Train the best arm at this budget (one of `budgets`) at width ×CAPACITY_WIDTH too; 0: no capacity point."""
    ema: float = SNAPSHOT_EMA


def curve_study_defaults() -> dict:
    """`hrmlab study --budgets`: the issue's world and models unless --only / --models say otherwise (the LSTM
    rolled out stateful is the study's default stateful arm)."""
    return {"worlds": ["suite-clockwork"], "models": ["hrm-act", "trm"]}


def parse_budgets(text: str) -> list[int]:
    """`--budgets 1,2,4,8` → [1, 2, 4, 8]; anything but increasing positive integers is one clear error."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        budgets = [int(t) for t in items]
    except ValueError:
        raise UserError(f"--budgets takes comma-separated whole numbers (multiples of the budget-1 optimiser steps), "
                        f"e.g. 1,2,4,8; got {text!r}") from None
    if not budgets or min(budgets) < 1:
        raise UserError(f"--budgets must be positive whole numbers, e.g. 1,2,4,8; got {text!r}")
    if budgets != sorted(set(budgets)):
        raise UserError(f"--budgets must be increasing with no repeats, e.g. 1,2,4,8; got {text!r}")
    return budgets


def check_curves(curves: CurveConfig, study: StudyConfig) -> None:
    if curves.capacity_budget and curves.capacity_budget not in curves.budgets:
        raise UserError(f"--capacity-budget {curves.capacity_budget} is not one of --budgets "
                        f"{','.join(map(str, curves.budgets))}: the wider model is compared at a budget on the curve")
    if curves.capacity_budget < 0:
        raise UserError(f"--capacity-budget must be >= 0 (0: none), got {curves.capacity_budget}")
    for arm in study.arms():
        if arm.model not in WIDTH_FIELDS and curves.capacity_budget:
            raise UserError(f"--capacity-budget: {arm.model} has no width field ({', '.join(WIDTH_FIELDS)} have)")


# ------------------------------------------------------------------------------------------ recipes and stages
def widen(cfg, model: str, factor: int):
    """`cfg` with `model`'s width (WIDTH_FIELDS) multiplied by `factor`."""
    section = model.replace("-", "_")
    arch = getattr(cfg, section)
    name = WIDTH_FIELDS[model]
    return dataclasses.replace(cfg, **{section: dataclasses.replace(arch, **{name: getattr(arch, name) * factor})})


def base_steps(cfg, model: str, data_paths) -> int:
    """S: the optimiser steps of `model`'s recipe in this world (budget 1), as the trainer counts them."""
    from hrmlab.data.dataset import open_dataset
    from hrmlab.forecast.learned import TRAINED_FOR

    future = cfg.planner.horizon if TRAINED_FOR[cfg.forecast.rollout] == "direct" else 1
    samples = len(open_dataset(data_paths, "train", history=cfg.data.history, future=future))
    recipe = cfg.train_config(model)
    total = recipe.epochs * (samples // recipe.batch_size)
    return min(total, recipe.max_steps) if recipe.max_steps else total


def curve_recipe(cfg, model: str, steps: int, budgets: list[int], lr: float, seed: int, ema: float):
    """`cfg` with `model` trained to the largest budget at a constant `lr`, a snapshot at every budget. epochs and
    max_steps are the recipe's × the largest budget, so the run is budgets[-1] × `steps` steps long; no early stop
    (a long run must reach every budget); one torch thread (a pool worker's, part of the key)."""
    recipe, top = cfg.train_config(model), budgets[-1]
    return with_recipe(cfg, model, lr=lr, seed=seed, cpu_threads=1, schedule="constant", epochs=top * recipe.epochs,
                       max_steps=top * recipe.max_steps if recipe.max_steps else 0, early_stopping_patience=0,
                       snapshot_steps=[b * steps for b in budgets], snapshot_ema=ema)


def curve_key(cfg, model: str) -> str:
    """The long run's stage key: the training key plus the snapshots (steps and weight average), which the
    training key leaves out because they do not change training."""
    from hrmlab.experiments.grid.stages import train_key

    recipe = cfg.train_config(model)
    return config_hash({"format": CURVE_FORMAT, "train": train_key(cfg, model),
                        "snapshot_steps": list(recipe.snapshot_steps), "snapshot_ema": recipe.snapshot_ema})


def stage_curve_train(cfg, model: str, data_paths, opts) -> dict:
    """Train one run with snapshots (or reuse it): the grid training stage under `curve_key`, its done marker
    holding the checksums of best.pt and every snapshot; an interrupted run resumes from its last.pt."""
    from hrmlab.experiments.grid.stages import TrainJob, model_dir, run_train_job
    from hrmlab.stage_cache import Stage, cached

    key = curve_key(cfg, model)
    folder = model_dir(opts.cache, model, key)
    stage = Stage(f"train/{model} (snapshots)", folder / "summary.json", key, folder=folder)

    def train() -> dict:
        t0 = time.perf_counter()
        job = TrainJob(model, cfg.model_config(model), cfg.train_config(model), cfg.world, cfg.data, data_paths,
                       folder, 0, cfg.hardware.gpus, cfg.device, opts.progress, cfg.forecast.rollout,
                       cfg.planner.horizon)
        summary = run_train_job(job)
        written, wanted = [s["step"] for s in summary.get("snapshots", [])], cfg.train_config(model).snapshot_steps
        if written != list(wanted):
            raise RuntimeError(f"{folder}: snapshots at steps {written}, expected {wanted}")
        summary["seconds"] = round(time.perf_counter() - t0 + (summary.get("earlier_seconds") or 0.0), 1)
        summary["key"] = key
        return summary

    return cached(stage, train, files=lambda s: [s["checkpoint"], *(x["checkpoint"] for x in s["snapshots"])])


@dataclass
class CurveRun:
    """One long (or budget-1) training run, and the evaluation of its snapshots (picklable: it runs in a worker
    process, a Slurm task)."""

    cfg: object
    model: str
    data_paths: object
    opts: object
    name: str = ""
    evaluation: RunEvaluation | None = None
    """Its snapshots' rows (checkpoint: the snapshot's index), evaluated in the task once trained."""


def curve_run(run: CurveRun) -> dict:
    """One run (its summary, plus the evaluated rows of its snapshots when `run.evaluation`); divergence comes
    back as a result, so a candidate rate that blows up loses the selection."""
    from hrmlab.errors import TrainingDiverged
    from hrmlab.experiments.study.evaluation import with_evaluation

    try:
        summary = stage_curve_train(run.cfg, run.model, run.data_paths, run.opts)
    except TrainingDiverged as exc:
        log.warning("%s diverged: %s", run.name, exc)
        return {"diverged": str(exc), "best_val_loss": None}
    return with_evaluation(summary, run.evaluation, run.opts)


class CurveTrainer:
    """Trains (arm, lr, seed) runs of one world to given budgets through the backend, costliest model first, and
    remembers every summary (the world's compute time). A unit the world's `progress` holds under the same stage
    key is not run again; each unit that finishes is recorded there as it comes back. As `select_rates`' trainer
    (`select`) it trains budget 1 and reports the budget-1 snapshot's validation loss: the weights that budget
    evaluates."""

    def __init__(self, cfgs: dict, steps: dict, data_paths, opts, backend, ema: float, progress=None):
        from hrmlab.experiments.study.progress import Progress

        self.cfgs, self.steps, self.data_paths, self.opts, self.backend = cfgs, steps, data_paths, opts, backend
        self.ema = ema
        self.progress = progress if progress is not None else Progress(None, "")
        self.done: list[dict] = []

    def train_to(self, runs: list[tuple[Arm, float, int]], budgets: list[int], evaluations: dict | None = None) -> dict:
        """Each run's portable summary; `evaluations` maps a run to the `RunEvaluation` its task does after
        training (the long runs)."""
        from hrmlab.backends import as_completed
        from hrmlab.experiments.study.progress import run_units

        tasks = []
        for run in longest_first(runs):
            arm, lr, s = run
            cfg = curve_recipe(self.cfgs[arm.name], arm.model, self.steps[arm.name], budgets, lr, s, self.ema)
            ev = (evaluations or {}).get(run)
            name = f"{arm.name}-lr{lr:g}-s{s}-b{budgets[-1]}"
            unit, key = name + ("-evaluated" if ev else ""), curve_key(cfg, arm.model)
            if ev is not None:  # its rows depend on the evaluation too
                key = config_hash({"train": key, "evaluation": ev.key()})
            job = CurveRun(cfg, arm.model, self.data_paths, dataclasses.replace(self.opts, progress=False), name, ev)
            tasks.append((run, unit, key, job))
        out = run_units(self.progress, tasks, lambda jobs: as_completed(self.backend, curve_run, jobs))
        self.done.extend(out.values())
        return out

    def select(self, runs: list[tuple[Arm, float, int]]) -> dict:
        out = self.train_to(runs, [1])
        return {run: s if "diverged" in s else {**s, "best_val_loss": s["snapshots"][0]["val_loss"]}
                for run, s in out.items()}


def training_flops(cfg, model: str, data_paths) -> int:
    """FLOPs of one training step of `model` at its recipe's batch (forward and backward of the loss it trains
    on, deep supervision included), counted by torch.utils.flop_counter.FlopCounterMode on a batch of this
    world's training data: matrix products, convolutions and attention; element-wise work and the optimiser
    are not counted. oneDNN is off while counting: its fused LSTM kernel is invisible to the counter (the
    LSTM's FLOPs are those of the same matrix products either way)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hrmlab.data.dataset import open_dataset
    from hrmlab.forecast.learned import TRAINED_FOR
    from hrmlab.forecast.models import build_model
    from hrmlab.train.trainer import mse_loss

    future = cfg.planner.horizon if TRAINED_FOR[cfg.forecast.rollout] == "direct" else 1
    source = open_dataset(data_paths, "train", history=cfg.data.history, future=future)
    batch = min(cfg.train_config(model).batch_size, len(source))
    arrays = source.get_batch(np.arange(batch))
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)).float() for a in arrays)
    net = build_model(cfg.model_config(model), seed=0)
    net.train()
    with warnings.catch_warnings():  # toggling oneDNN warns about Intel-GPU TF32, which is not used here
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            mse_loss(net, tensors).backward()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------ plan
def plan(arms: list[Arm], steps: dict, study: StudyConfig, curves: CurveConfig) -> dict:
    """How much training a world's curves take: runs and optimiser steps (selection at budget 1, long runs to the
    largest budget, and the capacity point at the costliest arm's steps as an upper bound; grid extensions, which
    happen only when a choice sits at an edge, as the most they can add)."""
    rates, k = len(study.lrs), study.selection_seeds
    top = curves.budgets[-1]
    out = {"selection_runs": len(arms) * rates * k, "extension_runs_at_most": len(arms) * k * study.grid_extensions,
           "long_runs": len(arms) * study.seeds, "steps_per_budget": dict(steps)}
    total = sum(steps[a.name] * (rates * k + top * study.seeds) for a in arms)
    extensions = sum(steps[a.name] * k * study.grid_extensions for a in arms)
    if curves.capacity_budget:
        out["capacity_runs"] = rates * k + study.seeds
        total += max(steps.values()) * (rates * k + curves.capacity_budget * study.seeds)
    out.update(steps=total, extension_steps_at_most=extensions)
    return out


def plan_line(world: str, p: dict) -> str:
    per = ", ".join(f"{name} {s:,}" for name, s in p["steps_per_budget"].items())
    cap = f"; capacity point: {p['capacity_runs']} runs" if "capacity_runs" in p else ""
    return (f"curves {world}: {p['selection_runs']} selection runs at budget 1 (+ at most "
            f"{p['extension_runs_at_most']} grid extensions), {p['long_runs']} long runs{cap}: {p['steps']:,} optimiser steps (+ at most "
            f"{p['extension_steps_at_most']:,}); steps per budget: {per}")


# ------------------------------------------------------------------------------------------ a world
def label(arm: Arm, seed: int, budget: int) -> str:
    """The evaluation row of one budget point (`trm@s1@b4`)."""
    return f"{arm.label(seed)}@b{budget}"


def curve_world(preset: str, study: StudyConfig, curves: CurveConfig, opts, overrides=(), smoke: bool = False,
                backend=None, progress=None) -> tuple[dict, dict]:
    """Evaluate the physics rules, select rates at budget 1, train every evaluated seed to the largest budget and
    evaluate each budget; then the capacity point. Returns the world's record (results file) and its per-episode
    outcomes (episodes file). progress: the world's `Progress` (finished units are not run again)."""
    from hrmlab.experiments.grid.stages import stage_data
    from hrmlab.experiments.study.progress import Progress

    progress = progress if progress is not None else Progress(None, "")
    by_rollout = arm_configs(preset, study, overrides, smoke)
    arms = study.arms()
    cfgs = {arm.name: by_rollout[arm.rollout] for arm in arms}
    base = cfgs[arms[0].name]
    data_paths = stage_data(base, opts, backend)
    steps = {arm.name: base_steps(cfgs[arm.name], arm.model, data_paths) for arm in arms}
    log.info(plan_line(preset, plan(arms, steps, study, curves)))
    trainer = CurveTrainer(cfgs, steps, data_paths, opts, backend, curves.ema, progress)
    eval_cfg = dataclasses.replace(base.eval, episodes=study.episodes if not smoke else base.eval.episodes)
    physics = physics_rows(base, eval_cfg, opts, backend, progress)
    record = {"format": CURVE_FORMAT, "preset": preset, "protocol": eval_cfg.protocol, "budgets": curves.budgets,
              "selection_seeds": study.selection_seeds, "seeds": study.evaluated_seeds(), "snapshot_ema": curves.ema,
              "arms": {}, "physics": {}}
    rows = dict(physics["rows"])
    arm_records, arm_rows = _curves(arms, cfgs, curves.budgets, study, trainer, base, eval_cfg, data_paths)
    record["arms"].update(arm_records)
    rows.update(arm_rows)
    if curves.capacity_budget:
        best = max(arms, key=lambda a: _mean_successes(arm_records[a.name], curves.capacity_budget))
        wide = Arm(f"{best.name}-w{CAPACITY_WIDTH}", best.model, best.rollout)
        cfgs[wide.name] = widen(cfgs[best.name], best.model, CAPACITY_WIDTH)
        steps[wide.name] = steps[best.name]
        budgets = [b for b in curves.budgets if b <= curves.capacity_budget]
        wide_records, wide_rows = _curves([wide], cfgs, budgets, study, trainer, base, eval_cfg, data_paths)
        wide_records[wide.name].update(width=CAPACITY_WIDTH, base=best.name)
        record["arms"].update(wide_records)
        record["capacity"] = {"arm": wide.name, "of": best.name, "width": CAPACITY_WIDTH,
                              "budget": curves.capacity_budget}
        rows.update(wide_rows)
    record["episodes"] = physics["episodes"]
    record["physics"] = {name: row_record(row) for name, row in physics["rows"].items()}
    seconds = (physics["seconds"] or 0) + sum((r.get("seconds") or 0) + (r.get("eval_seconds") or 0)
                                              for r in trainer.done)
    record.update(compute_minutes=round(seconds / 60, 1))  # wall time and machines: the world's WallLedger
    episodes = {"indices": physics["indices"],
                "rows": {lab: {"outcomes": row["outcomes"], "steps": row["steps"]} for lab, row in rows.items()}}
    return record, episodes


def _curves(arms, cfgs, budgets, study, trainer, base, eval_cfg, data_paths):
    """Rate selection, then the long runs, each evaluated at every budget in its task, for `arms`:
    (arm records, evaluated rows by label)."""
    selection = select_rates(arms, study, trainer)
    runs = [(arm, selection[arm.name]["chosen"], s) for arm in arms for s in study.evaluated_seeds()]
    evaluations = {run: RunEvaluation(base, eval_cfg, run[0].rollout,
                                      [(label(run[0], run[2], b), i, 1.0) for i, b in enumerate(budgets)])
                   for run in runs}
    trained = trainer.train_to(runs, budgets, evaluations)
    for (arm, lr, seed), summary in trained.items():
        if "diverged" in summary:
            raise UserError(f"curves: {arm.name} seed {seed} diverged at the chosen learning rate {lr:g} "
                            f"({summary['diverged']})")
    records, rows = {}, {}
    for arm in arms:
        sel, cfg = selection[arm.name], cfgs[arm.name]
        runs = {}
        for seed in study.evaluated_seeds():
            summary = trained[(arm, sel["chosen"], seed)]
            points = {}
            for budget, snap in zip(budgets, summary["snapshots"]):
                row = summary["rows"][label(arm, seed, budget)]
                rows[label(arm, seed, budget)] = row
                points[str(budget)] = {"step": snap["step"], "val_loss": snap["val_loss"], "seconds": snap["seconds"],
                                       **row_record(row)}
            runs[arm.label(seed)] = {"seed": seed, "key": summary["key"], "train_seconds": summary.get("seconds"),
                                     "parameters": summary.get("parameters"), "points": points}
        records[arm.name] = {"model": arm.model, "rollout": arm.rollout, "width": 1, "lr": sel["chosen"],
                             "selection": {k: sel[k] for k in ("seeds", "val_loss", "extended")},
                             "steps_per_budget": trainer.steps[arm.name],
                             "batch_size": cfg.train_config(arm.model).batch_size,
                             "flops_per_step": training_flops(cfg, arm.model, data_paths), "runs": runs}
    return records, rows


def _mean_successes(arm_record: dict, budget: int) -> float:
    return sum(r["points"][str(budget)]["successes"] for r in arm_record["runs"].values()) / len(arm_record["runs"])


def curve_world_key(preset: str, study: StudyConfig, curves: CurveConfig, overrides, smoke: bool) -> str:
    """What decides a world's curves: each roll-out's resolved config reduced to its non-default settings (as the
    study's world key), the arms, rates, seeds, episodes, budgets, capacity point and weight average."""
    cfgs = arm_configs(preset, study, overrides, smoke)
    return config_hash({"format": CURVE_FORMAT, "configs": {r: changed_dict(cfg) for r, cfg in cfgs.items()},
                        "arms": [dataclasses.astuple(arm) for arm in study.arms()], "lrs": study.lrs,
                        "grid_extensions": study.grid_extensions, "selection_seeds": study.selection_seeds,
                        "seeds": study.seeds, "episodes": study.episodes, "budgets": curves.budgets,
                        "capacity_budget": curves.capacity_budget, "ema": curves.ema, "smoke": smoke})


# ------------------------------------------------------------------------------------------ the command
def curve_paths(out=None, json_path=None, smoke: bool = False, runs_dir: Path = Path("runs")) -> tuple[Path, Path]:
    """(document, results file): docs/scaling.md and docs/scaling.json by default; a smoke run's under RUNS, so a
    toy run never touches the committed results."""
    out_md = Path(out) if out else (Path(runs_dir) / "scaling-smoke.md" if smoke else DEFAULT_OUT)
    return out_md, Path(json_path) if json_path else out_md.with_suffix(".json")


def curve_command(study: StudyConfig, curves: CurveConfig, smoke: bool, overrides=()) -> str:
    """The `hrmlab study --budgets` call that produced a world (stored with it; the document lists them)."""
    from hrmlab.experiments.study.document import option_text

    default = dataclasses.replace(StudyConfig(), **curve_study_defaults())
    if smoke:
        from hrmlab.experiments.study.config import smoke_study_defaults

        default = dataclasses.replace(default, **smoke_study_defaults())
    parts = ["hrmlab study", f"--budgets {','.join(map(str, curves.budgets))}"] + (["--smoke"] if smoke else [])
    for flag, name in (("--only", "worlds"), ("--models", "models"), ("--stateful-arms", "stateful_arms"),
                       ("--lrs", "lrs"), ("--grid-extensions", "grid_extensions"), ("--seeds", "seeds"),
                       ("--selection-seeds", "selection_seeds"), ("--episodes", "episodes")):
        if getattr(study, name) != getattr(default, name):
            parts.append(f"{flag} {option_text(getattr(study, name))}")
    if curves.capacity_budget:
        parts.append(f"--capacity-budget {curves.capacity_budget}")
    parts += [f"--set {o}" for o in overrides]
    return " ".join(parts)


def read_curve_results(out_json: Path) -> dict | None:
    stored = read_results(out_json)
    if stored is not None and stored.get("kind") != KIND:
        raise UserError(f"--json {out_json} is not a learning-curves results file (a study's?); give another --json "
                        "(or --out) for `hrmlab study --budgets`")
    return stored


def run_curves(study: StudyConfig, curves: CurveConfig, out_md: Path, out_json: Path, cache: Path, runs_dir: Path,
               smoke: bool = False, overrides=(), workers: int | None = None, progress: bool = True,
               tabulate_only: bool = False, backend=None) -> str:
    """Run (or reuse) every world's curves; after each, rewrite the episodes file, the results file, the document
    and its plots. A stored world is reused when its key matches and replaced otherwise (its stages are cached).
    tabulate_only: the document and plots from the results and episodes files alone. backend: where the long runs
    and evaluation chunks run (default this machine's pool of `workers`; a `SlurmBackend` for array jobs).
    While a world runs, its finished units and wall time are kept in `<results stem>-progress/` beside the results
    file (`progress.py`): committed with them, a rerun on a fresh machine resumes there."""
    from hrmlab.backends.local import make_backend
    from hrmlab.experiments.grid.stages import RunOptions
    from hrmlab.experiments.study.progress import Progress, progress_dir
    from hrmlab.experiments.study.scaling import write_document

    check_study(study)
    check_curves(curves, study)
    stored = read_curve_results(out_json)
    if tabulate_only and stored is None:
        raise UserError(f"--json {out_json} does not exist: --tabulate-only has no results to tabulate")
    kept = dict((stored or {}).get("worlds", {}))
    ep_path = episodes_path(out_json)
    kept_episodes = read_episodes(ep_path)
    if not tabulate_only:
        keys = {world: curve_world_key(world, study, curves, overrides, smoke) for world in study.worlds}
        backend = backend or make_backend(workers)
        for world in study.worlds:
            record = kept.get(world)
            if record is not None and record.get("key") == keys[world] \
                    and kept_episodes.get(world, {}).get("key") == keys[world]:
                log.info("curves %s: reusing the stored record (%s)", world, out_json)
                Progress(progress_dir(out_json) / f"{world}.json", keys[world]).remove_if_held()
                continue
            opts = RunOptions(out=runs_dir / f"curves-{world}" / ("smoke" if smoke else "full"), cache=cache,
                              smoke=smoke, workers=workers, progress=progress)
            opts.out.mkdir(parents=True, exist_ok=True)
            # the world's finished units and its wall time so far travel with the results (commit them): a rerun
            # on any machine resumes from them, and from its stage cache where it has one
            units = Progress(progress_dir(out_json) / f"{world}.json", keys[world])
            with WallLedger(progress_dir(out_json) / f"{world}.wall.json", keys[world],
                            closed=opts.out / "wall.json") as wall:
                record, episodes = curve_world(world, study, curves, opts, overrides, smoke, backend, units)
                wall.finish()
            label = backend.label() if callable(getattr(backend, "label", None)) else f"local, {backend.workers} workers"
            record.update(minutes=round(wall.seconds / 60, 1), calls=wall.calls, machine=wall.machine,
                          backend=label,
                          command=curve_command(dataclasses.replace(study, worlds=[world]), curves, smoke, overrides))
            kept[world] = {"key": keys[world], **record}
            kept_episodes[world] = {"key": keys[world], **episodes}
            _write_files(out_json, kept, kept_episodes, smoke)
            units.remove()
            write_document(kept, kept_episodes, out_md, out_json)
    missing = [w for w in kept if kept_episodes.get(w, {}).get("key") != kept[w].get("key")]
    if missing:
        raise UserError(f"{ep_path} holds no per-episode outcomes of {', '.join(missing)} (the results file's "
                        "records): rerun those worlds (their stages are cached)")
    return write_document(kept, kept_episodes, out_md, out_json)


def _write_files(out_json: Path, kept: dict, kept_episodes: dict, smoke: bool) -> None:
    """The episodes file first (a results record never names outcomes that are not stored), then the results."""
    write_text_atomic(episodes_path(out_json), episodes_text({w: kept_episodes[w] for w in kept}))
    write_json_atomic(Path(out_json), {"format": CURVE_FORMAT, "kind": KIND, **({"smoke": True} if smoke else {}),
                                       "episodes_file": episodes_path(out_json).name, "worlds": kept})
