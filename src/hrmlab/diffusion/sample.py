"""Diffusion planning: N samples per episode in one batch, endpoints pinned, refined, best one kept.

For a chunk of episodes the condition (map + start/goal) is encoded once, repeated for the N samples of
each episode, and every denoising step is one batched network call over all samples of all episodes in
the chunk. Refinement and scoring are vectorised over all samples (`refine.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hrmlab.diffusion.noise import PathDiffusion
from hrmlab.diffusion.refine import distance_field, path_penalty, refine_paths


@dataclass
class SamplingConfig:
    """Inference settings. Defaults are the seed's v2."""

    num_samples: int = 10
    """Paths sampled per episode; the best-scoring one (after refinement) is returned."""
    refine_steps: int = 40
    """SDF push-away + smoothing iterations applied to every sample (0: no refinement)."""
    refine_step_size: float = 0.5
    """Push-away step: multiple of the field's central difference added per iteration."""
    clearance_margin: float = 3.0
    """Points with field value below this are pushed and penalised (the seed: obstacle radius + 1)."""
    episodes_per_batch: int = 16
    """Episodes whose samples share one network batch (bounds memory: × num_samples sequences)."""
    seed: int = 0
    """Seed of the sampling generator (initial noise and DDPM noise)."""


def line_paths(start: np.ndarray, goal: np.ndarray, points: int) -> np.ndarray:
    """Straight start → goal lines, (B, points, 2) in cell units (the baseline's raw path)."""
    w = np.linspace(0.0, 1.0, points)[None, :, None]
    return (1 - w) * np.asarray(start, np.float64)[:, None, :] + w * np.asarray(goal, np.float64)[:, None, :]


def refine_and_pick(samples: np.ndarray, field: np.ndarray, cfg: SamplingConfig) -> dict:
    """samples (B, S, L, 2) cells, field (B, G, G) → best refined path per episode and its score."""
    b, s, length, _ = samples.shape
    which = np.repeat(np.arange(b), s)
    flat = samples.reshape(b * s, length, 2)
    refined = refine_paths(flat, field, cfg.refine_steps, cfg.refine_step_size, cfg.clearance_margin, which)
    scores = path_penalty(refined, field, cfg.clearance_margin, which).reshape(b, s)
    raw_scores = path_penalty(flat, field, cfg.clearance_margin, which).reshape(b, s)
    best = scores.argmin(axis=1)  # first minimum, as the seed's strict '<'
    raw_best = raw_scores.argmin(axis=1)
    rows = np.arange(b)
    return {"paths": refined.reshape(b, s, length, 2)[rows, best], "scores": scores[rows, best],
            "raw_paths": samples[rows, raw_best], "raw_scores": raw_scores[rows, raw_best], "samples": samples}


@torch.no_grad()
def sample_paths(denoiser: torch.nn.Module, diffusion: PathDiffusion, occupancy: np.ndarray, start: np.ndarray,
                 goal: np.ndarray, num_samples: int, points: int, map_size: int,
                 generator: torch.Generator) -> np.ndarray:
    """Raw diffusion samples (B, S, points, 2) in cell units for B episodes, one batch of B·S."""
    device = next(denoiser.parameters()).device
    b = len(start)
    grid = torch.as_tensor(np.asarray(occupancy, dtype=np.float32)[:, None], device=device)
    start_n = torch.as_tensor(np.asarray(start, np.float32) / map_size, device=device)
    goal_n = torch.as_tensor(np.asarray(goal, np.float32) / map_size, device=device)
    cond = denoiser.encode_condition(grid, torch.cat([start_n, goal_n], dim=1))
    cond = cond.repeat_interleave(num_samples, dim=0)
    x0 = diffusion.sample(lambda x, t: denoiser.denoise(x, t, cond), (b * num_samples, 2, points),
                          start_n.repeat_interleave(num_samples, 0), goal_n.repeat_interleave(num_samples, 0),
                          generator)
    return (x0.transpose(1, 2).float().cpu().numpy() * map_size).reshape(b, num_samples, points, 2)


def plan_with_diffusion(denoiser: torch.nn.Module, diffusion: PathDiffusion, occupancy: np.ndarray,
                        start: np.ndarray, goal: np.ndarray, cfg: SamplingConfig, points: int,
                        map_size: int, progress: bool = False) -> dict:
    """Best refined diffusion path per episode (`paths`, (B, points, 2)), its `scores`, the best raw
    (unrefined) sample (`raw_paths`, `raw_scores`) and all raw `samples` (B, S, points, 2), processed
    `episodes_per_batch` episodes at a time with a generator seeded by `cfg.seed`."""
    from tqdm import tqdm

    device = next(denoiser.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    field = distance_field(occupancy)
    parts = []
    chunks = range(0, len(start), cfg.episodes_per_batch)
    for lo in tqdm(chunks, desc="diffusion sampling", unit="batch", disable=not progress):
        hi = min(lo + cfg.episodes_per_batch, len(start))
        samples = sample_paths(denoiser, diffusion, occupancy[lo:hi], start[lo:hi], goal[lo:hi],
                               cfg.num_samples, points, map_size, generator)
        parts.append(refine_and_pick(samples, field[lo:hi], cfg))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
