"""Training the path denoiser on expert paths, through the shared trainer (`hrmlab.train.trainer`).

The diffusion objective enters as the trainer's `loss_fn(model, batch)` hook: corrupt the normalised
expert paths with the configured noise formulation and regress the noise (MSE). An EMA of the weights
(decay 0.999) and the private noise generator live in a `TrainHooks` object, so both are stored in every
checkpoint and a killed run resumes exactly. AdamW, the cosine schedule to `min_lr`, gradient
clipping, JSONL metrics, progress bars and `last.pt` checkpoints come from the trainer.

The result is `planner.pt`: the EMA denoiser with its normalisation (coordinates ÷ map size) and the
configs needed to rebuild it — the file inference loads (`load_planner`).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hrmlab.config import from_dict, to_dict
from hrmlab.diffusion.noise import NoiseConfig, PathDiffusion
from hrmlab.diffusion.unet1d import ModelConfig, build_denoiser, count_parameters
from hrmlab.train.checkpoint import load_checkpoint, save_checkpoint
from hrmlab.train.trainer import TrainConfig, TrainHooks, train

log = logging.getLogger(__name__)

PLANNER_FILE = "planner.pt"


@dataclass
class DiffusionTrainConfig:
    """Denoiser training. Defaults are the seed's v2 (2,000 full-batch steps)."""

    steps: int = 2000
    """Optimiser steps in total."""
    batch_size: int = 0
    """Paths per step; 0 = the whole data set every step (the seed's full-batch training)."""
    lr: float = 1e-3
    """AdamW learning rate at the first step."""
    min_lr: float = 1e-5
    """Cosine schedule's learning rate at the last step."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Max global gradient norm (0: off)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights used for inference."""
    checkpoint_every_steps: int = 200
    """Write last.pt every this many steps (the trainer also writes it at every epoch end)."""
    log_every_steps: int = 50
    """Metrics row (JSONL) every this many steps."""
    seed: int = 0
    """Seeds batch order, weight init and the noise generator."""
    device: str = "auto"
    """auto (cuda if available, else cpu) or a torch device string."""


class ExpertPathSource:
    """Expert paths as the trainer's sample source: batches of (grid (b,1,G,G), start_goal (b,4), path (b,2,L)),
    all float32 and normalised by the map size (the occupancy grid is 0/1)."""

    history = 0  # SampleSource protocol field; unused by the diffusion loss

    def __init__(self, data: dict, map_size: int):
        self.grids = np.asarray(data["grids"], dtype=bool)
        self.start_goal = np.asarray(data["start_goal"], dtype=np.float32) / map_size
        self.paths = np.ascontiguousarray(np.asarray(data["paths"], dtype=np.float32).transpose(0, 2, 1)) / map_size

    def __len__(self) -> int:
        return len(self.paths)

    def get_batch(self, indices: np.ndarray) -> tuple:
        return self.grids[indices, None].astype(np.float32), self.start_goal[indices], self.paths[indices]


