"""The diffusion-planner experiment: expert paths → training → evaluation, each stage cached by config hash.

`run_diffusion(cfg, run_dir, cache_root, backend)` runs the whole pipeline. Stage outputs live under
`cache_root/diffusion/` in folders named by the hash of exactly the settings that produce them
(expert data: world + expert + data; model: those + model + noise + train; evaluation: everything), so
a finished stage is reused, a changed setting recomputes, and an interrupted stage resumes (expert
shards are checksummed, training resumes from `last.pt`). The run directory receives the resolved
config and `results.json`.

Ready configs: `diffusion-v0`, `diffusion-v1`, `diffusion-v2` (the seed's `diffusion_cloud.py`, its
quirks included: seed conditioning, the mismatched sampler, the unclipped planner roll-out) and
`diffusion-cpu` (the corrected recipe at a size that trains and evaluates in about 15 minutes on 2 CPU
cores). `smoke_config` shrinks any of them to seconds.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hrmlab.config import config_hash, to_dict
from hrmlab.diffusion import evaluate as evaluation
from hrmlab.diffusion.evaluate import DiffusionEvalConfig
from hrmlab.diffusion.expert import (ExpertConfig, ExpertDataConfig, expert_data_key, generate_expert_data,
                                     load_expert_data)
from hrmlab.diffusion.noise import NoiseConfig
from hrmlab.diffusion.sample import SamplingConfig
from hrmlab.diffusion.train import DiffusionTrainConfig, load_planner, train_diffusion
from hrmlab.diffusion.unet1d import ModelConfig, count_parameters
from hrmlab.errors import UserError
from hrmlab.worlds.blob_world import BlobWorldConfig

log = logging.getLogger(__name__)


@dataclass
class DiffusionExperimentConfig:
    """One diffusion-planner experiment. Defaults: the seed's v2 recipe with its bugs fixed."""

    name: str = "diffusion"
    """Experiment name (shown in results and reports)."""
    description: str = ""
    """One line on what this configuration is and where its numbers come from."""
    published_success: float | None = None
    """The seed README's success rate for this configuration (50 episodes), for comparison; None if none."""
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


# ------------------------------------------------------------------------------------------ presets


def diffusion_v2() -> DiffusionExperimentConfig:
    """The seed's diffusion_cloud.py (v2), quirks included; fix them with model.conditioning=full,
    noise.formulation=interpolation, expert.forecast_clip=true."""
    return DiffusionExperimentConfig(
        name="diffusion-v2",
        description="the seed's diffusion_cloud.py: ConditionalUnet1D (4,128,258 params), 5,000 expert paths, "
                    "2,000 full-batch steps with EMA, 10 samples × 100 DDPM steps, 40 refinement steps",
        published_success=0.60,
        expert=ExpertConfig(forecast_clip=False),
        data=ExpertDataConfig(num_paths=5000, paths_per_shard=100),
        model=ModelConfig(architecture="unet-v2", conditioning="seed"),
        noise=NoiseConfig(formulation="seed", steps=100),
        train=DiffusionTrainConfig(steps=2000, batch_size=0),
        sampling=SamplingConfig(num_samples=10, refine_steps=40),
    )


def diffusion_v1() -> DiffusionExperimentConfig:
    """v1 rebuilt from the seed README: ≈500k conv denoiser, 2,500 paths, 1,000 steps, 50-step linear
    DDPM, 5 samples, 20 refinement steps."""
    return DiffusionExperimentConfig(
        name="diffusion-v1",
        description="v1 rebuilt from the README (overwritten in the seed): 528,706-param conv denoiser, "
                    "2,500 paths, 1,000 full-batch steps, 50-step linear DDPM, 5 samples, 20 refinement steps",
        published_success=0.64,
        expert=ExpertConfig(forecast_clip=False),
        data=ExpertDataConfig(num_paths=2500, paths_per_shard=100),
        model=ModelConfig(architecture="conv-v1", conditioning="full"),
        noise=NoiseConfig(formulation="ddpm", steps=50),
        train=DiffusionTrainConfig(steps=1000, batch_size=0, ema_decay=0.999),
        sampling=SamplingConfig(num_samples=5, refine_steps=20),
    )


def diffusion_v0() -> DiffusionExperimentConfig:
    """v0 rebuilt from the seed README: v1's model and sampler with 500 paths and 100 steps."""
    cfg = diffusion_v1()
    cfg.name = "diffusion-v0"
    cfg.description = ("v0 rebuilt from the README (overwritten in the seed): v1's denoiser and sampler, "
                       "500 paths, 100 training steps")
    cfg.published_success = 0.20
    cfg.data = ExpertDataConfig(num_paths=500, paths_per_shard=100)
    cfg.train = DiffusionTrainConfig(steps=100, batch_size=0, checkpoint_every_steps=50)
    return cfg


