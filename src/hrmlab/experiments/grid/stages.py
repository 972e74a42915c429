"""collect → merge → train (HRM, LSTM) → evaluate (seed protocol + standard) → results and report.

Every stage's output lives in the cache under a key derived from exactly the config that produced it:
a finished stage is reused, a changed setting recomputes only what depends on it, and a stage that was
interrupted resumes (data: missing shards only; training: from its last checkpoint) or is redone —
never silently reused, because a stage is marked finished only after its outputs are complete
(`stage_cache.py`: done marker with checksums; `data/shards.py` for the data). Evaluations are
`EvaluationResult`s (`evaluate/result.py`); results.json is a `RunResult`.
The run directory gathers the resolved config, logs, links to the checkpoints, results and report.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hrmlab.config import config_hash
from hrmlab.errors import UserError
from hrmlab.evaluate.result import RESULT_FORMAT, EvaluationResult, RunResult
from hrmlab.evaluate.runner import EvalConfig, evaluate, format_table
from hrmlab.experiments.grid.config import ExperimentConfig
from hrmlab.forecast.registry import ForecasterSpec
from hrmlab.planning.spacetime_astar import PlannerConfig
from hrmlab.progress import make_progress
from hrmlab.stage_cache import Stage, StageCorrupt, cached, stage_key

log = logging.getLogger("hrmlab.stages")


@dataclass
class RunOptions:
    """How and where to run (not part of any stage key)."""

    out: Path
    cache: Path
    smoke: bool = False
    workers: int | None = None
    """Local processes for collection and evaluation (None = one per core)."""
    gpus: int | None = None
    """GPUs to train on (None = all visible, capped by the preset)."""
    allow_cpu: bool = False
    """Run a GPU preset on CPU anyway (full size; slow)."""
    progress: bool = True


def _link(target: Path, link: Path) -> None:
    """Point run-dir entry `link` at a cached stage output (replacing an old link)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            return
        link.unlink()
    link.symlink_to(os.path.relpath(target.resolve(), link.parent.resolve()))


# ------------------------------------------------------------------------------------------ hardware
def check_hardware(cfg: ExperimentConfig, opts: RunOptions) -> int:
    """GPUs this run trains on. A GPU preset refuses to run full size on a CPU-only machine."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.device == "cpu":
        visible = 0
    want = cfg.hardware.gpus
    if want > 0 and visible == 0 and not (opts.smoke or opts.allow_cpu):
        raise UserError(f"preset {cfg.name} expects {want}× {cfg.hardware.gpu_type or 'GPU'} and this machine has no "
                        "GPU; use --smoke for a toy-size run, --allow-cpu to run full size on CPU, or --backend modal")
    use = min(visible, opts.gpus if opts.gpus is not None else visible)
    if want > 0:
        use = min(use, want)
    if want > 1 and 0 < use < want:
        log.info("preset %s was designed for %d GPUs; training on %d with gradient accumulation keeps the global "
                 "batch of %d", cfg.name, want, use, cfg.train_hrm.batch_size)
    return use


# ---------------------------------------------------------------------------------------------- data
def stage_data(cfg: ExperimentConfig, opts: RunOptions, backend):
    from hrmlab.data.collect import collect

    t0 = time.perf_counter()
    paths = collect(cfg.world, cfg.data, opts.cache, backend=backend, progress=opts.progress)
    log.info("stage data: ready in %.1fs (%s)", time.perf_counter() - t0, paths.root)
    return paths


# ------------------------------------------------------------------------------------------- training
def cpu_training_threads(cfg: ExperimentConfig, model: str) -> int | None:
    """The intra-op thread count `model` trains with on this machine's CPU, else None (a GPU run does not
    depend on it). Several CPU processes (gloo DDP, tests only) use one thread each; the key still names
    the setting's resolution, which is harmless there."""
    from hrmlab.threads import resolve_cpu_threads
    from hrmlab.train.distributed import pick_device

    if pick_device(cfg.device).type != "cpu":
        return None
    return resolve_cpu_threads(cfg.train_config(model).cpu_threads)  # its range: validate.py


def compiled_training(cfg: ExperimentConfig, model: str) -> bool:
    """Whether `model` trains compiled here: its recipe's `compile` resolved as the trainer resolves it
    (train/trainer.py: `COMPILE_AUTO` by device and model kind, for large enough batches)."""
    from hrmlab.train.distributed import pick_device
    from hrmlab.train.trainer import resolve_compile

    recipe = cfg.train_config(model)
    return resolve_compile(recipe.compile, model, pick_device(cfg.device).type, recipe.batch_size)


