"""Denoisers for path diffusion: the seed's ConditionalUnet1D (v2) and the small conv net of v0/v1.

Every denoiser maps a noisy path x (B, 2, L), a noise level t (B, 1) in [0, 1], the t = 0 occupancy grid
(B, 1, G, G) and start/goal (B, 4) — all normalised by the map size — to a prediction of the noise
(B, 2, L). The condition is encoded once per episode (`encode_condition`) and reused at every
denoising step and for every sample (`denoise`); `forward` does both.

v2 (SPEC §8): map encoder Conv2d 1→32→64→128 (stride 2, SiLU) + Linear(128·8·8 → 256); start/goal
Linear(4 → 256); time MLP 1→256→256→256; ResBlock1D = conv3-GN-SiLU, + time projection, conv3-GN-SiLU,
+ 1×1 skip; 4-head self-attention with a GroupNorm pre-norm and a residual; down 2→64→128 + attention;
condition concatenated; mid 256→256 + attention + 256→256; up with skips 384→128, 192→64 + attention;
out Conv1d 64→2. `conditioning: seed` concatenates only the first 128 of the 512 condition channels
(all from the map, as the seed did, so start and goal never reach the network: 4,128,258 parameters);
`conditioning: full` projects all 512 channels (map + start/goal) to those 128 with a Linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    """Denoiser architecture. Defaults: the seed's v2 with start/goal conditioning fixed."""

    architecture: Literal["unet-v2", "conv-v1"] = "unet-v2"
    """unet-v2: the seed's ConditionalUnet1D (≈4.1M); conv-v1: the ≈530k conv net rebuilt for v0/v1."""
    conditioning: Literal["full", "seed"] = "full"
    """full: map and start/goal reach the network; seed: only the first 128 map channels (as wired)."""
    base_channels: int = 64
    """Width c of unet-v2 (the seed: 64): levels c, 2c, 4c; map encoder c/2, c, 2c; embeddings 4c."""
    attention_heads: int = 4
    """Heads of every self-attention layer."""
    group_norm_groups: int = 8
    """GroupNorm groups in residual blocks and attention pre-norms."""


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ResBlock1D(nn.Module):
    """conv3 → GN → SiLU, add the projected time embedding, conv3 → GN → SiLU, plus a 1×1 skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_ch)
        self.time_proj = nn.Linear(emb_dim, out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = h + self.time_proj(t_emb)[:, :, None]
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class SelfAttention1D(nn.Module):
    """Multi-head self-attention over the path points, GroupNorm pre-norm, residual output."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, length = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, length)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, c/heads, L)
        # explicit softmax(qᵀk / √(c/heads)): on CPU it is faster than scaled_dot_product_attention
        weights = torch.softmax(q.transpose(-1, -2) @ k * self.scale, dim=-1)  # (B, heads, L, L)
        out = v @ weights.transpose(-1, -2)  # (B, heads, c/heads, L)
        return x + self.proj(out.reshape(b, c, length))


