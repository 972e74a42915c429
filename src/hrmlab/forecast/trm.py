"""`trm`: the Tiny Recursive Model (Jolicoeur-Martineau 2025) as a one-step forecaster.

TRM simplifies the HRM: ONE small network, recursing on a latent z and an answer y over the embedded
history tokens x (the same tokens as `hrm-act`):

    latent recursion:  n times z ← net(z, x + y), then y ← net(y, z)
    segment:           T latent recursions; the first T − 1 under no_grad, and full backpropagation
                       through the last one (all its n + 1 network calls)
    deep supervision:  `segments` segments per sample, carry (y, z) detached between them

The forecast is read from y's query token. An exponential moving average of the weights (decay 0.999,
with the usual warm-up min(decay, (1 + t)/(10 + t)) so short runs are not dominated by the init) is
updated after every optimiser step and used at inference (eval mode); training uses the live weights.
TRM's optional halting head is not used: every sample runs all its segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from hrmlab.errors import UserError
from hrmlab.forecast.heads import POSITION_DIMS, OutputSettings, shape_output
from hrmlab.forecast.hrm_act import (HistoryTokens, ReasoningModule, Rotary, init_lecun, initial_state,
                                     scaled_count)


@dataclass
class TRMConfig(OutputSettings):
    """The Tiny Recursive Model at forecaster size (defaults: 83,202 parameters)."""

    output: Literal["displacement", "residual-cv"] = "residual-cv"
    """See OutputSettings; new models predict the residual over constant velocity by default."""
    head_init: Literal["default", "zero"] = "zero"
    """See OutputSettings; new models start at zero motion over constant velocity by default."""
    d_model: int = 64
    """Hidden width of tokens, y and z."""
    heads: int = 4
    """Attention heads (d_model must divide by it)."""
    layers: int = 2
    """Post-norm transformer blocks of the one network (the paper: 2)."""
    expansion: float = 2.0
    """SwiGLU hidden width as a multiple of d_model."""
    latent_steps: int = 2
    """n: z updates per latent recursion (followed by one y update)."""
    recursions: int = 2
    """T: latent recursions per segment; the first T − 1 run without gradient."""
    segments: int = 2
    """Deep-supervision segments per training sample; at inference (times the compute scale) the number
    of segments run."""
    ema_decay: float = 0.999
    """Decay of the weight EMA used at inference (0 = no EMA: inference uses the live weights)."""
    positions: Literal["rope", "learned"] = "rope"
    """Token positions: rotary embeddings in attention, or a learned vector added to each token."""
    rope_theta: float = 10_000.0
    """RoPE base period."""
    max_tokens: int = 64
    """Learned positions: the most tokens (history tokens + the query token) the model accepts. RoPE: the
    positions whose tables compiled forwards read from buffers (longer sequences compute them inline)."""
    delta_scale: float = 20.0
    """Step feature scale of displacements (see HRMActConfig.delta_scale)."""
    patch: int = 4
    """History steps per token (see HRMActConfig.patch)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    out_steps: int = 1
    """K: forecast steps per call; the output is (B, 2) for 1, else (B, K, 2) per-step displacements."""


