"""The diffusion-planner experiment: expert paths → training → evaluation, each stage cached by config hash.

`run_diffusion(cfg, run_dir, cache_root, backend)` runs the whole pipeline. Stage outputs live under
`cache_root/diffusion/` in folders named by the hash of exactly the settings that produce them
(expert data: world + expert + data; model: those + model + noise + train; evaluation: everything), in
the grid pipeline's stores: the expert data is a `data/shards.py` shard set, training and evaluation are
`stage_cache.py` stages (done marker with checksums). So a finished stage is reused, a changed setting
recomputes, an interrupted stage resumes (training from `last.pt`) and a corrupt one is logged and
redone. The run directory receives the resolved config and `results.json` (a `RunResult`, written once).

Ready configs: `diffusion-v0`, `diffusion-v1`, `diffusion-v2` (the seed's `diffusion_cloud.py`, its
quirks included: seed conditioning, the mismatched sampler, the unclipped planner roll-out) and
`diffusion-cpu` (the corrected recipe at a size that trains and evaluates in about 15 minutes on 2 CPU
cores). `smoke_config` shrinks any of them to seconds.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from hrmlab.config import apply_overrides, config_hash, from_dict, to_dict
from hrmlab.diffusion import evaluate as evaluation
from hrmlab.diffusion.evaluate import DiffusionEvalConfig
from hrmlab.diffusion.expert import ExpertDataConfig, expert_data_key, generate_expert_data, load_expert_data
from hrmlab.diffusion.noise import NoiseConfig
from hrmlab.diffusion.sample import SamplingConfig
from hrmlab.diffusion.train import DiffusionTrainConfig, load_planner, train_diffusion
from hrmlab.diffusion.unet1d import ModelConfig, count_parameters
from hrmlab.errors import UserError
from hrmlab.evaluate.result import RESULT_FORMAT, EvaluationResult, RunResult
from hrmlab.experiments.grid.config import CloudConfig
from hrmlab.planning.blob_astar import ExpertConfig
from hrmlab.stage_cache import Stage, StageCorrupt, cached, stage_key
from hrmlab.train.distributed import pick_device
from hrmlab.worlds.blob_world import BlobWorldConfig

log = logging.getLogger(__name__)


@dataclass
class DiffusionExperimentConfig:
    """One diffusion-planner experiment. Defaults: the seed's v2 recipe with its bugs fixed."""

    name: str = "diffusion"
    """Preset name (set by the loader; shown in results and reports)."""
    description: str = ""
    """One line for `hrmlab presets`."""
    provenance: str = ""
    """Which seed script this preset re-creates, and any deliberate deviation."""
    published: dict = field(default_factory=dict)
    """The seed's published numbers for this experiment (free text, quoted in reports)."""
    family: Literal["diffusion"] = "diffusion"
    """Experiment family (grid presets use `hrmlab.experiments.grid.config`)."""
    torch_threads: int = 0
    """Torch CPU threads for training and sampling; 0 leaves torch's default (one per core)."""
    world: BlobWorldConfig = field(default_factory=BlobWorldConfig)
    """The BlobWorld map, discs and obstacles."""
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    """The space-time A* that makes expert paths and is the oracle."""
    data: ExpertDataConfig = field(default_factory=ExpertDataConfig)
    """How many expert paths, in which shards, resampled to how many points."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Denoiser architecture and conditioning."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """Noise formulation (training corruption and sampler) and denoising steps."""
    train: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    """Optimiser, schedule, EMA and checkpoints."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Samples per episode, refinement and scoring."""
    eval: DiffusionEvalConfig = field(default_factory=DiffusionEvalConfig)
    """Protocols and episode counts."""
    cloud: CloudConfig = field(default_factory=CloudConfig)
    """Modal containers (`--backend modal`): expert generation uses the collect_* sizes, training runs in a
    container with `cloud.train_gpu` (empty = CPU)."""


