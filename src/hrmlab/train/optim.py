"""Optimisers (AdamW, LAMB) and learning-rate schedules (constant, OneCycle, cosine), stepped per optimiser step."""

from __future__ import annotations

import logging
import math

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LRScheduler, OneCycleLR

from hrmlab.errors import UserError

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "lamb", "lamb-torch-optimizer")
SCHEDULES = ("constant", "onecycle", "cosine")


class Lamb(Optimizer):
    """LAMB (You et al., 2019): Adam moments with a per-tensor trust ratio ‖w‖ / ‖update‖, so every layer
    moves by a similar relative amount — the 8gpu_v2 script's optimiser for large batches.

    update = m̂ / (√v̂ + eps) + weight_decay · w;  w -= lr · trust · update, trust = min(‖w‖, weight_norm_max) /
    ‖update‖ (1 when either norm is zero). `debias` uses the bias-corrected moments m̂, v̂ (the paper's
    Algorithm 2); without it m and v are used as they are. The 8gpu_v2 script used torch_optimizer.Lamb's
    defaults: no bias correction, ‖w‖ clamped at 10 (`Lamb.torch_optimizer`, optimizer
    `lamb-torch-optimizer`). Moments are kept in fp32 whatever the parameter dtype."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, debias: bool = True, weight_norm_max: float = math.inf):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas) or weight_norm_max <= 0:
            raise ValueError(f"invalid LAMB hyper-parameters lr={lr} betas={betas} eps={eps} wd={weight_decay} "
                             f"weight_norm_max={weight_norm_max}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, debias=debias,
                                      weight_norm_max=weight_norm_max))

    @classmethod
    def torch_optimizer(cls, params, lr: float = 1e-3, weight_decay: float = 0.0) -> "Lamb":
        """torch_optimizer.Lamb as the 8gpu_v2 script called it (its defaults: betas (0.9, 0.999), eps 1e-6,
        clamp_value 10, debias False)."""
        return cls(params, lr=lr, weight_decay=weight_decay, debias=False, weight_norm_max=10.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                grad = p.grad.float()
                weight = p.float()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group.get("debias", True):
                    m_hat = exp_avg / (1 - beta1 ** state["step"])
                    v_hat = exp_avg_sq / (1 - beta2 ** state["step"])
                else:
                    m_hat, v_hat = exp_avg, exp_avg_sq
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(weight, alpha=group["weight_decay"])
                w_norm, u_norm = weight.norm().clamp(max=group.get("weight_norm_max", math.inf)), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.copy_(weight - group["lr"] * trust * update)
        return loss


def make_optimizer(name: str, params, lr: float, weight_decay: float, device: torch.device) -> Optimizer:
    """AdamW (fused kernel where this torch/device supports it, else foreach), LAMB (the paper's, bias-corrected),
    or LAMB as torch_optimizer implements it (the 8gpu_v2 script's)."""
    params = list(params)
    if name == "adamw":
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError) as exc:
            log.info("fused AdamW unavailable on %s (%s); using the foreach implementation", device, exc)
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "lamb":
        return Lamb(params, lr=lr, weight_decay=weight_decay)
    if name == "lamb-torch-optimizer":
        return Lamb.torch_optimizer(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")


def make_scheduler(name: str, optimizer: Optimizer, total_steps: int, max_lr: float, min_lr: float) -> LRScheduler:
    """Per-step schedules. onecycle: PyTorch defaults (pct_start 0.3, cosine annealing, momentum cycling);
    cosine: from lr at the first step to min_lr at the last; constant: lr throughout."""
    total_steps = max(1, int(total_steps))
    if name == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "onecycle":
        # OneCycle needs at least 2 steps to have a warm-up and an annealing phase
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(2, total_steps))
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(1, total_steps - 1), eta_min=min_lr)
    raise UserError(f"unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")

