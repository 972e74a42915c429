"""The space-time diffusion experiment: expert trajectories → denoiser (→ LSTM) → closed-loop rows → results.

Presets `diffusion-st-cpu` / `diffusion-st` (BlobWorld) and `diffusion-st-grid-cpu` / `diffusion-st-grid`
(BounceGrid). Each stage is cached under `CACHE/diffusion-st/` by a hash of exactly the settings it
depends on: expert data (world, expert, data), the denoiser (+ model, train), the evaluation (+ sampling,
planner, eval, the forecasters' checkpoints). The LSTM forecaster of the `lstm` rows is trained by the
grid family's own stages (`grid/stages.py`: `stage_data` / `stage_train`, cached under `CACHE/models/`) with
the `quick` preset's recipe by default, so it is the model of the forecaster table.

Stages use the one stage cache (`stage_cache.py`; expert data: a `data/shards.py` shard set).
results.json: a `RunResult` whose `evaluations[PROTOCOL]` is an `EvaluationResult` (rows `astar+F`,
`diffusion+F`, ablations), plus stage keys, model size, timings.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from hrmlab.config import apply_overrides, config_hash, from_dict, to_dict
from hrmlab.data.collect import DataConfig
from hrmlab.diffusion.spacetime import data as st_data
from hrmlab.diffusion.spacetime.closed_loop import (ABLATIONS, STEvalConfig, evaluate_rows, format_rows, make_chunks,
                                                    make_rows)
from hrmlab.diffusion.spacetime.data import STDataConfig
from hrmlab.diffusion.spacetime.model import STDenoiser, STModelConfig, count_parameters
from hrmlab.diffusion.spacetime.planner import STPlannerConfig
from hrmlab.diffusion.spacetime.sampler import STSamplingConfig
from hrmlab.diffusion.spacetime.train import STTrainConfig, load_st_planner, train_st
from hrmlab.errors import UserError
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.evaluate.result import RESULT_FORMAT, EvaluationResult, RunResult
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.forecast.physics import PHYSICS_FORECASTERS
from hrmlab.planning.blob_astar import ExpertConfig
from hrmlab.progress import make_progress
from hrmlab.stage_cache import Stage, cached, stage_key
from hrmlab.train.trainer import TrainConfig
from hrmlab.worlds.blob_world import BlobWorldConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

log = logging.getLogger(__name__)

ST_PRESETS = ("diffusion-st-cpu", "diffusion-st", "diffusion-st-grid-cpu", "diffusion-st-grid")
LEARNED = ("lstm",)
"""Forecaster names trained by this experiment (BounceGrid)."""


def _quick_lstm_train() -> TrainConfig:
    return TrainConfig(optimizer="adamw", lr=3e-3, schedule="onecycle", batch_size=256, epochs=1, grad_clip=1.0,
                       precision="fp32")


@dataclass
class LSTMForecasterConfig:
    """The trained LSTM of the `lstm` rows (BounceGrid). Defaults: the `quick` preset's LSTM."""

    data: DataConfig = field(default_factory=lambda: DataConfig(train_episodes=2000, val_episodes=200))
    """Forecasting data (SPEC §3)."""
    model: LSTMConfig = field(default_factory=lambda: LSTMConfig(hidden=64))
    """LSTM size."""
    train: TrainConfig = field(default_factory=_quick_lstm_train)
    """Its training recipe."""