@dataclass
class DiffusionTrainTask:
    """One denoiser training, self-contained so it can run in another process or a Modal container that
    shares the cache: it reads the expert shards through their manifest and writes `out_dir/planner.pt`."""

    manifest: str
    model: ModelConfig
    noise: NoiseConfig
    train: DiffusionTrainConfig
    map_size: int
    out_dir: str
    progress: bool = False


def run_train_task(task: DiffusionTrainTask) -> str:
    """Train (or resume, or skip when finished) the denoiser of `task`; returns the path of planner.pt."""
    data = load_expert_data(Path(task.manifest))
    return str(train_diffusion(data, task.model, task.noise, task.train, task.map_size, task.out_dir,
                               progress=task.progress))


# ------------------------------------------------------------------------------------------ presets


DIFFUSION_PRESETS = ("diffusion-v0", "diffusion-v1", "diffusion-v2", "diffusion-cpu")
"""The diffusion presets; their settings live in presets/<name>.yaml like every other preset."""


def load_diffusion_experiment(data: dict, name: str, overrides=()) -> DiffusionExperimentConfig:
    """Preset dict (a YAML file's contents) → config, with `key=value` overrides applied."""
    cfg = from_dict(DiffusionExperimentConfig, {**data, "name": name})
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    for protocol in cfg.eval.protocols:
        if protocol not in ("seed", "standard"):
            raise UserError(f"unknown diffusion protocol {protocol!r} in eval.protocols; valid choices: seed, standard")
    return cfg


def smoke_config(cfg: DiffusionExperimentConfig) -> DiffusionExperimentConfig:
    """The same experiment at toy size (seconds): every stage still runs for real."""
    cfg = copy.deepcopy(cfg)
    cfg.data.num_paths, cfg.data.paths_per_shard = 16, 8
    if cfg.model.architecture == "unet-v2":
        cfg.model.base_channels = 16
    cfg.noise.steps = min(cfg.noise.steps, 4)
    cfg.train.steps, cfg.train.batch_size = 3, 8
    cfg.train.checkpoint_every_steps, cfg.train.log_every_steps = 2, 1
    cfg.sampling.num_samples = 2
    cfg.sampling.refine_steps = min(cfg.sampling.refine_steps, 5)
    cfg.eval.seed_episodes, cfg.eval.test_episodes = 4, 6
    cfg.eval.records = min(cfg.eval.records, 1)
    return cfg


smoke = smoke_config  # the name `hrmlab.presets.resolve` calls


def describe_diffusion(cfg: DiffusionExperimentConfig) -> str:
    """One line for `hrmlab presets`: model size, data, training, sampling, protocols."""
    from hrmlab.diffusion.unet1d import build_denoiser

    params = count_parameters(build_denoiser(cfg.model, cfg.world.map_size))
    batch = "full-batch" if cfg.train.batch_size <= 0 else f"batch {cfg.train.batch_size}"
    return (f"{cfg.model.architecture} ({cfg.model.conditioning} conditioning) {params:,} params · "
            f"{cfg.data.num_paths:,} expert paths · {cfg.train.steps:,} {batch} steps · {cfg.sampling.num_samples} "
            f"samples × {cfg.noise.steps} {cfg.noise.formulation} steps · protocols {' + '.join(cfg.eval.protocols)}")


# ------------------------------------------------------------------------------------------ pipeline


def training_noise(noise: NoiseConfig) -> dict:
    """The noise settings training depends on (sampler-only settings change no trained weights)."""
    fields = {"formulation": noise.formulation}
    if noise.formulation == "ddpm":
        fields.update(steps=noise.steps, beta_start=noise.beta_start, beta_end=noise.beta_end)
    return fields


TRAIN_FORMAT = 1
"""Part of the training stage's key: bump it when the trained planner's file changes meaning."""