class DiffusionHooks(TrainHooks):
    """EMA of the weights and the private noise generator; both checkpointed with the run."""

    def __init__(self, model: nn.Module, decay: float, seed: int):
        self.decay = decay
        self.seed = seed
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.generator: torch.Generator | None = None
        self._pending_generator_state = None

    def generator_for(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed + 1)
            if self._pending_generator_state is not None:
                self.generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
        return self.generator

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        if self.ema_device() != next(model.parameters()).device:
            self.ema.to(next(model.parameters()).device)
        for e, p in zip(self.ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - self.decay)
        for e, b in zip(self.ema.buffers(), model.buffers()):
            e.copy_(b)

    def ema_device(self) -> torch.device:
        return next(self.ema.parameters()).device

    def state_dict(self) -> dict:
        state = {"ema": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if "generator" in state:
            self._pending_generator_state = state["generator"]
            self.generator = None


def denoiser_trainer_config(cfg, examples: int, batch: int) -> TrainConfig:
    """The shared trainer's settings for a denoiser run: AdamW, cosine schedule to `min_lr`, and as many
    epochs of `examples // batch` steps as reach `cfg.steps`. `cfg` is a `DiffusionTrainConfig` or a
    space-time `STTrainConfig`: both denoisers train with the same recipe, only their settings differ."""
    return TrainConfig(
        optimizer="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, schedule="cosine", min_lr=cfg.min_lr,
        epochs=math.ceil(cfg.steps / max(1, examples // batch)), batch_size=batch, grad_clip=cfg.grad_clip,
        seed=cfg.seed, checkpoint_every_steps=cfg.checkpoint_every_steps, log_every_steps=cfg.log_every_steps,
        max_steps=cfg.steps, device=cfg.device)


def make_loss_fn(diffusion: PathDiffusion, hooks: DiffusionHooks):
    def diffusion_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
        grids, start_goal, paths = batch
        x_t, t, eps = diffusion.training_example(paths, hooks.generator_for(paths.device))
        return F.mse_loss(model(x_t, t, grids, start_goal), eps)

    return diffusion_loss


class PlannerModule(nn.Module):
    """The inference artifact: the (EMA) denoiser plus its normalisation as buffers."""

    def __init__(self, denoiser: nn.Module, map_size: int, path_points: int):
        super().__init__()
        self.denoiser = denoiser
        self.register_buffer("coord_scale", torch.tensor(float(map_size)))
        self.register_buffer("path_points", torch.tensor(int(path_points)))


def train_diffusion(data: dict, model_cfg: ModelConfig, noise_cfg: NoiseConfig, cfg: DiffusionTrainConfig,
                    map_size: int, out_dir, progress: bool = True) -> Path:
    """Train (or resume, or skip if finished) in `out_dir`; returns the path of `planner.pt`."""
    out_dir = Path(out_dir)
    final = out_dir / PLANNER_FILE
    if final.exists():
        log.info("diffusion model %s already trained", final)
        return final
    source = ExpertPathSource(data, map_size)
    n = len(source)
    if n == 0:
        from hrmlab.errors import UserError

        raise UserError("no expert paths to train on; raise data.num_paths or data.attempts_per_path")
    batch = n if cfg.batch_size <= 0 else min(cfg.batch_size, n)
    trainer_cfg = denoiser_trainer_config(cfg, n, batch)
    with torch.random.fork_rng(devices=[]):  # seeded weight init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        denoiser = build_denoiser(model_cfg, map_size)
    log.info("diffusion denoiser %s: %s parameters, %d expert paths, batch %d, %d steps",
             model_cfg.architecture, f"{count_parameters(denoiser):,}", n, batch, cfg.steps)
    hooks = DiffusionHooks(denoiser, cfg.ema_decay, cfg.seed)
    diffusion = PathDiffusion(noise_cfg)
    config = {"model": to_dict(model_cfg), "noise": to_dict(noise_cfg), "diffusion_train": to_dict(cfg),
              "map_size": map_size}
    train(denoiser, source, None, trainer_cfg, out_dir, config_dict=config, progress=progress,
          loss_fn=make_loss_fn(diffusion, hooks), hooks=hooks)
    planner = PlannerModule(hooks.ema.cpu(), map_size, source.paths.shape[-1])
    save_checkpoint(final, model=planner, step=cfg.steps, epoch=0,
                    config={"model": to_dict(model_cfg), "noise": to_dict(noise_cfg), "map_size": map_size,
                            "path_points": int(source.paths.shape[-1])})
    return final


def load_planner(path, device: str | torch.device = "cpu") -> tuple[PlannerModule, ModelConfig, NoiseConfig]:
    """Rebuild the trained planner from `planner.pt` (EMA weights, normalisation, configs)."""
    from hrmlab.errors import UserError

    if not Path(path).is_file():
        raise UserError(f"trained diffusion planner {path} does not exist; run training first")
    payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file: read the config first
    config = payload.get("config") or {}
    model_cfg = from_dict(ModelConfig, config["model"])
    noise_cfg = from_dict(NoiseConfig, config["noise"])
    planner = PlannerModule(build_denoiser(model_cfg, config["map_size"]), config["map_size"], config["path_points"])
    load_checkpoint(path, model=planner, map_location="cpu", restore_rng=False)
    return planner.to(device).eval(), model_cfg, noise_cfg
