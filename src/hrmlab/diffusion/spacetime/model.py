"""The space-time denoiser: a small temporal U-Net over T trajectory points, conditioned on the world.

Input: noisy trajectories x (B, S, 2, T) — S candidates per episode — in map units u = 2·cell/(G−1) − 1,
the noise level s (B·S,) in [0, 1], and a `Condition` encoded once per episode. Output: the clean
trajectory x̂₀ (x₀-prediction: guidance and the candidate check act on x̂₀ directly).

Conditioning, and why this form:

* **Static map** — the static cells and their clearance field go through a small conv encoder (stride 4);
  each trajectory point reads the feature map at its own position (bilinear), and a pooled map vector
  joins the global embedding. Local reads keep the geometry a global bottleneck (the seed's 8192 → 256)
  loses.
* **Start and goal** — the start is pinned as point 0; the goal enters the global embedding and, per
  point, as the offset goal − x.
* **Forecast obstacles as per-obstacle tokens, one set per time step.** Point t of the trajectory meets
  the N obstacles *at time t* (the forecast's own time axis, index = steps from now): each token is
  (obstacle − point, its distance, the obstacle's position), a shared MLP embeds it,
  a max over the N tokens and a linear layer give that point's obstacle features. Tokens rather than a (T, H', W')
  occupancy stack because the positions stay exact (no rasterisation at 1/4 resolution, where one
  BlobWorld voxel is 4 cells and the collision radius 2), the cost is O(T·N) per trajectory instead of
  T·H'·W', and the max makes it independent of obstacle order and count (0 obstacles = no forecast).
* **No forecast** — a per-episode mask zeroes the tokens; training masks `forecast_dropout` of the
  examples, so one network also runs without forecast conditioning (the ablation).

The noise level and the global vector (start, goal, pooled map, mask) modulate every residual block
(FiLM). Down/upsampling halves/doubles T per level, so T must be divisible by 2^(levels−1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt


@dataclass
class STModelConfig:
    """Denoiser size. Defaults: the CPU presets' ≈0.2M-parameter network."""

    channels: list[int] = field(default_factory=lambda: [32, 48, 64])
    """Channels per U-Net level (each further level halves T)."""
    map_channels: int = 16
    """Channels of the static-map feature map (read at every trajectory point)."""
    obstacle_hidden: int = 32
    """Width of the per-obstacle token MLP (and of the pooled obstacle features)."""
    embed: int = 64
    """Width of the noise-level + global-condition embedding that modulates every block."""
    groups: int = 8
    """GroupNorm groups."""
    forecast_dropout: float = 0.1
    """Training: fraction of examples whose forecast tokens are masked (so 'no forecast' is in range)."""


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_units(cells, grid_size: int):
    """Cells → map units in [−1, 1] (numpy or torch)."""
    return cells * (2.0 / (grid_size - 1)) - 1.0


def to_cells(units, grid_size: int):
    return (units + 1.0) * ((grid_size - 1) / 2.0)


def clearance_field(static: np.ndarray) -> np.ndarray:
    """(B, G, G) bool → (B, G, G) float32 signed distance to the static cells (cells; < 0 inside, the
    map border counts as free). Guidance pushes points up this field; the encoder reads it too."""
    static = np.asarray(static, dtype=bool)
    out = np.empty(static.shape, dtype=np.float32)
    for b in range(static.shape[0]):
        if static[b].any():
            out[b] = distance_transform_edt(~static[b]) - distance_transform_edt(static[b])
        else:
            out[b] = static.shape[-1]
    return out


@dataclass
class Condition:
    """One episode's encoded condition (B episodes), reused by every denoising step and candidate."""

    map_features: torch.Tensor  # (B, m, G', G')
    global_embed: torch.Tensor  # (B, E)
    obstacles: torch.Tensor  # (B, T, N, 2) map units
    obstacle_embed: torch.Tensor  # (B, T, N, h) the position part of each token (per episode, once)
    mask: torch.Tensor  # (B,) 1 = forecast used, 0 = masked
    goal: torch.Tensor  # (B, 2) map units

    def repeat(self, times: int) -> "Condition":
        """The same episodes `times` times over (batch b·times + j = episode b)."""
        r = lambda t: t.repeat_interleave(times, dim=0)  # noqa: E731
        return Condition(r(self.map_features), r(self.global_embed), r(self.obstacles), r(self.obstacle_embed),
                         r(self.mask), r(self.goal))