class RecursiveNet(nn.Module):
    """Everything TRM trains: token embedding, the one network, the output head, fixed y/z starts."""

    def __init__(self, cfg: TRMConfig):
        super().__init__()
        self.cfg = cfg
        d, rope = cfg.d_model, cfg.positions == "rope"
        self.tokens = HistoryTokens(d, cfg.delta_scale, cfg.patch, not rope, cfg.max_tokens)
        self.net = ReasoningModule(cfg.layers, d, cfg.heads, cfg.expansion, rope, cfg.rope_theta, cfg.norm_eps,
                                   cfg.max_tokens)
        self.head = nn.Linear(d, POSITION_DIMS * cfg.out_steps)
        self.register_buffer("y_init", initial_state(d))
        self.register_buffer("z_init", initial_state(d))
        init_lecun(self)

    def latent_recursion(self, x, y, z, rope: Rotary | None = None):
        for _ in range(self.cfg.latent_steps):
            z = self.net(z, x + y, rope)
        return self.net(y, z, rope), z

    def segment(self, x, y, z, rope: Rotary | None = None):
        """T latent recursions; gradient flows through the last one only. `rope`: the tokens' RoPE tables
        (`self.net.rotary(x)`; None computes them in every call)."""
        with torch.no_grad():
            for _ in range(self.cfg.recursions - 1):
                y, z = self.latent_recursion(x, y, z, rope)
        return self.latent_recursion(x, y, z, rope)

    def forward(self, x: torch.Tensor, segments: int) -> list[torch.Tensor]:
        """The forecast after each of `segments` segments (carry detached between them)."""
        tokens = self.tokens(x)
        rope = self.net.rotary(tokens)  # once per forward, shared by every network call
        y = self.y_init.to(tokens.dtype).expand_as(tokens)
        z = self.z_init.to(tokens.dtype).expand_as(tokens)
        outputs = []
        for _ in range(segments):
            y, z = self.segment(tokens, y, z, rope)
            outputs.append(shape_output(self.head(y[:, -1]), self.cfg.out_steps))
            y, z = y.detach(), z.detach()
        return outputs


class WeightEMA(nn.Module):
    """Exponential moving average of a module's parameters, kept as buffers (saved in checkpoints, not
    trained). It starts at the first update — from the weights after the first optimiser step, so a
    later change to the init (a zeroed head) is never averaged in — and `updates` counts the updates."""

    def __init__(self, module: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.names = [name for name, _ in module.named_parameters()]
        for name, param in module.named_parameters():
            self.register_buffer(self._key(name), param.detach().clone())
        self.register_buffer("updates", torch.zeros(1, dtype=torch.long))  # (1,): state-dict digests view buffers as bytes

    @staticmethod
    def _key(name: str) -> str:
        return "shadow__" + name.replace(".", "__")

    @property
    def ready(self) -> bool:
        return bool(self.updates.item() > 0)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        t = int(self.updates.item())
        decay = 0.0 if t == 0 else min(self.decay, (1 + t) / (10 + t))
        for name, param in module.named_parameters():
            getattr(self, self._key(name)).lerp_(param.detach(), 1.0 - decay)
        self.updates += 1

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, self._key(name)) for name in self.names}


class TRM(nn.Module):
    """(B, H, 2) → (B, 2) or (B, K, 2); see the module docstring."""

    def __init__(self, cfg: TRMConfig):
        super().__init__()
        if min(cfg.latent_steps, cfg.recursions, cfg.segments, cfg.out_steps, cfg.layers) < 1:
            raise UserError("trm: latent_steps, recursions, segments, out_steps and layers must all be ≥ 1")
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise UserError(f"trm: ema_decay must be in [0, 1), got {cfg.ema_decay}")
        self.cfg = cfg
        self.model = RecursiveNet(cfg)
        self.ema = WeightEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.compute_scale = 1.0

    def set_compute_scale(self, scale: float) -> None:
        """Test-time compute: inference runs `scale` × `segments` segments (training is unaffected)."""
        if scale <= 0:
            raise UserError(f"compute scale must be > 0, got {scale}")
        self.compute_scale = float(scale)

    def after_optimizer_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if target is not None:
            return self.training_loss(x, target)
        if self.training:
            return self.model(x, self.cfg.segments)[-1]
        segments = scaled_count(self.cfg.segments, self.compute_scale)
        if self.ema is None or not self.ema.ready:
            return self.model(x, segments)[-1]
        return functional_call(self.model, self.ema.weights(), (x, segments))[-1]

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over segments of the forecast MSE (deep supervision), with the live weights."""
        y = y.float()
        return torch.stack([(out.float() - y).pow(2).mean() for out in self.model(x, self.cfg.segments)]).mean()