def diffusion_cpu() -> DiffusionExperimentConfig:
    """The corrected recipe at CPU size: ≈15 minutes on 2 cores, end to end."""
    return DiffusionExperimentConfig(
        name="diffusion-cpu",
        description="corrected v2 recipe at CPU size: ConditionalUnet1D width 32 with start/goal conditioning, "
                    "consistent 20-step sampler, 2,000 expert paths, 1,500 steps of batch 64, 8 samples",
        data=ExpertDataConfig(num_paths=2000, paths_per_shard=100),
        model=ModelConfig(architecture="unet-v2", conditioning="full", base_channels=32),
        noise=NoiseConfig(formulation="interpolation", steps=20),
        train=DiffusionTrainConfig(steps=1500, batch_size=64, checkpoint_every_steps=250),
        sampling=SamplingConfig(num_samples=8, refine_steps=40, episodes_per_batch=25),
        eval=DiffusionEvalConfig(protocols=["seed", "standard"], test_episodes=500),
    )


DIFFUSION_PRESETS = {"diffusion-v0": diffusion_v0, "diffusion-v1": diffusion_v1, "diffusion-v2": diffusion_v2,
                     "diffusion-cpu": diffusion_cpu}


def diffusion_preset(name: str) -> DiffusionExperimentConfig:
    if name not in DIFFUSION_PRESETS:
        raise UserError(f"unknown diffusion preset {name!r}; valid choices: {', '.join(DIFFUSION_PRESETS)}")
    return DIFFUSION_PRESETS[name]()


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
    return cfg


# ------------------------------------------------------------------------------------------ pipeline


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def stage_keys(cfg: DiffusionExperimentConfig) -> dict:
    """Cache keys of the three stages (hashes of exactly the settings each depends on)."""
    data_key = expert_data_key(cfg.world, cfg.expert, cfg.data)
    train_key = config_hash({"data": data_key, "model": to_dict(cfg.model), "noise": to_dict(cfg.noise),
                             "train": to_dict(cfg.train)})
    eval_key = config_hash({"train": train_key, "world": to_dict(cfg.world), "expert": to_dict(cfg.expert),
                            "sampling": to_dict(cfg.sampling), "eval": to_dict(cfg.eval),
                            "noise": to_dict(cfg.noise)})
    return {"expert_data": data_key, "train": train_key, "eval": eval_key}


def run_diffusion(cfg: DiffusionExperimentConfig, run_dir, cache_root, backend, smoke: bool = False,
                  progress: bool = True) -> dict:
    """Expert data → training → evaluation; returns the JSON-serialisable results (also written to
    run_dir/results.json). The headline protocol (eval.protocols[0]) is at the top level, every
    protocol under `by_protocol`."""
    if smoke:
        cfg = smoke_config(cfg)
    if not cfg.eval.protocols:
        raise UserError("eval.protocols is empty; valid protocols: seed, standard")
    run_dir, cache = Path(run_dir), Path(cache_root) / "diffusion"
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", to_dict(cfg))
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
        timings["expert_data_s"] = time.perf_counter() - t0
        log.info("expert data: %d paths (%s)", len(data["paths"]), manifest.parent)

        t0 = time.perf_counter()
        planner_path = train_diffusion(data, cfg.model, cfg.noise, cfg.train, cfg.world.map_size,
                                       cache / "train" / keys["train"], progress=progress)
        timings["train_s"] = time.perf_counter() - t0
        planner, model_cfg, noise_cfg = load_planner(planner_path)

        by_protocol = {}
        t0 = time.perf_counter()
        for protocol in cfg.eval.protocols:
            cached = cache / "eval" / keys["eval"] / f"results-{protocol}.json"
            if cached.exists():
                result = json.loads(cached.read_text())
            else:
                result = evaluation.evaluate_protocol(protocol, cfg.world, cfg.expert, cfg.sampling, cfg.eval,
                                                      planner=planner, noise_cfg=noise_cfg,
                                                      path_points=cfg.data.path_points, progress=progress)
                _write_json(cached, result)
            log.info("%s\n%s", cfg.name, evaluation.format_table(result))
            by_protocol[protocol] = result
        timings["eval_s"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)
    head = by_protocol[cfg.eval.protocols[0]]
    results = {
        "experiment": cfg.name,
        "smoke": smoke,
        "config_hash": config_hash(cfg),
        "stage_keys": keys,
        "protocol": head["protocol"],
        "episodes": head["episodes"],
        "results": head["results"],
        "pairwise": head["pairwise"],
        "by_protocol": by_protocol,
        "published_success": cfg.published_success,
        "model": {"architecture": model_cfg.architecture, "conditioning": model_cfg.conditioning,
                  "parameters": count_parameters(planner.denoiser)},
        "noise": to_dict(noise_cfg),
        "expert_paths": int(len(data["paths"])),
        "timings": timings,
    }
    _write_json(run_dir / "results.json", results)
    return results