def train_key(cfg: ExperimentConfig, model: str) -> str:
    from hrmlab.data.collect import store_config

    from hrmlab.forecast.learned import TRAINED_FOR

    # window and stateful train the same one-step model (one cached checkpoint); direct its K-step head
    trained = TRAINED_FOR[cfg.forecast.rollout]
    extra = {} if trained == "window" else {"trained_for": trained}
    threads = cpu_training_threads(cfg, model)
    if threads is not None:  # the thread count changes a CPU run's weights (hrmlab/threads.py)
        extra["cpu_threads"] = threads
    if compiled_training(cfg, model):  # compiled and eager weights differ in the last bits; off keeps old keys
        extra["compile"] = "on"
    return config_hash({"model": model, "arch": cfg.model_config(model),
                        "train": cfg.train_config(model), "data": store_config(cfg.world, cfg.data),
                        "history": cfg.data.history, **extra})


@dataclass
class TrainJob:
    """Everything one training stage needs: picklable, so it can run here, under torchrun or on Modal."""

    kind: str
    model_cfg: object
    train_cfg: object
    world: object
    data: object
    data_paths: object
    run_dir: Path
    gpus: int
    preset_gpus: int
    device: str
    progress: bool = True
    rollout: str = "window"
    """Roll-out mode the model is trained for (forecast/learned.py)."""
    horizon: int = 20
    """The planner's horizon: direct's K, steps of future per training sample."""


def run_train_job(job: TrainJob) -> dict:
    """Default training runner: train in this process (or under local torchrun when job.gpus > 1)."""
    from hrmlab.experiments.grid.training import train_forecaster

    return train_forecaster(kind=job.kind, model_cfg=job.model_cfg, train_cfg=job.train_cfg, world=job.world,
                            data=job.data, data_paths=job.data_paths, run_dir=job.run_dir, gpus=job.gpus,
                            preset_gpus=job.preset_gpus, device=job.device, progress=job.progress,
                            rollout=job.rollout, horizon=job.horizon)


def model_dir(cache: Path, model: str, key: str) -> Path:
    """The cache folder of one trained model (checkpoint, metrics), by its training key."""
    return cache / "models" / f"{model}-{key}"


def link_model(opts: RunOptions, model: str, summary: dict) -> None:
    """Point OUT/train/<model> at the trained model's cache folder (its checkpoint and training logs)."""
    _link(model_dir(opts.cache, model, summary["key"]), opts.out / "train" / model)


def stage_train(cfg: ExperimentConfig, model: str, data_paths, opts: RunOptions, gpus: int = 0,
                train_runner=run_train_job, link: bool = True) -> dict:
    """Train one learned model (or reuse the cached one). Returns its summary (checkpoint path etc.).

    `train_runner(job)` does the work: in this process by default, in a GPU container on Modal. The
    stage's done marker holds the checkpoint's checksum: a corrupt checkpoint is retrained.
    link: link OUT/train/<model> now; a whole run links its models when it writes its folder, at its end."""
    key = train_key(cfg, model)
    stage_dir = model_dir(opts.cache, model, key)
    stage = Stage(f"train/{model}", stage_dir / "summary.json", key, folder=stage_dir)

    def train() -> dict:
        t0 = time.perf_counter()
        job = TrainJob(model, cfg.model_config(model), cfg.train_config(model), cfg.world, cfg.data, data_paths,
                       stage_dir, gpus, cfg.hardware.gpus, cfg.device, opts.progress, cfg.forecast.rollout,
                       cfg.planner.horizon)
        summary = train_runner(job)
        # a run resumed after a kill costs this call plus what the earlier calls spent reaching its checkpoint
        earlier = summary.get("earlier_seconds") or 0.0
        summary["seconds"] = round(time.perf_counter() - t0 + earlier, 1)
        summary["key"] = key
        return summary

    summary = cached(stage, train, files=lambda summary: [summary["checkpoint"]])
    if link:
        link_model(opts, model, summary)
    return summary


# ----------------------------------------------------------------------------------------- evaluation
def stage_evaluate(cfg: ExperimentConfig, eval_cfg: EvalConfig, planner: PlannerConfig,
                   specs: list[ForecasterSpec], spec_keys: dict, opts: RunOptions, backend) -> EvaluationResult:
    key = stage_key({"world": cfg.world, "planner": planner, "eval": eval_cfg,
                     "forecasters": [[s.name, spec_keys.get(s.name), s.precision]
                                     + ([s.rollout] if s.rollout else [])
                                     + ([s.compute_scale] if s.compute_scale != 1.0 else []) for s in specs]},
                    RESULT_FORMAT)
    stage = Stage(f"evaluate/{eval_cfg.protocol}", opts.cache / "evals" / f"{eval_cfg.protocol}-{key}.json", key)

    def run() -> dict:
        t0 = time.perf_counter()
        progress = make_progress(eval_cfg.episodes, f"evaluate {eval_cfg.protocol}", bar=opts.progress)
        device = "cpu" if cfg.device == "auto" else cfg.device
        try:
            result = evaluate(eval_cfg, cfg.world, planner, specs, backend, device=device, progress=progress.update)
        finally:
            progress.close()
        result.seconds = round(time.perf_counter() - t0, 1)
        return result.to_json()

    def parse(doc: dict) -> EvaluationResult:
        result = EvaluationResult.from_json(doc)
        if set(result.rows) != {s.name for s in specs}:
            raise StageCorrupt(f"it holds {', '.join(result.rows)}, not the forecasters asked for")
        return result

    return cached(stage, run, parse)


