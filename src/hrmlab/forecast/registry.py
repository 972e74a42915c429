"""Forecasters by name: physics rules are built directly, learned models from their checkpoint.

A `ForecasterSpec` is small and picklable, so evaluation workers (local processes or Modal
containers) rebuild the forecaster themselves instead of receiving a model object.
"""

from __future__ import annotations

from dataclasses import dataclass

from hrmlab.errors import UserError
from hrmlab.forecast.base import ROLLOUTS, Forecaster
from hrmlab.forecast.physics import PHYSICS_FORECASTERS


@dataclass(frozen=True)
class ForecasterSpec:
    name: str
    """Display name (unique within an evaluation)."""
    checkpoint: str | None = None
    """Checkpoint of a learned model; None for physics forecasters (name = the rule)."""
    precision: str = "fp32"
    """Learned models: fp32 (default) or bf16 at evaluation."""
    rollout: str | None = None
    """Learned models: window | stateful | direct (forecast/learned.py); None = the one it was trained for."""


def parse_forecasters(text: str) -> list[ForecasterSpec]:
    """'oracle,constant-velocity,hrm=runs/x/hrm/best.pt' → specs; unknown names are a UserError.

    A learned model may name its roll-out after '@': 'hrm-fast=runs/x/hrm/best.pt@stateful'."""
    specs = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        if "=" in item:
            name, path = item.split("=", 1)
            path, _, rollout = path.partition("@")
            if rollout and rollout.strip() not in ROLLOUTS:
                raise UserError(f"unknown roll-out {rollout.strip()!r} in {item!r}; valid choices: {', '.join(ROLLOUTS)}")
            specs.append(ForecasterSpec(name.strip(), path.strip(), rollout=rollout.strip() or None))
        elif item in PHYSICS_FORECASTERS:
            specs.append(ForecasterSpec(item))
        else:
            raise UserError(f"unknown forecaster {item!r}; valid choices: {', '.join(PHYSICS_FORECASTERS)}, "
                            "or NAME=CHECKPOINT for a trained model")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"forecaster names must be unique, got {', '.join(names)}")
    if not specs:
        raise UserError("no forecasters given; valid choices: " + ", ".join(PHYSICS_FORECASTERS))
    return specs


def build_forecaster(spec: ForecasterSpec, device: str = "cpu") -> Forecaster:
    if spec.checkpoint is None:
        if spec.name not in PHYSICS_FORECASTERS:
            raise UserError(f"unknown forecaster {spec.name!r}; valid choices: {', '.join(PHYSICS_FORECASTERS)}")
        return PHYSICS_FORECASTERS[spec.name]()
    from hrmlab.forecast.loading import load_forecaster  # torch only when a learned model is asked for

    return load_forecaster(spec.checkpoint, name=spec.name, device=device, precision=spec.precision,
                           rollout=spec.rollout)
