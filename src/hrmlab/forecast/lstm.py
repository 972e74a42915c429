"""LSTM baseline forecaster (SPEC §4): 2-layer `nn.LSTM` over the history, a Linear on the last step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hrmlab.forecast.heads import POSITION_DIMS, OutputSettings, shape_output


@dataclass
class LSTMConfig(OutputSettings):
    """The seed's LSTMPredictor. hidden 128 → 199,938 params; 256 → 793,090; 512 → 3,159,042."""

    hidden: int = 256
    """Hidden width of both LSTM layers."""
    layers: int = 2
    """Stacked LSTM layers (the seed always used 2)."""
    dropout: float = 0.0
    """Dropout between LSTM layers (the 8gpu_v2 LSTM used 0.1)."""
    out_steps: int = 1
    """K: displacements predicted per call. 1: forward → (B, 2); K > 1: (B, K, 2), the next K per-step
    displacements (the `direct` roll-out; set through forecast.rollout, not by hand)."""


class LSTMPredictor(nn.Module):
    """(B, T, 2) normalised history → (B, 2) normalised one-step displacement ((B, K, 2) with out_steps K).

    Stateful roll-out (forecast/learned.py): `encode` runs the history once and returns the LSTM's (h, c)
    with the next displacement; `advance` feeds one more position through the same recurrence."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.lstm = nn.LSTM(POSITION_DIMS, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden, POSITION_DIMS * cfg.out_steps)

    def readout(self, top: torch.Tensor) -> torch.Tensor:
        return shape_output(self.head(top), self.cfg.out_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.readout(out[:, -1])

    def encode(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        out, state = self.lstm(x)
        return state, self.readout(out[:, -1])

    def advance(self, state, x_next: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        out, state = self.lstm(x_next[:, None], state)
        return state, self.readout(out[:, 0])
