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

* a config dataclass field `out_steps: int = 1`; `forward(x: (B, H, 2))` returns (B, 2) when it is 1 and
  (B, K, 2) — the displacement of each of the next K steps, per step, not cumulative — when it is K > 1;
* recurrent models also offer `encode(x: (B, H, 2)) -> (state, displacement (B, 2))` and
  `advance(state, x_next: (B, 2)) -> (state, displacement (B, 2))`, where x_next is the next position and
  `state` is opaque (it may be updated in place). encode(x[:, :T-1]) followed by advance(·, x[:, T-1])
  must equal forward(x): the recurrence is the same, only cut in two.

Training objective per mode (train/forecaster.py), in normalised units: the mean squared error of the
POSITIONS the mode's own roll-out predicts over K steps (both coordinates), each roll-out exactly as at
inference:

* `window`: K = 1, the one-step displacement MSE (the seed's loss; position error = displacement error);
* `direct`: K = horizon, the K-step head's displacements summed into positions;
* `stateful`: K = horizon, free-running: encode the history, then advance K − 1 times feeding back the
  model's own predicted positions, differentiated end to end — the recurrence is trained on the sequence
  lengths H … H+K−1 and on the inputs it sees at inference.

Which modes a checkpoint runs (`TRAINED_RUNS`): a window- or stateful-trained one-step model runs
`window` and, if recurrent, `stateful` (a window-trained model then runs its recurrence past the H
tokens it was trained on — allowed, and measured in docs/benchmarks.md); `direct` needs a direct-trained
multi-step head, and a direct-trained head runs only `direct`.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from hrmlab.errors import UserError
from hrmlab.forecast.base import ROLLOUTS, Forecaster, Observation

EVAL_DTYPES = ("fp32", "bf16")
TRAINED_RUNS = {"window": ("window", "stateful"), "stateful": ("stateful", "window"), "direct": ("direct",)}
"""Roll-out a checkpoint was trained for → the roll-outs it may be evaluated with."""


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
        raise UserError(f"{what} records an unknown roll-out {trained!r}; valid choices: {', '.join(ROLLOUTS)}")
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