# ------------------------------------------------------------------------------------------- the run
def seed_style_lines(results: EvaluationResult, models: list[str]) -> list[str]:
    """The seed's console lines, e.g. `LSTM: 36/50 (72%)`."""
    return [f"{model.upper()}: {r.successes}/{r.episodes} ({100 * r.success_rate:.0f}%)"
            for model in models if (r := results.rows.get(model)) is not None]


def seed_protocol_specs(cfg: ExperimentConfig, specs: list[ForecasterSpec]) -> list[ForecasterSpec]:
    """The forecasters of the seed-protocol run: the HRM at the precision its script evaluated it in."""
    return [dataclasses.replace(s, precision=cfg.seed_hrm_precision) if s.name == "hrm" else s for s in specs]


def run_experiment(cfg: ExperimentConfig, opts: RunOptions, backend=None, train_runner=None) -> RunResult:
    """The whole pipeline for a grid preset. Returns the run's results, also written to results.json.

    The run folder is written only at the end (`rundir.write_run`): a run that fails leaves the folder of the
    previous run as it was. backend: where collection and evaluation fan out (`map`); train_runner: where
    training runs."""
    from hrmlab.backends.local import make_backend
    from hrmlab.report.rundir import write_run

    backend = backend or make_backend(opts.workers)
    train_runner = train_runner or run_train_job
    gpus = check_hardware(cfg, opts)
    t_start = time.perf_counter()

    data_paths = stage_data(cfg, opts, backend) if cfg.models else None
    trained = {m: stage_train(cfg, m, data_paths, opts, gpus, train_runner, link=False) for m in cfg.models}

    learned = [ForecasterSpec(m, trained[m]["checkpoint"], precision=cfg.forecast.precision,
                              rollout=cfg.forecast.rollout) for m in cfg.models]
    physics = [ForecasterSpec(name) for name in cfg.physics_forecasters]
    specs = learned + physics
    spec_keys = {m: trained[m]["key"] for m in cfg.models}

    evaluations = {}
    if cfg.seed_protocol:
        seed_cfg = dataclasses.replace(cfg.eval, protocol=cfg.seed_protocol, episodes=cfg.seed_episodes, start=0)
        seed_planner = dataclasses.replace(cfg.planner, time_index=cfg.seed_time_index)
        evaluations[cfg.seed_protocol] = stage_evaluate(cfg, seed_cfg, seed_planner, seed_protocol_specs(cfg, specs),
                                                        spec_keys, opts, backend)
    evaluations[cfg.eval.protocol] = stage_evaluate(cfg, cfg.eval, cfg.planner, specs, spec_keys, opts, backend)

    results = RunResult(
        preset=cfg.name, description=cfg.description, provenance=cfg.provenance, published=cfg.published,
        smoke=opts.smoke,
        forecasters={s.name: {"checkpoint": s.checkpoint, "rollout": s.rollout, "precision": s.precision}
                     if s.checkpoint else {"checkpoint": None} for s in specs},
        training={m: trained[m] for m in cfg.models}, primary_protocol=cfg.eval.protocol, evaluations=evaluations,
        seconds=round(time.perf_counter() - t_start, 1))
    write_run(opts.out, cfg, results.to_json(), files=lambda: [link_model(opts, m, trained[m]) for m in cfg.models])
    _write_report(opts.out, animations=0 if opts.smoke else 2)
    return results


def _write_report(run_dir: Path, animations: int = 2) -> None:
    """report.md / report.html with charts and (outside smoke runs) episode animations."""
    from hrmlab.report.report import write_report

    write_report(run_dir, animations=animations)


def print_summary(results: RunResult, cfg: ExperimentConfig) -> None:
    seed = results.evaluations.get(cfg.seed_protocol) if cfg.seed_protocol else None
    if seed:
        print(f"\n{cfg.seed_protocol} (the original's protocol and episodes, planner time_index="
              f"{seed.planner.get('time_index')}):")
        for line in seed_style_lines(seed, cfg.models):
            print(f"  {line}")
        published = {k: v for k, v in cfg.published.items() if k in cfg.models}
        if published:
            print("  published by the seed: " + ", ".join(f"{k.upper()}: {v}" for k, v in published.items()))
    print()
    print(format_table(results.primary))