def stage_keys(cfg: DiffusionExperimentConfig) -> dict:
    """Cache keys of the three stages (hashes of exactly the settings each depends on, and its format)."""
    data_key = expert_data_key(cfg.world, cfg.expert, cfg.data)
    train_key = stage_key({"data": data_key, "model": to_dict(cfg.model), "noise": training_noise(cfg.noise),
                           "train": to_dict(cfg.train)}, TRAIN_FORMAT)
    eval_key = stage_key({"train": train_key, "world": to_dict(cfg.world), "expert": to_dict(cfg.expert),
                          "sampling": to_dict(cfg.sampling), "eval": to_dict(cfg.eval), "noise": to_dict(cfg.noise)},
                         RESULT_FORMAT)
    return {"expert_data": data_key, "train": train_key, "eval": eval_key}


def stage_train(cfg: DiffusionExperimentConfig, task: DiffusionTrainTask, key: str,
                train_runner: Callable[[DiffusionTrainTask], str]) -> tuple[Path, object, ModelConfig]:
    """The training stage: (planner.pt, the loaded planner, its model config), trained or from the cache.
    A planner whose checksum or training noise does not match is retrained, not an error."""
    train_dir = Path(task.out_dir)

    def load(doc: dict):
        path = train_dir / doc["planner"]
        planner, model_cfg, trained_noise = load_planner(path, device=pick_device(cfg.train.device))
        if training_noise(trained_noise) != training_noise(cfg.noise):
            raise StageCorrupt(f"{path} was trained with {trained_noise}, not {cfg.noise}")
        return path, planner, model_cfg

    return cached(Stage("train/diffusion", train_dir / "stage.json", key, folder=train_dir),
                  lambda: {"planner": Path(train_runner(task)).name}, load,
                  files=lambda doc: [train_dir / doc["planner"]])


def stage_evaluate(cfg: DiffusionExperimentConfig, protocol: str, planner, eval_dir: Path, key: str,
                   progress: bool) -> EvaluationResult:
    """One protocol's evaluation stage (its episode records are checksummed with it)."""
    def run() -> dict:
        return evaluation.evaluate_protocol(protocol, cfg.world, cfg.expert, cfg.sampling, cfg.eval, planner=planner,
                                            noise_cfg=cfg.noise, path_points=cfg.data.path_points, progress=progress,
                                            record_dir=eval_dir / "records", records=cfg.eval.records).to_json()

    return cached(Stage(f"evaluate/{protocol}", eval_dir / f"results-{protocol}.json", key), run,
                  EvaluationResult.from_json, files=lambda doc: [eval_dir / "records" / n for n in doc.get("records", [])])


