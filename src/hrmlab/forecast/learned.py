"""Learned forecasters (LSTM, HRM) behind the planner's `Forecaster` interface, and their roll-out modes.

Positions are normalised (cells / grid size); a model maps a history (M, H, 2) to displacements. A
forecast turns displacements into positions over the planner's horizon in one of three modes
(`forecast.rollout`), each one batched call over every obstacle of every episode:

* `window` — the original scripts': predict one step, append the predicted position to the H-position
  window, drop the oldest, re-encode the window; horizon × H token-steps per forecast. Seed presets.
* `stateful` — encode the history once, then advance the recurrence by one token per horizon step,
  feeding back the predicted position; H + horizon − 1 token-steps. Recurrent models only.
* `direct` — a multi-horizon head predicts the next K per-step displacements in one pass over the
  history (H token-steps); a horizon longer than K is chained K steps at a time.

The model contract (every learned model family implements it):

* a config dataclass field `out_steps: int = 1` (the model keeps its config as `self.cfg`; the experiment
  sets the field from forecast.rollout); `forward(x: (B, H, 2))` returns (B, 2) when it is 1 and
  (B, K, 2) — the displacement of each of the next K steps, per step, not cumulative — when it is K > 1;
* recurrent models also offer `encode(x: (B, H, 2)) -> (state, displacement (B, 2))` and
  `advance(state, x_next: (B, 2)) -> (state, displacement (B, 2))`, where x_next is the next position and
  `state` is opaque (it may be updated in place). encode(x[:, :T-1]) followed by advance(·, x[:, T-1])
  must equal forward(x): the recurrence is the same, only cut in two.

Training (experiments/grid/training.py) — the trainer's MSE of the predicted displacements, in normalised units:

* `window` and `stateful`: the one-step model, trained on one-step samples exactly as the seed trained
  it (a stateful forecast runs that model); the checkpoint records `window`;
* `direct`: the K-step head (K = the planner's horizon) on windows with their K-step future, the loss the
  mean squared per-step displacement error over the K steps and both coordinates; records `direct`.

Why stateful has no objective of its own: two were tried on quick's data — teacher-forced (advance with
the true positions, one-step loss at every step) and free-running (feed back the predictions, position
loss over the horizon); both made the LSTM plan clearly worse than one-step training run stateful, and
the quick HRM, whose recurrence is unstable past the trained length, diverged under both. Likewise a
direct head scored on positions instead of per-step displacements forecast better on average but planned
worse: it trades the near-term accuracy the planner needs most for the late steps.

Which modes a checkpoint runs (`TRAINED_RUNS`): a one-step (`window`) checkpoint runs `window` and, if
the model is recurrent, `stateful` — the recurrence then runs past the H tokens it was trained on, which
costs the LSTM little and degrades the late horizon steps of the quick HRM (docs/benchmarks.md); a
`direct` checkpoint runs only `direct`, and `direct` needs one.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from hrmlab.errors import UserError
from hrmlab.forecast.base import ROLLOUTS, Forecaster, Observation

EVAL_DTYPES = ("fp32", "bf16")
TRAINED_FOR = {"window": "window", "stateful": "window", "direct": "direct"}
"""Roll-out mode → the training its model gets (and its checkpoint records)."""
TRAINED_RUNS = {"window": ("window", "stateful"), "direct": ("direct",)}
"""Training a checkpoint records → the roll-outs it may be evaluated with."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' / None → CUDA if available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def out_steps(model: nn.Module) -> int:
    """K of the model contract: displacements per forward call."""
    return int(getattr(getattr(model, "cfg", None), "out_steps", 1))


def is_recurrent(model: nn.Module) -> bool:
    """Whether the model offers the stateful contract (encode / advance)."""
    return callable(getattr(model, "encode", None)) and callable(getattr(model, "advance", None))


