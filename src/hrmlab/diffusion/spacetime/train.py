"""Training the space-time denoiser on expert trajectories, through the shared trainer.

Loss (the trainer's `loss_fn` hook): x_s = (1 − s)·x₀ + s·ε with s ~ U[0, 1), point 0 given clean,
MSE between the predicted and the true x₀ over points 1 … T−1 (map units). The condition is the
example's static map, start, goal and the obstacles' **true** future; `forecast_dropout` of the examples
have their forecast masked. Augmentation maps whole examples (map, cells, obstacles) through the
square's symmetries: `dihedral` (8; BlobWorld, whose start and goal are anywhere) or `transpose`
(BounceGrid, whose start and goal sit on the diagonal). The EMA of the weights and the noise generator
are `diffusion.train.DiffusionHooks` (checkpointed, so a killed run resumes exactly).

The result is `planner.pt`: the EMA denoiser and what rebuilds it (`load_st_planner`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from hrmlab.config import from_dict, to_dict
from hrmlab.diffusion.spacetime.model import STDenoiser, STModelConfig, clearance_field, count_parameters, to_units
from hrmlab.diffusion.train import DiffusionHooks, denoiser_trainer_config
from hrmlab.errors import UserError
from hrmlab.train.checkpoint import load_checkpoint, save_checkpoint
from hrmlab.train.trainer import train

log = logging.getLogger(__name__)

PLANNER_FILE = "planner.pt"


@dataclass
class STTrainConfig:
    """Denoiser training (AdamW, cosine schedule, EMA)."""

    steps: int = 3000
    """Optimiser steps."""
    batch_size: int = 64
    """Trajectories per step."""
    lr: float = 2e-3
    """AdamW learning rate at the first step."""
    min_lr: float = 1e-5
    """Cosine schedule's learning rate at the last step."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Max global gradient norm (0: off)."""
    ema_decay: float = 0.995
    """Decay of the weights' moving average used for planning."""
    augment: Literal["dihedral", "transpose", "none"] = "dihedral"
    """Symmetries applied to training examples (see the module docstring)."""
    checkpoint_every_steps: int = 500
    """Write last.pt every this many steps."""
    log_every_steps: int = 100
    """Metrics row (JSONL) every this many steps."""
    seed: int = 0
    """Seeds batch order, weight init, noise and augmentation."""
    device: str = "auto"
    """auto (cuda if available, else cpu) or a torch device string."""


class TrajectorySource:
    """Expert examples as the trainer's sample source: (static, clearance, start, goal, obstacles, path),
    all float32 in cells (static 0/1)."""

    history = 0  # SampleSource protocol field; unused here

    def __init__(self, data: dict):
        self.static = np.asarray(data["static"], dtype=bool)
        self.clearance = clearance_field(self.static)
        self.start = np.asarray(data["start"], dtype=np.float32)
        self.goal = np.asarray(data["goal"], dtype=np.float32)
        self.obstacles = np.asarray(data["obstacles"], dtype=np.float32)
        self.path = np.asarray(data["path"], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.path)

    def get_batch(self, indices: np.ndarray) -> tuple:
        return (self.static[indices].astype(np.float32), self.clearance[indices], self.start[indices],
                self.goal[indices], self.obstacles[indices], self.path[indices])


def augment_batch(batch: tuple, mode: str, grid_size: int, generator: torch.Generator) -> tuple:
    """Apply a random symmetry of the square per example: maps (b, G, G), cells (..., 2)."""
    if mode == "none":
        return batch
    static, clearance, start, goal, obstacles, path = batch
    b, hi = static.shape[0], grid_size - 1
    ops = ("transpose",) if mode == "transpose" else ("transpose", "flip_rows", "flip_cols")
    for op in ops:
        pick = torch.rand(b, generator=generator, device=static.device) < 0.5
        if not pick.any():
            continue
        if op == "transpose":
            m = lambda a: a.transpose(1, 2)  # noqa: E731
            c = lambda a: a.flip(-1)  # noqa: E731
        elif op == "flip_rows":
            m = lambda a: a.flip(1)  # noqa: E731
            c = lambda a: torch.stack([hi - a[..., 0], a[..., 1]], dim=-1)  # noqa: E731
        else:
            m = lambda a: a.flip(2)  # noqa: E731
            c = lambda a: torch.stack([a[..., 0], hi - a[..., 1]], dim=-1)  # noqa: E731
        static = torch.where(pick[:, None, None], m(static), static)
        clearance = torch.where(pick[:, None, None], m(clearance), clearance)
        start = torch.where(pick[:, None], c(start), start)
        goal = torch.where(pick[:, None], c(goal), goal)
        obstacles = torch.where(pick[:, None, None, None], c(obstacles), obstacles)
        path = torch.where(pick[:, None, None], c(path), path)
    return static, clearance, start, goal, obstacles, path


