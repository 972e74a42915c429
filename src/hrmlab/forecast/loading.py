"""Rebuild a learned forecaster from its checkpoint alone.

A training run saves, inside every checkpoint, the model kind and config plus the normalisation the
model was trained with (grid size, history length) and the roll-out it was trained for. That is all an
evaluation worker needs. Checkpoints written before roll-out modes existed were trained `window`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from hrmlab.config import from_dict
from hrmlab.errors import UserError
from hrmlab.forecast.learned import LearnedForecaster, check_trained_for
from hrmlab.forecast.models import MODELS, build_model, set_test_time_compute
from hrmlab.train.checkpoint import load_checkpoint

MODEL_CONFIGS = {kind: entry.config for kind, entry in MODELS.items()}


def model_metadata(kind: str, model_cfg, grid_size: float, history: int, rollout: str = "window") -> dict:
    """What a checkpoint must carry to rebuild its forecaster (stored under config['forecaster']).
    `grid_size` is what the model's positions are divided by: the world's `position_scale` (the grid size,
    or 1 for v1's raw cell coordinates); `rollout` the roll-out it was trained for."""
    from hrmlab.config import to_dict

    return {"kind": kind, "model": to_dict(model_cfg), "grid_size": grid_size, "history": history,
            "rollout": rollout}


def trained_rollout(meta: dict) -> str:
    """The roll-out a checkpoint was trained for (older checkpoints: window)."""
    return meta.get("rollout", "window")


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train the model first (hrmlab train / hrmlab run)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError):
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint; delete it and retrain") from None
    meta = (payload.get("config") or {}).get("forecaster") if isinstance(payload, dict) else None
    if not meta or meta.get("kind") not in MODEL_CONFIGS:
        raise UserError(f"checkpoint {path} does not describe a forecaster (no config.forecaster); "
                        "was it written by `hrmlab train`?")
    return meta


def load_forecaster(path: str | Path, name: str, device: str = "cpu", precision: str = "fp32",
                    rollout: str | None = None, compute_scale: float = 1.0) -> LearnedForecaster:
    """rollout None: the roll-out the checkpoint was trained for; another one must be compatible with it.
    compute_scale ≠ 1 runs a recursive model (hrm-act, trm) with that × its trained recursion."""
    meta = read_metadata(path)
    trained = trained_rollout(meta)
    rollout = rollout or trained
    check_trained_for(trained, rollout, f"checkpoint {path}")
    model_cfg = from_dict(MODEL_CONFIGS[meta["kind"]], meta["model"])
    model = build_model(model_cfg)
    load_checkpoint(path, model=model, restore_rng=False)
    if compute_scale != 1.0:
        set_test_time_compute(model, compute_scale)
    return LearnedForecaster(model, grid_size=meta["grid_size"], history=meta["history"], device=device,
                             dtype=precision, name=name, rollout=rollout)
