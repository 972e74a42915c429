"""Output settings shared by every learned forecaster: how the head starts and what it predicts.

An untrained model should forecast something harmless. The seed's gated HRM starts with one-step MSE
≈ 0.16 (outputs of ~8 cells per step), 260× worse than predicting no motion at all, and spends its first
steps unlearning that. Two settings, offered to every model alike through `OutputSettings` (a base
class of each model's config), fix the start:

* `head_init: zero` — the final Linear (every model names one Linear `head`) starts at zero weights and bias,
  so the untrained model predicts zero motion.
* `output: residual-cv` — the model predicts the residual over constant velocity: forecast = last
  observed displacement + model output (for a (B, K, 2) multi-step output the last displacement is added
  to every step). With a zero head the untrained model *is* constant velocity.

`apply_output_settings` is called once, by the model factory (`forecast/models.py`), for every kind;
`shape_output` gives every model's head output the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hrmlab.errors import UserError

POSITION_DIMS = 2
"""Inputs are (row, col) positions, outputs (row, col) displacements."""


@dataclass
class OutputSettings:
    """Base class of every forecaster config: the output parameterisation and the head's init."""

    output: Literal["displacement", "residual-cv"] = "displacement"
    """displacement: the model's output is the forecast displacement (the seed's models); residual-cv:
    the forecast is the last observed displacement plus the model's output (constant velocity + residual)."""
    head_init: Literal["default", "zero"] = "default"
    """default: the head keeps its model's init (seed replicas); zero: zero head weights and bias, so an
    untrained model predicts zero motion (or, with residual-cv, constant velocity)."""


def shape_output(flat: torch.Tensor, out_steps: int) -> torch.Tensor:
    """(B, 2K) head output → (B, 2) for K = 1, else (B, K, 2): one place for the output shape of every model."""
    return flat if out_steps == 1 else flat.view(len(flat), out_steps, POSITION_DIMS)


def last_displacement(x: torch.Tensor) -> torch.Tensor:
    """(B, H, 2) history → (B, 2) last observed one-step displacement (zero for a one-position history)."""
    if x.shape[1] < 2:
        return torch.zeros_like(x[:, -1])
    return x[:, -1] - x[:, -2]


def add_per_step(out: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Add (B, 2) `shift` to a (B, 2) output or to every step of a (B, K, 2) output."""
    return out + (shift[:, None] if out.dim() == 3 else shift).to(out.dtype)


class ResidualOverConstantVelocity(nn.Module):
    """forecast = last observed displacement + model(x).

    Training a self-supervising model (one with `training_loss`) on targets y is the same as training
    the inner model on y − cv: every loss here depends on prediction − target only, so the shift moves to
    the target and the inner model's per-segment supervision needs no change."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def cfg(self):
        """The inner model's config (roll-outs read `out_steps` from it)."""
        return self.model.cfg

    # The stateful roll-out contract (forecast/learned.py), offered exactly when the inner model offers it:
    # the state carries the last position, so each step adds the displacement just observed.
    @property
    def encode(self):
        if not callable(getattr(self.model, "encode", None)):
            raise AttributeError("encode")
        return self._encode

    @property
    def advance(self):
        if not callable(getattr(self.model, "advance", None)):
            raise AttributeError("advance")
        return self._advance

    def _encode(self, x: torch.Tensor):
        state, step = self.model.encode(x)
        return (state, x[:, -1]), step + last_displacement(x).to(step.dtype)

    def _advance(self, state, x_next: torch.Tensor):
        inner, previous = state
        inner, step = self.model.advance(inner, x_next)
        return (inner, x_next), step + (x_next - previous).to(step.dtype)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        cv = last_displacement(x)
        if target is None:
            return add_per_step(self.model(x), cv)
        return self.training_loss(x, target)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cv = last_displacement(x).float()
        if hasattr(self.model, "training_loss"):
            return self.model.training_loss(x, add_per_step(y.float(), -cv))
        return F.mse_loss(add_per_step(self.model(x).float(), cv), y.float())


def zero_head(model: nn.Module) -> None:
    """Zero the weights and bias of the model's output head: the one Linear named `head` (at any depth)."""
    heads = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "head"]
    if len(heads) != 1 or not isinstance(heads[0], nn.Linear):
        raise TypeError(f"{type(model).__name__} needs exactly one Linear named `head` to zero-initialise")
    with torch.no_grad():
        heads[0].weight.zero_()
        if heads[0].bias is not None:
            heads[0].bias.zero_()


def apply_output_settings(model: nn.Module, cfg: OutputSettings) -> nn.Module:
    """The model as its config's output settings ask: head zeroed and/or wrapped for residual-cv."""
    if cfg.head_init == "zero":
        zero_head(model)
    elif cfg.head_init != "default":
        raise UserError(f"unknown head_init {cfg.head_init!r}; valid choices: default, zero")
    if cfg.output == "residual-cv":
        return ResidualOverConstantVelocity(model)
    if cfg.output != "displacement":
        raise UserError(f"unknown output {cfg.output!r}; valid choices: displacement, residual-cv")
    return model