class ResBlock(nn.Module):
    """GN → SiLU → conv3 → FiLM(embedding) → GN → SiLU → conv3, plus a (1×1) skip."""

    def __init__(self, c_in: int, c_out: int, embed: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(embed, 2 * c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.conv2(F.silu(h)) + self.skip(x)


class STDenoiser(nn.Module):
    def __init__(self, cfg: STModelConfig, grid_size: int, horizon: int):
        super().__init__()
        levels = len(cfg.channels)
        if horizon % (2 ** (levels - 1)):
            raise ValueError(f"horizon {horizon} must be divisible by {2 ** (levels - 1)} ({levels} U-Net levels)")
        self.cfg, self.grid_size, self.horizon = cfg, grid_size, horizon
        m, h, e = cfg.map_channels, cfg.obstacle_hidden, cfg.embed
        self.map_encoder = nn.Sequential(
            nn.Conv2d(2, m // 2, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(m // 2, m, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(m, m, 3, padding=1))
        self.global_mlp = nn.Sequential(nn.Linear(4 + 1 + m, e), nn.SiLU(), nn.Linear(e, e))
        self.noise_mlp = nn.Sequential(nn.Linear(32, e), nn.SiLU(), nn.Linear(e, e))
        self.token_relative = nn.Linear(3, h)  # (obstacle − point, distance) → h
        self.token_position = nn.Linear(2, h, bias=False)  # the obstacle's own position (per episode)
        self.token_out = nn.Linear(h, h)  # after the max over obstacles
        c = cfg.channels
        self.inp = nn.Conv1d(2 + 2 + 1 + m + h, c[0], 3, padding=1)
        self.down = nn.ModuleList([ResBlock(c[i], c[i], e, cfg.groups) for i in range(levels)])
        self.downsample = nn.ModuleList([nn.Conv1d(c[i], c[i + 1], 4, stride=2, padding=1) for i in range(levels - 1)])
        self.mid = ResBlock(c[-1], c[-1], e, cfg.groups)
        self.upsample = nn.ModuleList([nn.ConvTranspose1d(c[i + 1], c[i], 2, stride=2) for i in range(levels - 1)])
        self.up = nn.ModuleList([ResBlock(2 * c[i], c[i], e, cfg.groups) for i in range(levels - 1)])
        self.out_norm = nn.GroupNorm(min(cfg.groups, c[0]), c[0])
        self.out = nn.Linear(c[0], 2)  # pointwise: a 2-channel conv is slow on CPU (oneDNN)
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), 16)), persistent=False)
        self.register_buffer("time_channel", torch.linspace(0, 1, horizon)[None, None], persistent=False)

    # ---------------------------------------------------------------------------------- condition
    def encode(self, static: torch.Tensor, clearance: torch.Tensor, start: torch.Tensor, goal: torch.Tensor,
               obstacles: torch.Tensor, mask: torch.Tensor) -> Condition:
        """static (B, G, G) 0/1, clearance (B, G, G) cells, start/goal (B, 2) and obstacles (B, T, N, 2)
        in cells, mask (B,) 1/0 → Condition."""
        g = self.grid_size
        grid = torch.stack([static, (clearance / 8.0).clamp(-1.0, 2.0)], dim=1)
        features = self.map_encoder(grid)
        start_u, goal_u = to_units(start, g), to_units(goal, g)
        glob = torch.cat([start_u, goal_u, mask[:, None], features.mean(dim=(2, 3))], dim=1)
        obstacles_u = to_units(obstacles, g)
        return Condition(features, self.global_mlp(glob), obstacles_u, self.token_position(obstacles_u), mask, goal_u)

    # ---------------------------------------------------------------------------------- denoise
    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: Condition) -> torch.Tensor:
        """x (B, S, 2, T) noisy map units, noise_level (B·S,) → x̂₀ (B, S, 2, T)."""
        b, s, _, t = x.shape
        pos = x.transpose(2, 3)  # (B, S, T, 2) rows, cols
        # static map features at each point (grid_sample wants (x=col, y=row) in [-1, 1])
        where = pos.flip(-1).reshape(b, s * t, 1, 2)
        local = F.grid_sample(cond.map_features, where, align_corners=True, padding_mode="border")
        local = local.reshape(b, -1, s, t).transpose(1, 2)  # (B, S, m, T)
        # obstacle tokens at each point's own time
        per_cell = (self.grid_size - 1) / 2.0
        if cond.obstacles.shape[2]:
            rel = (cond.obstacles[:, None] - pos[:, :, :, None]) * (per_cell / 8.0)  # (B, S, T, N, 2), 8-cell units
            dist = rel.norm(dim=-1, keepdim=True)
            tokens = F.silu(self.token_relative(torch.cat([rel, dist], dim=-1)) + cond.obstacle_embed[:, None])
            tokens = self.token_out(tokens.amax(dim=3)) * cond.mask[:, None, None, None]  # (B, S, T, h)
        else:
            tokens = x.new_zeros(b, s, t, self.cfg.obstacle_hidden)
        goal_rel = (cond.goal[:, None, :, None] - x) * (per_cell / 16.0)
        h = torch.cat([x, goal_rel, self.time_channel.expand(b, s, 1, t), local, tokens.transpose(2, 3)], dim=2)
        h = h.reshape(b * s, -1, t)
        half = noise_level[:, None] * self.freqs[None]
        emb = self.noise_mlp(torch.cat([half.sin(), half.cos()], dim=1)) + cond.global_embed.repeat_interleave(s, 0)
        h = self.inp(h)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for i in reversed(range(len(self.up))):
            h = self.upsample[i](h)
            h = self.up[i](torch.cat([h, skips[i]], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)).transpose(1, 2)).transpose(1, 2).reshape(b, s, 2, t)
