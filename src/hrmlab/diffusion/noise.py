"""Noise formulations: how training corrupts a path and how sampling removes the noise (SPEC §8).

Three formulations, chosen by `NoiseConfig.formulation`:

* `interpolation` (default): training draws t ~ U[0, 1) and x_t = (1 − t)·x₀ + t·ε and the network
  predicts ε. Sampling is the matching sampler: from x₁ ~ N(0, I), for t → t' on a uniform grid,
  x̂₀ = (x_t − t·ε̂)/(1 − t) (clipped to the map), endpoints pinned on x̂₀, then
  x_t' = (1 − t')·x̂₀ + t'·ε̂ — DDIM for this interpolation, i.e. Euler steps of its probability-flow
  ODE; with `eta` > 0 part of t'·ε̂ is replaced by fresh noise (η = 1: the DDPM posterior q(x_t' | x_t, x̂₀)
  of this process).
* `seed`: the seed's mismatch — the same training, but sampling with a DDPM whose betas come from a
  cosine ᾱ schedule clipped to [1e-4, 0.02], network time input i/steps, endpoints reset to the clean
  start/goal after every step.
* `ddpm`: discrete DDPM for v0/v1: linear betas (beta_start…beta_end as for a 1000-step schedule,
  rescaled to `steps` so the last step is pure noise), trained on q(x_i | x₀) with ε-prediction and
  sampled ancestrally with the same betas; network time input i/steps; endpoints reset after each step.

All randomness comes from an explicit `torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch


@dataclass
class NoiseConfig:
    """Noise formulation and sampler. Default: interpolation training with its consistent sampler."""

    formulation: Literal["interpolation", "seed", "ddpm"] = "interpolation"
    """interpolation: consistent default; seed: interpolation training + clipped-cosine DDPM sampling
    (the seed's v2); ddpm: linear-beta DDPM trained and sampled consistently (v0/v1)."""
    steps: int = 100
    """Denoising steps at sampling (ddpm: also the number of discrete training noise levels)."""
    beta_start: float = 1e-4
    """ddpm: first beta of the linear schedule, given for 1000 steps (scaled by 1000/steps)."""
    beta_end: float = 0.02
    """ddpm: last beta of the linear schedule, given for 1000 steps (scaled by 1000/steps)."""
    clip_x0: bool = True
    """interpolation: clip the predicted clean path into the map [0, 1] before each step."""
    eta: float = 1.0
    """interpolation: 1 = ancestral steps, the DDPM posterior q(x_t' | x_t, x̂₀) of the same process;
    0 = deterministic DDIM steps; in between scales the injected noise (DDIM's η). η = 1 is the default
    because it measured better (diffusion-cpu: seed protocol 37/50 vs 35/50, standard 56/500 vs 18/500)."""


def cosine_clipped_betas(steps: int, s: float = 0.008) -> torch.Tensor:
    """The seed's sampler betas: 1 − ᾱ(i+1)/ᾱ(i) of the cosine schedule, clipped to [1e-4, 0.02]."""
    grid = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    alpha_bar = torch.cos(((grid / steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alpha_bar = alpha_bar / alpha_bar[0]
    return torch.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0.0001, 0.02)


def linear_betas(steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    scale = 1000.0 / steps
    return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), steps, dtype=torch.float64)


class PathDiffusion:
    """Training targets and the sampling loop of one `NoiseConfig`."""

    def __init__(self, cfg: NoiseConfig):
        self.cfg = cfg
        if cfg.steps < 1:
            raise ValueError("noise.steps must be ≥ 1")
        if cfg.formulation == "seed":
            self.betas = cosine_clipped_betas(cfg.steps)
        elif cfg.formulation == "ddpm":
            self.betas = linear_betas(cfg.steps, cfg.beta_start, cfg.beta_end)
        else:
            self.betas = None
        if self.betas is not None:
            self.alphas = 1 - self.betas
            self.alpha_bars = torch.cumprod(self.alphas, 0)

    # ------------------------------------------------------------------ training
    def training_example(self, x0: torch.Tensor, generator: torch.Generator) -> tuple:
        """(x_t, t_input (B, 1), target ε) for clean paths x0 (B, 2, L)."""
        b = x0.shape[0]
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if self.cfg.formulation == "ddpm":
            i = torch.randint(0, self.cfg.steps, (b,), generator=generator, device=x0.device)
            ab = self.alpha_bars.to(x0.device, x0.dtype)[i][:, None, None]
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            return x_t, (i.to(x0.dtype) / self.cfg.steps)[:, None], eps
        t = torch.rand((b, 1), generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = (1 - t[:, :, None]) * x0 + t[:, :, None] * eps
        return x_t, t, eps

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple,
               start: torch.Tensor, goal: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Generate clean paths (B, 2, L) with endpoints pinned to `start`, `goal` (B, 2), normalised."""
        device, dtype = start.device, start.dtype
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        n = self.cfg.steps
        if self.cfg.formulation == "interpolation":
            grid = torch.linspace(1.0, 0.0, n + 1).tolist()
            for i in range(n):
                t, t_next = grid[i], grid[i + 1]
                eps = predict_noise(x, torch.full((shape[0], 1), t, device=device, dtype=dtype))
                x0 = (x - t * eps) / max(1.0 - t, 1e-3)
                if self.cfg.clip_x0:
                    x0 = x0.clamp(0.0, 1.0)
                x0 = _pin(x0, start, goal)
                if self.cfg.eta > 0 and t_next > 0:
                    # DDIM(η) for α_t = 1 − t, σ_t = t: c² = η² σ²_{t'} (1 − (α_t σ_{t'} / (α_{t'} σ_t))²)
                    ratio = ((1 - t) * t_next) / ((1 - t_next) * t)
                    c = self.cfg.eta * t_next * math.sqrt(max(0.0, 1 - ratio * ratio))
                    noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
                    x = (1 - t_next) * x0 + math.sqrt(max(0.0, t_next * t_next - c * c)) * eps + c * noise
                else:
                    x = (1 - t_next) * x0 + t_next * eps
            return _pin(x, start, goal)
        betas, alphas, alpha_bars = (a.to(device, dtype) for a in (self.betas, self.alphas, self.alpha_bars))
        for i in reversed(range(n)):
            eps = predict_noise(x, torch.full((shape[0], 1), i / n, device=device, dtype=dtype))
            x = (x - (1 - alphas[i]) / (1 - alpha_bars[i]).sqrt() * eps) / alphas[i].sqrt()
            if i > 0:
                x = x + betas[i].sqrt() * torch.randn(shape, generator=generator, device=device, dtype=dtype)
            x = _pin(x, start, goal)
        return x


def _pin(x: torch.Tensor, start: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, :, 0] = start
    x[:, :, -1] = goal
    return x
