"""LSTM baseline forecaster (SPEC §4): 2-layer `nn.LSTM` over the history, a Linear on the last step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hrmlab.forecast.heads import OutputSettings

POSITION_DIMS = 2
"""Inputs are (row, col) positions, outputs (row, col) displacements."""


@dataclass
class LSTMConfig(OutputSettings):
    """The seed's LSTMPredictor. hidden 128 → 199,938 params; 256 → 793,090; 512 → 3,159,042."""

    hidden: int = 256
    """Hidden width of both LSTM layers."""
    layers: int = 2
    """Stacked LSTM layers (the seed always used 2)."""
    dropout: float = 0.0
    """Dropout between LSTM layers (the 8gpu_v2 LSTM used 0.1)."""


class LSTMPredictor(nn.Module):
    """(B, T, 2) normalised history → (B, 2) normalised one-step displacement."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.lstm = nn.LSTM(POSITION_DIMS, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden, POSITION_DIMS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])