def check_rollout(model: nn.Module, rollout: str) -> None:
    """UserError (one line) unless `model` can run `rollout`."""
    if rollout not in ROLLOUTS:
        raise UserError(f"unknown roll-out {rollout!r}; valid choices: {', '.join(ROLLOUTS)}")
    k = out_steps(model)
    if rollout == "stateful" and not is_recurrent(model):
        raise UserError(f"{type(model).__name__} is not recurrent, so it has no stateful roll-out; "
                        "use forecast.rollout=window or direct")
    if rollout == "direct" and k == 1:
        raise UserError("the direct roll-out needs a multi-step head (out_steps > 1): train with forecast.rollout=direct")
    if rollout != "direct" and k > 1:
        raise UserError(f"a {k}-step head runs only the direct roll-out, not {rollout}")


def check_trained_for(trained: str, rollout: str, what: str) -> None:
    """UserError (one line) when a checkpoint trained for `trained` is asked to run `rollout`."""
    if trained not in TRAINED_RUNS:
        raise UserError(f"{what} records an unknown training {trained!r}; valid choices: {', '.join(TRAINED_RUNS)}")
    if rollout not in TRAINED_RUNS[trained]:
        raise UserError(f"{what} was trained for the {trained} roll-out and cannot be evaluated {rollout}; "
                        f"it runs {' or '.join(TRAINED_RUNS[trained])} (retrain with forecast.rollout={rollout})")


class LearnedForecaster(Forecaster):
    """Wraps a trained model; positions in and out are in cell units, the model sees positions / grid_size.

    Everything between the history going in and the forecast coming out stays on the model's device, under
    torch.inference_mode (and bf16 autocast with dtype='bf16'): one host→device copy per forecast, one back."""

    def __init__(self, model: nn.Module, grid_size: float, history: int, device: str | torch.device | None = "auto",
                 dtype: str = "fp32", name: str = "learned", rollout: str = "window"):
        if dtype not in EVAL_DTYPES:
            raise UserError(f"unknown forecaster dtype {dtype!r}; valid choices: {', '.join(EVAL_DTYPES)}")
        check_rollout(model, rollout)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.model_dtype = next(self.model.parameters()).dtype
        self.grid_size = float(grid_size)
        self.history = int(history)
        self.dtype = dtype
        self.name = name
        self.rollout = rollout
        self._roll = {"window": self._window, "stateful": self._stateful, "direct": self._direct}[rollout]

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
        window = torch.as_tensor(history.reshape(b * n, self.history, 2) / self.grid_size,
                                 dtype=torch.float32, device=self.device)
        with torch.inference_mode(), self._autocast():
            out = self._roll(window, horizon)
        return out.cpu().numpy().astype(np.float64).reshape(b, n, horizon, 2) * self.grid_size

    # Each roll-out: (M, H, 2) float32 normalised window → (M, horizon, 2) float32 positions, on the device.
    # Positions accumulate one float32 addition per step (last + step), in every mode alike.

    def _window(self, window: torch.Tensor, horizon: int) -> torch.Tensor:
        out = torch.empty((window.shape[0], horizon, 2), dtype=torch.float32, device=self.device)
        for k in range(horizon):
            step = self.model(window.to(self.model_dtype)).float()
            position = window[:, -1] + step
            out[:, k] = position
            window = torch.cat([window[:, 1:], position[:, None]], dim=1)
        return out

    def _stateful(self, window: torch.Tensor, horizon: int) -> torch.Tensor:
        out = torch.empty((window.shape[0], horizon, 2), dtype=torch.float32, device=self.device)
        state, step = self.model.encode(window.to(self.model_dtype))
        position = window[:, -1]
        for k in range(horizon):
            if k:
                state, step = self.model.advance(state, position.to(self.model_dtype))
            position = position + step.float()
            out[:, k] = position
        return out

    def _direct(self, window: torch.Tensor, horizon: int) -> torch.Tensor:
        out = torch.empty((window.shape[0], horizon, 2), dtype=torch.float32, device=self.device)
        done = 0
        while True:
            steps = self.model(window.to(self.model_dtype)).float()  # (M, K, 2)
            position = window[:, -1]
            take = min(steps.shape[1], horizon - done)
            for k in range(take):
                position = position + steps[:, k]
                out[:, done + k] = position
            done += take
            if done == horizon:
                return out
            # a horizon longer than K: chain, with the predicted positions as the newest history
            window = torch.cat([window, out[:, done - take:done]], dim=1)[:, -self.history:]
