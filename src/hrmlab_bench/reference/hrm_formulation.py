"""The original scripts' formulation of the recurrent HRMs: the baseline of `hrmlab bench` (train.py).

Same blocks and schedule as `hrmlab/forecast/hrm.py`, but each block runs a real `nn.MultiheadAttention`
on a length-1 sequence (q, k, v projections, softmax over one key) and each history step is embedded
separately inside the time loop, as the original scripts did. Parameter names match `hrm.py`, so
`reference_from(model)` is a plain state-dict copy; tests/test_seed_models.py checks that it reproduces
the original classes' outputs and that hrm.py's fast path has its gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from hrmlab.forecast.hrm import DeepSapientHRM, HRMConfig


class MultiheadAttentionLengthOne(nn.MultiheadAttention):
    """nn.MultiheadAttention called the seed's way: on (B, 1, d) with query = key = value."""

    def __init__(self, d: int, heads: int):
        super().__init__(d, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) → (B, d)
        seq = x.unsqueeze(1)
        return super().forward(seq, seq, seq, need_weights=False)[0].squeeze(1)


class ReferenceDeepSapientHRM(DeepSapientHRM):
    """DeepSapientHRM (or SapientHRM with n_layers = 1) with full length-1 attention and per-step embedding."""

    def __init__(self, cfg: HRMConfig):
        if cfg.variant not in ("sapient", "deep"):
            raise ValueError(f"the reference formulation covers the recurrent variants, not {cfg.variant!r}")
        super().__init__(cfg, attention_cls=MultiheadAttentionLengthOne)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps = x.shape[:2]
        probe = x.new_empty(0).to(self.head.weight.dtype)
        s_low = self.initial_states(batch, probe)
        s_high = self.initial_states(batch, probe)
        for t in range(steps):
            embedded = self.embed(x[:, t])
            if t % self.cfg.h_period == 0:
                inp = s_low[-1].detach() if self.cfg.detach_h_input else s_low[-1]
                for i, block in enumerate(self.h_blocks):
                    s_high[i] = inp = block(inp, s_high[i])
            inp = embedded + s_high[-1]
            for i, block in enumerate(self.l_blocks):
                s_low[i] = inp = block(inp, s_low[i])
        return self.head(s_low[-1])


def reference_from(model: DeepSapientHRM) -> ReferenceDeepSapientHRM:
    """A reference-formulation twin of `model` holding a copy of its weights (same device and dtype)."""
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # its own init is overwritten; keep the global RNG untouched
        reference = ReferenceDeepSapientHRM(model.cfg)
    reference.to(device=param.device, dtype=param.dtype)
    reference.load_state_dict(model.state_dict())
    reference.train(model.training)
    return reference