@dataclass
class STExperimentConfig:
    """One space-time diffusion experiment on one world."""

    name: str = "diffusion-st"
    """Preset name (set by the loader)."""
    description: str = ""
    """One line for `hrmlab presets`."""
    provenance: str = ""
    """What the preset is (no seed counterpart)."""
    published: dict = field(default_factory=dict)
    """Reference numbers quoted in reports."""
    family: Literal["diffusion-st"] = "diffusion-st"
    """Experiment family."""
    world_kind: Literal["blob", "grid"] = "blob"
    """blob: BlobWorld (the diffusion scripts' world); grid: BounceGrid (the forecaster table's)."""
    torch_threads: int = 0
    """Torch CPU threads for training (0: torch's default)."""
    device: str = "auto"
    """Torch device for planning and the LSTM: auto (cuda if available) | cpu | cuda (training: train.device)."""
    blob: BlobWorldConfig = field(default_factory=BlobWorldConfig)
    """BlobWorld settings (world_kind blob)."""
    grid: BounceGridConfig = field(default_factory=BounceGridConfig)
    """BounceGrid settings (world_kind grid)."""
    protocol: str = "standard"
    """BounceGrid: the evaluation protocol (warm-up, moves, radii)."""
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    """BlobWorld: the expert space-time A* (training targets and the A* rows)."""
    data: STDataConfig = field(default_factory=STDataConfig)
    """Expert trajectories."""
    model: STModelConfig = field(default_factory=STModelConfig)
    """Denoiser."""
    train: STTrainConfig = field(default_factory=STTrainConfig)
    """Denoiser training."""
    sampling: STSamplingConfig = field(default_factory=STSamplingConfig)
    """Candidates, denoising steps, guidance."""
    planner: STPlannerConfig = field(default_factory=STPlannerConfig)
    """Candidate check, pick, replanning."""
    eval: STEvalConfig = field(default_factory=STEvalConfig)
    """Rows and episodes."""
    lstm: LSTMForecasterConfig = field(default_factory=LSTMForecasterConfig)
    """The LSTM forecaster trained when eval.forecasters lists `lstm` (BounceGrid)."""

    @property
    def world(self):
        return self.blob if self.world_kind == "blob" else self.grid


def validate(cfg: STExperimentConfig) -> STExperimentConfig:
    valid = set(PHYSICS_FORECASTERS) | (set(LEARNED) if cfg.world_kind == "grid" else set())
    for name in [*cfg.eval.forecasters, *cfg.eval.ablation_forecasters]:
        if name not in valid:
            raise UserError(f"unknown forecaster {name!r} for world {cfg.world_kind}; valid choices: "
                            f"{', '.join(sorted(valid))}")
    for a in [part for ablation in cfg.eval.ablations for part in ablation.split("+")]:
        if a not in ABLATIONS:
            raise UserError(f"unknown ablation {a!r}; valid choices: {', '.join(ABLATIONS)}")
    if cfg.eval.split not in ("test", "val"):
        raise UserError(f"unknown split {cfg.eval.split!r}; valid choices: test, val")
    if cfg.world_kind == "grid":
        get_protocol(cfg.protocol)
    levels = len(cfg.model.channels)
    if cfg.data.horizon % (2 ** (levels - 1)):
        raise UserError(f"data.horizon {cfg.data.horizon} must be divisible by {2 ** (levels - 1)} "
                        f"({levels} levels in model.channels)")
    if cfg.world_kind == "blob" and cfg.data.horizon < cfg.expert.max_steps:
        raise UserError(f"data.horizon {cfg.data.horizon} must be at least expert.max_steps {cfg.expert.max_steps}")
    make_rows(cfg.eval)
    return cfg


def load_st_experiment(data: dict, name: str, overrides=()) -> STExperimentConfig:
    """Preset dict → config, with `key=value` overrides applied."""
    cfg = from_dict(STExperimentConfig, {**data, "name": name})
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    return validate(cfg)


def smoke(cfg: STExperimentConfig) -> STExperimentConfig:
    """The same experiment at toy size: every stage runs for real in seconds."""
    cfg = copy.deepcopy(cfg)
    cfg.data.episodes, cfg.data.episodes_per_shard = 16, 8
    cfg.model.channels = [8, 8, 16]
    cfg.model.map_channels, cfg.model.obstacle_hidden, cfg.model.embed, cfg.model.groups = 4, 8, 16, 4
    cfg.train.steps, cfg.train.batch_size = 3, 8
    cfg.train.checkpoint_every_steps, cfg.train.log_every_steps = 2, 1
    cfg.sampling.candidates, cfg.sampling.steps = 2, min(cfg.sampling.steps, 2)
    cfg.sampling.guide_steps = min(cfg.sampling.guide_steps, 1)
    cfg.eval.test_episodes, cfg.eval.chunk_size, cfg.eval.max_steps = 3, 3, 6
    cfg.lstm.data = dataclasses.replace(cfg.lstm.data, train_episodes=24, val_episodes=8, reset_batch=8,
                                        episodes_per_shard=8)
    cfg.lstm.model = dataclasses.replace(cfg.lstm.model, hidden=min(cfg.lstm.model.hidden, 16))
    cfg.lstm.train = dataclasses.replace(cfg.lstm.train, epochs=1, max_steps=3, batch_size=32,
                                         checkpoint_every_steps=2, log_every_steps=1)
    return cfg


