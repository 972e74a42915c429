"""Forecasters by name: physics rules are built directly, learned models from their checkpoint.

A `ForecasterSpec` is small and picklable, so evaluation workers (local processes or Modal
containers) rebuild the forecaster themselves instead of receiving a model object. `NAME=seed:SCRIPT:PATH`
names weights trained by an original script (`seed_import.py`).
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
    seed_script: str | None = None
    """Set when `checkpoint` was saved by an original script (its stem, e.g. hrm_cloudv3), not by hrmlab."""
    precision: str = "fp32"
    """Learned models: fp32 (default) or bf16 at evaluation."""
    rollout: str | None = None
    """Learned models: window | stateful | direct (forecast/learned.py); None = the one it was trained for."""
    compute_scale: float = 1.0
    """Recursive models (hrm-act, trm): run this × the trained recursion at inference (test-time compute)."""


def parse_forecasters(text: str) -> list[ForecasterSpec]:
    """'oracle,constant-velocity,hrm=runs/x/hrm/best.pt,old=seed:hrm_cloudv3:best_hrm.pt' → specs; unknown
    names, unknown original scripts and missing seed checkpoints are a UserError.

    A learned model may name its roll-out after '@': 'hrm-fast=runs/x/hrm/best.pt@stateful', and a recursive
    one (hrm-act, trm) a test-time compute scale after '*': 'trm-x2=runs/x/trm/best.pt@direct*2'."""
    specs = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        if "=" in item:
            name, path = (part.strip() for part in item.split("=", 1))
            if path.startswith("seed:"):
                specs.append(_seed_spec(name, path))
                continue
            path, _, scale_text = path.partition("*")
            path, _, rollout = path.partition("@")
            if rollout and rollout.strip() not in ROLLOUTS:
                raise UserError(f"unknown roll-out {rollout.strip()!r} in {item!r}; valid choices: {', '.join(ROLLOUTS)}")
            specs.append(ForecasterSpec(name, path.strip(), rollout=rollout.strip() or None,
                                        compute_scale=_compute_scale(scale_text, item)))
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


def _compute_scale(text: str, item: str) -> float:
    if not text.strip():
        return 1.0
    try:
        scale = float(text)
    except ValueError:
        scale = float("nan")
    if not scale > 0:
        raise UserError(f"compute scale in {item!r} must be a positive number, got {text.strip()!r}")
    return scale


def _seed_spec(name: str, text: str) -> ForecasterSpec:
    from pathlib import Path

    from hrmlab.forecast.seed_import import SEED_SCRIPTS

    parts = text.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise UserError(f"forecaster {name}: expected seed:SCRIPT:PATH, got {text!r}")
    _, script, path = parts
    if script not in SEED_SCRIPTS:
        raise UserError(f"forecaster {name}: unknown original script {script!r}; valid choices: {', '.join(SEED_SCRIPTS)}")
    if not Path(path).is_file():
        raise UserError(f"forecaster {name}: checkpoint {path} does not exist")
    return ForecasterSpec(name, path, seed_script=script)


def build_forecaster(spec: ForecasterSpec, device: str = "cpu") -> Forecaster:
    if spec.checkpoint is None:
        if spec.name not in PHYSICS_FORECASTERS:
            raise UserError(f"unknown forecaster {spec.name!r}; valid choices: {', '.join(PHYSICS_FORECASTERS)}")
        return PHYSICS_FORECASTERS[spec.name]()
    if spec.seed_script is not None:
        from hrmlab.forecast.seed_import import load_seed_forecaster

        return load_seed_forecaster(spec.seed_script, spec.checkpoint, name=spec.name, device=device,
                                    precision=spec.precision)
    from hrmlab.forecast.loading import load_forecaster  # torch only when a learned model is asked for

    return load_forecaster(spec.checkpoint, name=spec.name, device=device, precision=spec.precision,
                           rollout=spec.rollout, compute_scale=spec.compute_scale)
