"""Sane starts (issue 16): every new preset's untrained models forecast no worse than zero motion, and the
output settings (zero head, residual over constant velocity) work alike for every model kind."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hrmlab.data.dataset import TrajectoryWindows
from hrmlab.forecast.heads import ResidualOverConstantVelocity, add_per_step, last_displacement
from hrmlab.forecast.models import MODELS, build_model, count_parameters
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.presets import load_preset, preset_names
from hrmlab.worlds import bounce_grid

NEW_GRID_PRESETS = [n for n in preset_names() if n == "quick" or n.startswith("suite-")]


def real_windows(world, episodes=12, steps=36, history=20, count=300):
    """`count` (X, Y) windows from validation episodes of `world`, normalised as in training."""
    state = bounce_grid.reset_split(world, "val", np.arange(episodes))
    positions = np.empty((episodes, state.pos.shape[1], steps, 2))
    for t in range(steps):
        positions[:, :, t] = state.pos
        bounce_grid.step(world, state)
    windows = TrajectoryWindows((positions / world.grid_size).astype(np.float32), history)
    idx = np.random.default_rng(0).choice(len(windows), size=min(count, len(windows)), replace=False)
    return tuple(torch.from_numpy(a) for a in windows.get_batch(idx))


@pytest.mark.parametrize("preset", NEW_GRID_PRESETS)
def test_untrained_models_of_new_presets_are_no_worse_than_zero_motion(preset):
    cfg = load_preset(preset)
    x, y = real_windows(cfg.world, history=cfg.data.history)
    zero_motion = F.mse_loss(torch.zeros_like(y), y).item()
    kinds = [k for k in MODELS if hasattr(cfg, k.replace("-", "_"))]
    assert {"hrm", "lstm"} <= set(kinds)
    for kind in kinds:
        model = build_model(cfg.model_config(kind)).eval()
        with torch.no_grad():
            loss = F.mse_loss(model(x), y).item()
        assert loss <= zero_motion, f"{preset}/{kind}: untrained one-step MSE {loss:.3g} > zero motion {zero_motion:.3g}"


def test_seed_replicas_keep_the_originals_init():
    cfg = load_preset("hrm-cloud-v3")
    assert (cfg.hrm.output, cfg.hrm.head_init, cfg.lstm.output, cfg.lstm.head_init) == (
        "displacement", "default", "displacement", "default")
    model = build_model(cfg.hrm)
    assert not isinstance(model, ResidualOverConstantVelocity) and model.head.weight.abs().sum() > 0


def test_zero_head_predicts_zero_motion_and_residual_cv_predicts_constant_velocity():
    x = torch.rand(5, 20, 2)
    zero = build_model(LSTMConfig(hidden=16, head_init="zero"))
    assert torch.equal(zero(x), torch.zeros(5, 2))
    cv = build_model(LSTMConfig(hidden=16, head_init="zero", output="residual-cv"))
    assert torch.equal(cv(x), x[:, -1] - x[:, -2])
    # the wrapper adds no parameters and keeps the seeded init of the inner model
    plain = build_model(LSTMConfig(hidden=16), seed=4)
    wrapped = build_model(LSTMConfig(hidden=16, output="residual-cv"), seed=4)
    assert count_parameters(plain) == count_parameters(wrapped)
    assert torch.equal(plain.lstm.weight_ih_l0, wrapped.model.lstm.weight_ih_l0)


class _Steps(torch.nn.Module):
    """A K-step model with a self-supervising objective, to check how the wrapper shifts targets."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.full((3, 2), 0.25))
        self.seen_target = None

    def forward(self, x, target=None):
        return self.training_loss(x, target) if target is not None else self.bias.expand(len(x), 3, 2)

    def training_loss(self, x, y):
        self.seen_target = y
        return F.mse_loss(self(x), y)


def test_residual_cv_adds_the_last_displacement_to_every_step_and_shifts_training_targets():
    x, y = torch.rand(4, 20, 2), torch.rand(4, 3, 2)
    inner = _Steps()
    model = ResidualOverConstantVelocity(inner)
    cv = last_displacement(x)
    torch.testing.assert_close(model(x), inner(x) + cv[:, None], rtol=0, atol=0)
    loss = model(x, target=y)  # the trainer's call
    torch.testing.assert_close(inner.seen_target, y - cv[:, None], rtol=0, atol=0)
    # the same loss as MSE of the shifted forecast: float32 rounding of the shift only (≤ 1e-6 relative)
    torch.testing.assert_close(loss, F.mse_loss(add_per_step(inner(x), cv), y), rtol=1e-6, atol=1e-9)


def test_every_kind_accepts_the_output_settings():
    for kind, entry in MODELS.items():
        fields = {f.name for f in dataclasses.fields(entry.config)}
        assert {"output", "head_init"} <= fields, kind


def test_residual_cv_keeps_the_stateful_contract_of_a_recurrent_model():
    """encode(x[:, :T-1]) then advance(·, x[:, T-1]) equals forward(x), residual included; a non-recurrent
    inner model offers no stateful roll-out through the wrapper either."""
    from hrmlab.forecast.learned import is_recurrent
    from hrmlab.forecast.lstm import LSTMConfig

    model = build_model(LSTMConfig(hidden=16, output="residual-cv"), seed=3).eval()
    x = torch.cumsum(torch.randn(5, 20, 2) * 0.03, dim=1)
    with torch.no_grad():
        state, _ = model.encode(x[:, :-1])
        _, step = model.advance(state, x[:, -1])
        whole = model(x)
    # same float32 ops in the same order except the residual's add: a few ulp of values ~0.05
    torch.testing.assert_close(step, whole, rtol=0, atol=1e-6)
    assert is_recurrent(model)
    trm = build_model({"kind": "trm", "d_model": 16, "heads": 2, "output": "residual-cv"}, seed=0)
    assert not is_recurrent(trm)
