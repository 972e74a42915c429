"""Checkpoints that a killed run can resume from exactly.

A checkpoint holds the model, optimizer, LR scheduler and grad-scaler states, the step and epoch, the
resolved config, free-form `extra` (e.g. the sampler position or the best validation loss) and the
torch / numpy / python RNG states. Writes are atomic (temporary file, then `os.replace`), so a run
killed mid-save leaves the previous checkpoint intact and never a half-written one.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrmlab.fileio import atomic_open
from hrmlab.errors import UserError

FORMAT_VERSION = 1
"""Bumped when the checkpoint layout changes; older files are rejected with a clear message."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module behind DDP / torch.compile wrappers, so checkpoints carry plain parameter names."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict:
    """Every RNG a training step may touch (the trainer itself only uses explicit seeds)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:  # different number of GPUs than when saved: CUDA RNGs start fresh
            pass


def save_checkpoint(path, *, model: torch.nn.Module, optimizer=None, scheduler=None, scaler=None,
                    step: int, epoch: int, config: dict, extra: dict | None = None) -> None:
    """Atomically write a resumable checkpoint to `path` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "config": config,
        "extra": extra or {},
        "rng": rng_state(),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(path, *, model: torch.nn.Module, optimizer=None, scheduler=None, scaler=None,
                    map_location="cpu", restore_rng: bool = True) -> dict:
    """Restore states saved by `save_checkpoint` into the given objects; return
    {step, epoch, config, extra}. Raises UserError (one line) if the file is missing, unreadable or was
    written for a different model."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train first or pass the right run directory")
    try:
        # weights_only=False: the payload holds numpy RNG state and the config dict (our own files)
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({first}); delete it and retrain") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise UserError(f"checkpoint {path} is not an hrmlab checkpoint; delete it and retrain")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {version}, expected {FORMAT_VERSION}; retrain")
    target = unwrap_model(model)
    _check_compatible(path, target.state_dict(), payload["model"])
    target.load_state_dict(payload["model"])
    try:
        if optimizer is not None and payload.get("optimizer") is not None:
            optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None and payload.get("scheduler") is not None:
            scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler") is not None:
            scaler.load_state_dict(payload["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"checkpoint {path}: optimizer/scheduler state does not match this run ({first})") from None
    if restore_rng:
        set_rng_state(payload.get("rng"))
    return {"step": payload["step"], "epoch": payload["epoch"], "config": payload.get("config"),
            "extra": payload.get("extra") or {}}


def _check_compatible(path: Path, expected: dict, saved: dict) -> None:
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UserError(f"checkpoint {path} was written for a different model ({detail}, "
                        f"{len(missing)} missing / {len(unexpected)} unexpected tensors)")
    for name, tensor in expected.items():
        if tuple(saved[name].shape) != tuple(tensor.shape):
            raise UserError(f"checkpoint {path} was written for a different model: {name} has shape "
                            f"{tuple(saved[name].shape)}, this model expects {tuple(tensor.shape)}")
