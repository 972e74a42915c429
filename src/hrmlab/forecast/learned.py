"""Learned forecasters (LSTM, HRM) behind the planner's `Forecaster` interface.

The model maps a normalised history (M, H, 2) to a normalised one-step displacement (M, 2). A forecast
rolls it out autoregressively: append the predicted position, drop the oldest, repeat for the horizon.
Every obstacle of every episode goes through one batched model call per step.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from hrmlab.errors import UserError
from hrmlab.forecast.base import Forecaster, Observation

EVAL_DTYPES = ("fp32", "bf16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' / None → CUDA if available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class LearnedForecaster(Forecaster):
    """Wraps a trained model; positions in and out are in cell units, the model sees positions / grid_size."""

    def __init__(self, model: nn.Module, grid_size: float, history: int, device: str | torch.device | None = "auto",
                 dtype: str = "fp32", name: str = "learned"):
        if dtype not in EVAL_DTYPES:
            raise UserError(f"unknown forecaster dtype {dtype!r}; valid choices: {', '.join(EVAL_DTYPES)}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.grid_size = float(grid_size)
        self.history = int(history)
        self.dtype = dtype
        self.name = name

    def _autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fit_history(self, history: np.ndarray) -> np.ndarray:
        """Last `self.history` positions; a shorter history is left-padded with its oldest position."""
        have = history.shape[2]
        if have >= self.history:
            return history[:, :, have - self.history:]
        pad = np.repeat(history[:, :, :1], self.history - have, axis=2)
        return np.concatenate([pad, history], axis=2)

    def forecast(self, obs: Observation, horizon: int) -> np.ndarray:
        history = self.fit_history(np.asarray(obs.history, dtype=np.float64))
        b, n = history.shape[:2]
        if b * n == 0 or horizon == 0:
            return np.zeros((b, n, horizon, 2))
        model_dtype = next(self.model.parameters()).dtype
        window = torch.as_tensor(history.reshape(b * n, self.history, 2) / self.grid_size,
                                 dtype=torch.float32, device=self.device)
        out = torch.empty((b * n, horizon, 2), dtype=torch.float32, device=self.device)
        with torch.inference_mode(), self._autocast():
            for k in range(horizon):
                step = self.model(window.to(model_dtype)).float()
                position = window[:, -1] + step
                out[:, k] = position
                window = torch.cat([window[:, 1:], position[:, None]], dim=1)
        return out.cpu().numpy().astype(np.float64).reshape(b, n, horizon, 2) * self.grid_size