class ConditionalUnet1D(nn.Module):
    """The seed's v2 denoiser (see the module docstring); `base_channels` scales every width."""

    def __init__(self, cfg: ModelConfig, map_size: int = 64):
        super().__init__()
        if map_size % 8:
            raise ValueError(f"map_size {map_size} must be a multiple of 8 for the map encoder")
        c, groups, heads = cfg.base_channels, cfg.group_norm_groups, cfg.attention_heads
        emb = 4 * c
        self.conditioning = cfg.conditioning
        self.map_encoder = nn.Sequential(
            nn.Conv2d(1, c // 2, 5, stride=2, padding=2), nn.SiLU(),
            nn.Conv2d(c // 2, c, 5, stride=2, padding=2), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * c * (map_size // 8) ** 2, emb),
        )
        self.start_goal_encoder = nn.Linear(4, emb)
        self.time_mlp = nn.Sequential(nn.Linear(1, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU(),
                                      nn.Linear(emb, emb))
        self.cond_channels = 2 * c
        self.cond_proj = nn.Linear(2 * emb, 2 * c) if cfg.conditioning == "full" else None
        self.down1 = ResBlock1D(2, c, emb, groups)
        self.down2 = ResBlock1D(c, 2 * c, emb, groups)
        self.attn_down = SelfAttention1D(2 * c, heads, groups)
        self.mid1 = ResBlock1D(4 * c, 4 * c, emb, groups)
        self.attn_mid = SelfAttention1D(4 * c, heads, groups)
        self.mid2 = ResBlock1D(4 * c, 4 * c, emb, groups)
        self.up1 = ResBlock1D(4 * c + 2 * c, 2 * c, emb, groups)
        self.up2 = ResBlock1D(2 * c + c, c, emb, groups)
        self.attn_up = SelfAttention1D(c, heads, groups)
        self.out = nn.Conv1d(c, 2, 3, padding=1)

    def encode_condition(self, grid: torch.Tensor, start_goal: torch.Tensor) -> torch.Tensor:
        """(B, 1, G, G), (B, 4) → (B, 2c) channels concatenated to the path features."""
        cond = torch.cat([self.map_encoder(grid), self.start_goal_encoder(start_goal)], dim=1)
        if self.cond_proj is None:
            return cond[:, :self.cond_channels]  # the seed: the first 128 of 512 (map only)
        return self.cond_proj(cond)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_mlp(t)
        h1 = self.down1(x, t_emb)
        h2 = self.attn_down(self.down2(h1, t_emb))
        h = torch.cat([h2, cond[:, :, None].expand(-1, -1, x.shape[-1])], dim=1)
        h = self.mid2(self.attn_mid(self.mid1(h, t_emb)), t_emb)
        h = self.up1(torch.cat([h, h2], dim=1), t_emb)
        h = self.attn_up(self.up2(torch.cat([h, h1], dim=1), t_emb))
        return self.out(h)

    def forward(self, x, t, grid, start_goal):
        return self.denoise(x, t, self.encode_condition(grid, start_goal))


class ConditionalConv1D(nn.Module):
    """v0/v1 denoiser (rebuilt from the seed README: ≈500k parameters, a 2-layer CNN 16→32 for the map,
    3 Conv1D layers for the path). Map features (pooled to 8×8 → 128), start/goal (64) and time (64)
    embeddings are broadcast along the path and concatenated to x; 528,706 parameters at G = 64."""

    def __init__(self, cfg: ModelConfig, map_size: int = 64):
        super().__init__()
        hidden = 128
        self.map_encoder = nn.Sequential(
            nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.SiLU(),
            nn.Conv2d(16, 32, 5, stride=2, padding=2), nn.SiLU(),
            nn.AdaptiveAvgPool2d(8), nn.Flatten(),
            nn.Linear(32 * 8 * 8, 128),
        )
        self.use_start_goal = cfg.conditioning == "full"
        self.start_goal_encoder = nn.Linear(4, 64)
        self.time_mlp = nn.Sequential(nn.Linear(1, 64), nn.SiLU(), nn.Linear(64, 64))
        self.net = nn.Sequential(
            nn.Conv1d(2 + 128 + 64 + 64, hidden, 5, padding=2), nn.SiLU(),
            nn.Conv1d(hidden, hidden, 5, padding=2), nn.SiLU(),
            nn.Conv1d(hidden, 2, 5, padding=2),
        )

    def encode_condition(self, grid: torch.Tensor, start_goal: torch.Tensor) -> torch.Tensor:
        sg = self.start_goal_encoder(start_goal)
        if not self.use_start_goal:
            sg = torch.zeros_like(sg)
        return torch.cat([self.map_encoder(grid), sg], dim=1)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([cond, self.time_mlp(t)], dim=1)[:, :, None].expand(-1, -1, x.shape[-1])
        return self.net(torch.cat([x, feats], dim=1))

    def forward(self, x, t, grid, start_goal):
        return self.denoise(x, t, self.encode_condition(grid, start_goal))


def build_denoiser(cfg: ModelConfig, map_size: int = 64) -> nn.Module:
    if cfg.architecture == "unet-v2":
        return ConditionalUnet1D(cfg, map_size)
    if cfg.architecture == "conv-v1":
        return ConditionalConv1D(cfg, map_size)
    raise ValueError(f"unknown architecture {cfg.architecture!r}")
