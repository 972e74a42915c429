"""The learned-model registry: kind → (config class, builder). One factory for every forecaster.

MODEL CONTRACT (every kind): a dataclass config deriving from `heads.OutputSettings`, with a docstring
per field; `forward(x)` maps (B, H, 2) normalised positions to the (B, 2) normalised one-step
displacement (or, for configs with `out_steps = K > 1`, (B, K, 2) per-step displacements). Optional:

* `training_loss(x, y)` — the model's own objective (deep supervision, ACT). Such a model must also
  accept `forward(x, target=y)` and return that loss, so the trainer can call it through DDP and
  torch.compile wrappers (see `train/trainer.py:mse_loss`).
* `after_optimizer_step()` — called by the trainer after every optimiser step (e.g. an EMA update).
* `set_compute_scale(scale)` — test-time compute: run `scale` × the trained recursion at inference.

`build_model` seeds the init, constructs the kind's model and applies its output settings
(`heads.apply_output_settings`: zero head, residual over constant velocity) — for every kind alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from hrmlab.errors import UserError
from hrmlab.forecast import hrm, hrm_act, lstm, trm
from hrmlab.forecast.heads import apply_output_settings


@dataclass(frozen=True)
class ModelKind:
    config: type
    """The kind's config dataclass."""
    build: Callable[[Any], nn.Module]
    """config → freshly initialised model (output settings are applied by `build_model`)."""
    description: str
    """One line for listings."""


MODELS: dict[str, ModelKind] = {
    "hrm": ModelKind(hrm.HRMConfig, hrm.build_hrm,
                     "HRM-style recurrence over the history (the seed's models, SPEC §4)"),
    "lstm": ModelKind(lstm.LSTMConfig, lstm.LSTMPredictor, "2-layer LSTM over the history (SPEC §4)"),
    "hrm-act": ModelKind(hrm_act.HRMActConfig, hrm_act.HRMAct,
                         "the HRM paper's design: H/L transformers cycling over the history tokens, ACT"),
    "trm": ModelKind(trm.TRMConfig, trm.TRM, "Tiny Recursive Model: one small network recursing on z and y"),
}


def model_kinds() -> list[str]:
    return list(MODELS)


def get_kind(kind: str) -> ModelKind:
    if kind not in MODELS:
        raise UserError(f"unknown model kind {kind!r}; valid choices: {', '.join(MODELS)}")
    return MODELS[kind]


def kind_of(cfg) -> str:
    """The registered kind whose config class `cfg` is (exactly)."""
    for kind, entry in MODELS.items():
        if type(cfg) is entry.config:
            return kind
    raise TypeError(f"no model kind has config class {type(cfg).__name__}")


def config_from_dict(kind: str, fields: dict):
    from hrmlab.config import from_dict

    return from_dict(get_kind(kind).config, fields, "model")


def build_model(cfg, seed: int | None = 0) -> nn.Module:
    """Model from a registered config, or from a dict {"kind": KIND (default hrm), **fields}.

    Initialised from `seed` inside a forked RNG (the global torch RNG is left untouched); None uses the
    current global RNG state. The config's output settings are applied here, for every kind."""
    if isinstance(cfg, dict):
        fields = dict(cfg)
        cfg = config_from_dict(fields.pop("kind", "hrm"), fields)
    entry = MODELS[kind_of(cfg)]
    if seed is None:
        return apply_output_settings(entry.build(cfg), cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return apply_output_settings(entry.build(cfg), cfg)


def count_parameters(model: nn.Module) -> int:
    """Every parameter, trainable or not (buffers such as EMA weights are not parameters)."""
    return sum(p.numel() for p in model.parameters())


def set_test_time_compute(model: nn.Module, scale: float) -> nn.Module:
    """Run `scale` × the trained recursion at inference (recursive kinds only); returns the model."""
    recursive = [m for m in model.modules() if hasattr(m, "set_compute_scale")]
    if not recursive:
        raise UserError(f"{type(model).__name__} has no recursion whose compute could be scaled "
                        "(test-time compute applies to hrm-act and trm)")
    for module in recursive:
        module.set_compute_scale(scale)
    return model