def describe(cfg: STExperimentConfig) -> str:
    """One line for `hrmlab presets`."""
    g = cfg.world.map_size if cfg.world_kind == "blob" else cfg.world.grid_size
    params = count_parameters(STDenoiser(cfg.model, g, cfg.data.horizon))
    world = "BlobWorld" if cfg.world_kind == "blob" else f"BounceGrid ({cfg.protocol})"
    return (f"space-time denoiser {params:,} params · {world} · {cfg.data.episodes:,} expert episodes · "
            f"{cfg.train.steps:,} steps of {cfg.train.batch_size} · {cfg.sampling.candidates} candidates × "
            f"{cfg.sampling.steps} steps, replan every {cfg.planner.replan_every} · rows "
            f"{{{', '.join(cfg.eval.planners)}}} × {{{', '.join(cfg.eval.forecasters)}}}")


# ------------------------------------------------------------------------------------------ stages


def stage_keys(cfg: STExperimentConfig, forecaster_keys: dict | None = None) -> dict:
    """Cache keys: expert data, denoiser, evaluation (hashes of exactly what each depends on)."""
    warmup = get_protocol(cfg.protocol).warmup if cfg.world_kind == "grid" else 0
    expert = cfg.expert if cfg.world_kind == "blob" else None
    data_key = st_data.data_key(cfg.world_kind, cfg.world, expert, warmup, cfg.data)
    train_key = stage_key({"data": data_key, "model": to_dict(cfg.model), "train": to_dict(cfg.train)}, TRAIN_FORMAT)
    eval_key = stage_key({"train": train_key, "world_kind": cfg.world_kind, "world": to_dict(cfg.world),
                          "expert": to_dict(cfg.expert), "protocol": cfg.protocol, "sampling": to_dict(cfg.sampling),
                          "planner": to_dict(cfg.planner), "eval": to_dict(cfg.eval),
                          "forecasters": forecaster_keys or {}}, RESULT_FORMAT)
    return {"expert_data": data_key, "train": train_key, "eval": eval_key}


TRAIN_FORMAT = 1
"""Part of the training stage's key: bump it when the trained planner's file changes meaning."""


def stage_train(examples: dict, cfg: STExperimentConfig, train_dir: Path, key: str,
                progress: bool) -> tuple[Path, STDenoiser]:
    """The denoiser's training stage: (planner.pt, the loaded denoiser), trained or from the cache (a corrupt
    or unreadable planner is retrained)."""
    g = cfg.world.map_size if cfg.world_kind == "blob" else cfg.world.grid_size

    def train() -> dict:
        return {"planner": train_st(examples, cfg.model, cfg.train, g, train_dir, progress=progress).name}

    def load(doc: dict) -> tuple[Path, STDenoiser]:
        return train_dir / doc["planner"], load_st_planner(train_dir / doc["planner"])[0]

    return cached(Stage("train/space-time", train_dir / "stage.json", key, folder=train_dir), train, load,
                  files=lambda doc: [train_dir / doc["planner"]])


def _train_lstm(cfg: STExperimentConfig, opts, backend) -> dict:
    """Train (or reuse) the LSTM forecaster through the grid pipeline's stages; returns its summary (the run
    links it into its folder at the end, `run_st`)."""
    from hrmlab.experiments.grid.config import ExperimentConfig
    from hrmlab.experiments.grid.stages import stage_data, stage_train

    grid_cfg = ExperimentConfig(name=cfg.name, world=cfg.grid, data=cfg.lstm.data, lstm=cfg.lstm.model,
                                train_lstm=cfg.lstm.train, models=["lstm"], device=cfg.device)
    return stage_train(grid_cfg, "lstm", stage_data(grid_cfg, opts, backend), opts, link=False)