def run_diffusion(cfg: DiffusionExperimentConfig, run_dir, cache_root, backend, smoke: bool = False,
                  progress: bool = True, train_runner: Callable[[DiffusionTrainTask], str] | None = None,
                  shrunk: bool = False) -> RunResult:
    """Expert data → training → evaluation; returns the run's results, written once to run_dir/results.json
    (with the resolved config in run_dir/config.yaml and the episode records in run_dir/records), at the end
    (`rundir.write_run`): a run that fails leaves the folder of the previous run as it was.

    `evaluations` maps each protocol to its `EvaluationResult` (methods diffusion, diffusion-raw, line,
    line+refine, oracle); the headline protocol is eval.protocols[0] (`primary_protocol`). `records` lists
    the .npz episode records written for animations. smoke: shrink `cfg` first; shrunk: `cfg` already is
    (both mark the results as a smoke run).
    train_runner: runs the training task (default: in this process; on Modal: a GPU container)."""
    if smoke:
        cfg = smoke_config(cfg)
    if not cfg.eval.protocols:
        raise UserError("eval.protocols is empty; valid protocols: seed, standard")
    t_start = time.perf_counter()
    run_dir, cache = Path(run_dir), Path(cache_root) / "diffusion"
    keys = stage_keys(cfg)
    old_threads = torch.get_num_threads()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    timings = {}
    try:
        t0 = time.perf_counter()
        manifest = generate_expert_data(cfg.world, cfg.expert, cfg.data, cache / "expert" / keys["expert_data"],
                                        backend, progress=progress)
        data = load_expert_data(manifest)
        timings["expert_data_s"] = round(time.perf_counter() - t0, 1)
        log.info("expert data: %d paths (%s)", len(data["paths"]), manifest.parent)

        t0 = time.perf_counter()
        train_dir = cache / "train" / keys["train"]
        task = DiffusionTrainTask(str(manifest), cfg.model, cfg.noise, cfg.train, cfg.world.map_size,
                                  str(train_dir), progress=progress)
        planner_path, planner, model_cfg = stage_train(cfg, task, keys["train"], train_runner or run_train_task)
        timings["train_s"] = round(time.perf_counter() - t0, 1)

        evaluations, records = {}, []
        t0 = time.perf_counter()
        eval_dir = cache / "eval" / keys["eval"]
        for protocol in cfg.eval.protocols:
            result = stage_evaluate(cfg, protocol, planner, eval_dir, keys["eval"], progress)
            records += [f"records/{name}" for name in result.records]  # copied into run_dir at the end
            log.info("%s\n%s", cfg.name, evaluation.format_table(result))
            evaluations[protocol] = result
        timings["eval_s"] = round(time.perf_counter() - t0, 1)
    finally:
        torch.set_num_threads(old_threads)
    results = RunResult(
        preset=cfg.name, family="diffusion", description=cfg.description, provenance=cfg.provenance,
        published=cfg.published, smoke=smoke or shrunk, primary_protocol=cfg.eval.protocols[0],
        evaluations=evaluations, records=records,
        training={"diffusion": {"metrics": str(train_dir / "metrics.jsonl"), "steps": cfg.train.steps}},
        seconds=round(time.perf_counter() - t_start, 1),
        details={"config_hash": config_hash(cfg), "stage_keys": keys,
                 "model": {"architecture": model_cfg.architecture, "conditioning": model_cfg.conditioning,
                           "parameters": count_parameters(planner.denoiser), "checkpoint": str(planner_path)},
                 "noise": to_dict(cfg.noise), "expert_paths": int(len(data["paths"])), "timings": timings})

    def copy_records() -> None:
        for rel in records:
            (run_dir / "records").mkdir(exist_ok=True)
            shutil.copyfile(eval_dir / rel, run_dir / rel)

    from hrmlab.report.rundir import write_run

    write_run(run_dir, cfg, results.to_json(), files=copy_records)
    return results


def run_diffusion_pipeline(cfg: DiffusionExperimentConfig, opts, backend=None,
                           train_runner: Callable[[DiffusionTrainTask], str] | None = None) -> RunResult:
    """`hrmlab run` for a diffusion preset: `opts` is the pipeline's RunOptions (out, cache, smoke, workers,
    progress); `cfg` is already shrunk when opts.smoke. Writes results.json and the report.
    backend / train_runner: where expert generation and training run (default: local processes, this
    process; the Modal orchestrator passes its own)."""
    from hrmlab.backends.local import make_backend
    from hrmlab.report.report import write_report

    results = run_diffusion(cfg, opts.out, opts.cache, backend or make_backend(opts.workers), progress=opts.progress,
                            train_runner=train_runner, shrunk=bool(opts.smoke))
    write_report(opts.out, animations=0 if opts.smoke else 2)
    return results


def print_diffusion_summary(results: RunResult, cfg=None) -> None:
    """The console summary of `hrmlab run` for a diffusion preset."""
    for protocol, result in results.evaluations.items():
        print()
        print(evaluation.format_table(result))
        significant = [p for p in result.pairwise if p.p_value < 0.05 and "diffusion" in (p.a, p.b)]
        for p in significant:
            winner = p.a if p.a_only > p.b_only else p.b
            print(f"  {p.a} vs {p.b}: {winner} better (exact McNemar p = {p.p_value:.3g})")
    if results.published:
        print("\npublished by the seed: " + "; ".join(f"{k}: {v}" for k, v in results.published.items()))
    model = results.details["model"]
    print(f"model: {model['architecture']} ({model['conditioning']} conditioning), {model['parameters']:,} "
          f"parameters; {results.details['expert_paths']:,} expert paths")
