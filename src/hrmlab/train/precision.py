"""Precision modes: how weights are stored, which dtype the forward runs in, and whether losses are scaled.

* `fp32`: everything in float32.
* `fp16`: float32 weights, float16 autocast, dynamic loss scaling (GradScaler) against underflow.
* `bf16`: float32 master weights, bfloat16 autocast (the default for new mixed-precision runs).
* `bf16-pure`: weights and optimiser state cast to bfloat16, as the seed's Mid/RobustFix/8gpu scripts did;
  small updates are lost to rounding, so use it only to reproduce those presets.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from hrmlab.errors import UserError

PRECISIONS = ("fp32", "fp16", "bf16", "bf16-pure")


@dataclass
class Precision:
    mode: str
    device: torch.device
    scaler: torch.amp.GradScaler | None

    @property
    def param_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.mode == "bf16-pure" else torch.float32

    def autocast(self):
        """Context for forward + loss."""
        if self.mode == "fp16":
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        if self.mode == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(device=self.device, dtype=self.param_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()


def make_precision(mode: str, device: torch.device) -> Precision:
    """Validate `mode` for `device`; fp16 on a CPU without GradScaler/fp16 autocast support is a UserError."""
    if mode not in PRECISIONS:
        raise UserError(f"unknown precision {mode!r}; valid choices: {', '.join(PRECISIONS)}")
    scaler = None
    if mode == "fp16":
        try:
            scaler = torch.amp.GradScaler(device.type)
            with torch.autocast(device_type=device.type, dtype=torch.float16):
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        except (RuntimeError, AttributeError, TypeError) as exc:
            raise UserError(f"precision fp16 is not supported on {device.type} with torch {torch.__version__} "
                            f"({str(exc).splitlines()[0]}); use bf16 or fp32") from None
    return Precision(mode, device, scaler)