def make_loss_fn(cfg: STTrainConfig, model_cfg: STModelConfig, grid_size: int, hooks: DiffusionHooks):
    def loss(model: nn.Module, batch: tuple) -> torch.Tensor:
        gen = hooks.generator_for(batch[0].device)
        static, clearance, start, goal, obstacles, path = augment_batch(batch, cfg.augment, grid_size, gen)
        b = static.shape[0]
        mask = (torch.rand(b, generator=gen, device=static.device) >= model_cfg.forecast_dropout).float()
        cond = model.encode(static, clearance, start, goal, obstacles, mask)
        x0 = to_units(path, grid_size).transpose(1, 2)[:, None]  # (b, 1, 2, T)
        level = torch.rand(b, generator=gen, device=static.device)
        eps = torch.randn(x0.shape, generator=gen, device=static.device)
        x = (1 - level)[:, None, None, None] * x0 + level[:, None, None, None] * eps
        x = torch.cat([x0[..., :1], x[..., 1:]], dim=-1)
        pred = model(x, level, cond)
        return ((pred - x0)[..., 1:] ** 2).mean()

    return loss


class STPlannerModule(nn.Module):
    """The inference artifact: the EMA denoiser (its grid size and horizon are attributes)."""

    def __init__(self, denoiser: STDenoiser):
        super().__init__()
        self.denoiser = denoiser


def train_st(data: dict, model_cfg: STModelConfig, cfg: STTrainConfig, grid_size: int, out_dir,
             progress: bool = True) -> Path:
    """Train (or resume, or skip when finished) in `out_dir`; returns the path of planner.pt."""
    out_dir = Path(out_dir)
    final = out_dir / PLANNER_FILE
    if final.exists():
        log.info("space-time denoiser %s already trained", final)
        return final
    source = TrajectorySource(data)
    n = len(source)
    if n == 0:
        raise UserError("no expert trajectories to train on; raise data.episodes")
    horizon = source.path.shape[1]
    batch = min(cfg.batch_size, n)
    trainer_cfg = denoiser_trainer_config(cfg, n, batch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = STDenoiser(model_cfg, grid_size, horizon)
    log.info("space-time denoiser: %s parameters, %d expert trajectories of %d points, batch %d, %d steps",
             f"{count_parameters(model):,}", n, horizon, batch, cfg.steps)
    hooks = DiffusionHooks(model, cfg.ema_decay, cfg.seed)
    config = {"st_model": to_dict(model_cfg), "st_train": to_dict(cfg), "grid_size": grid_size, "horizon": horizon}
    train(model, source, None, trainer_cfg, out_dir, config_dict=config, progress=progress,
          loss_fn=make_loss_fn(cfg, model_cfg, grid_size, hooks), hooks=hooks)
    save_checkpoint(final, model=STPlannerModule(hooks.ema.cpu()), step=cfg.steps, epoch=0,
                    config={"model": to_dict(model_cfg), "grid_size": grid_size, "horizon": horizon})
    return final


def load_st_planner(path, device: str | torch.device = "cpu") -> tuple[STDenoiser, STModelConfig]:
    """The trained EMA denoiser of `planner.pt`."""
    if not Path(path).is_file():
        raise UserError(f"trained space-time planner {path} does not exist; run training first")
    payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file: read the config first
    config = payload.get("config") or {}
    if "horizon" not in config:
        raise UserError(f"{path} is not a space-time planner checkpoint")
    model_cfg = from_dict(STModelConfig, config["model"])
    module = STPlannerModule(STDenoiser(model_cfg, config["grid_size"], config["horizon"]))
    load_checkpoint(path, model=module, map_location="cpu", restore_rng=False)
    return module.denoiser.to(device).eval(), model_cfg