def run_st(cfg: STExperimentConfig, opts, backend=None) -> RunResult:
    """The whole experiment; returns the run's results, written once to OUT/results.json with OUT/config.yaml at
    the end (`rundir.write_run`): a run that fails leaves the folder of the previous run as it was.

    `opts` is the pipeline's RunOptions (out, cache, smoke, workers, progress); `cfg` is already shrunk
    for a smoke run."""
    from hrmlab.backends.local import make_backend
    from hrmlab.experiments.grid.stages import link_model
    from hrmlab.report.rundir import write_run
    from hrmlab.train.distributed import pick_device

    backend = backend or make_backend(opts.workers)
    out, cache = Path(opts.out), Path(opts.cache) / "diffusion-st"
    t_start = time.perf_counter()
    timings = {}
    old_threads = torch.get_num_threads()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    try:
        checkpoints, forecaster_keys, summary = {}, {}, None  # summary: the LSTM's training, if trained
        if "lstm" in {*cfg.eval.forecasters, *cfg.eval.ablation_forecasters}:
            t0 = time.perf_counter()
            summary = _train_lstm(cfg, opts, backend)
            checkpoints["lstm"], forecaster_keys["lstm"] = summary["checkpoint"], summary["key"]
            timings["lstm_s"] = round(time.perf_counter() - t0, 1)
        keys = stage_keys(cfg, forecaster_keys)
        t0 = time.perf_counter()
        warmup = get_protocol(cfg.protocol).warmup if cfg.world_kind == "grid" else 0
        root = st_data.generate(cfg.world_kind, cfg.world, cfg.expert if cfg.world_kind == "blob" else None, warmup,
                                cfg.data, cache / "expert" / keys["expert_data"], backend, progress=opts.progress)
        examples = st_data.load(root)
        timings["expert_data_s"] = round(time.perf_counter() - t0, 1)
        log.info("space-time expert data: %d trajectories (%s)", len(examples["path"]), root)

        t0 = time.perf_counter()
        planner_path, model = stage_train(examples, cfg, cache / "train" / keys["train"], keys["train"], opts.progress)
        timings["train_s"] = round(time.perf_counter() - t0, 1)

        t0 = time.perf_counter()

        def evaluate() -> dict:
            device = pick_device(cfg.device)
            device = "cpu" if device.type == "cpu" else str(device)
            chunks = make_chunks(cfg.world_kind, cfg.world, make_rows(cfg.eval), cfg.eval, cfg.sampling, cfg.planner,
                                 cfg.expert if cfg.world_kind == "blob" else None, str(planner_path), checkpoints,
                                 cfg.protocol, device)
            bar = make_progress(cfg.eval.test_episodes, "evaluate rows", bar=opts.progress)
            eval_backend = backend if device == "cpu" else make_backend(1)
            try:
                return evaluate_rows(chunks, eval_backend, progress=bar.update).to_json()
            finally:
                bar.close()

        evaluation = cached(Stage("evaluate/rows", cache / "eval" / f"{keys['eval']}.json", keys["eval"]), evaluate,
                            EvaluationResult.from_json)
        timings["eval_s"] = round(time.perf_counter() - t0, 1)
    finally:
        torch.set_num_threads(old_threads)
    results = RunResult(
        preset=cfg.name, family=cfg.family, description=cfg.description, provenance=cfg.provenance,
        published=cfg.published, smoke=bool(opts.smoke), primary_protocol=evaluation.protocol,
        evaluations={evaluation.protocol: evaluation},
        forecasters={name: {"checkpoint": path} for name, path in checkpoints.items()},
        seconds=round(time.perf_counter() - t_start, 1),
        details={"world": cfg.world_kind, "config_hash": config_hash(cfg), "stage_keys": keys,
                 "model": {"parameters": count_parameters(model), "checkpoint": str(planner_path),
                           "horizon": model.horizon},
                 "expert_trajectories": int(len(examples["path"])), "timings": timings})

    def link_lstm() -> None:
        if summary is not None:  # the LSTM forecaster's checkpoint and logs, beside the results
            link_model(opts, "lstm", summary)

    write_run(out, cfg, results.to_json(), files=link_lstm)
    return results


def run_st_pipeline(cfg: STExperimentConfig, opts, backend=None, train_runner=None) -> RunResult:
    """`hrmlab run` for a space-time preset: results.json and the report. (Its denoiser trains in this
    process; `train_runner` is the family interface's hook and is not used yet.)"""
    from hrmlab.report.report import write_report

    results = run_st(cfg, opts, backend)
    write_report(opts.out, animations=0)
    return results


def print_st_summary(results: RunResult, cfg=None) -> None:
    """The console summary of `hrmlab run` for a space-time preset."""
    for evaluation in results.evaluations.values():
        print()
        print(format_rows(evaluation))
    model = results.details["model"]
    print(f"\ndenoiser: {model['parameters']:,} parameters, {model['horizon']} points; "
          f"{results.details['expert_trajectories']:,} expert trajectories")
