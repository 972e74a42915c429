"""The original recipes as named settings (issue 13): LAMB as torch_optimizer implements it, the LSTM recipes
(clipping, fp16), the HRM's bf16 seed evaluation, and v1's world (obstacle draw, clip, raw coordinates)."""

import math

import numpy as np
import pytest
import torch

from hrmlab.evaluate.protocols import V1_WORLD
from hrmlab.presets import load_preset
from hrmlab.train.optim import Lamb, make_optimizer
from hrmlab.worlds import bounce_grid

SEED_PRESETS = ["hrm-cloud", "hrm-cloud-v2", "hrm-cloud-v3", "hrm-cloud-boosted", "hrm-cloud-mid",
                "hrm-cloud-fullscale", "hrm-cloud-robustfix", "hrm-cloud-split", "hrm-cloud-8gpu", "hrm-cloud-8gpu-v2"]


def _one_lamb_step(optimizer_name, w0, g, lr=0.1, wd=0.01):
    w = torch.nn.Parameter(w0.clone())
    opt = make_optimizer(optimizer_name, [w], lr, wd, torch.device("cpu"))
    w.grad = g.clone()
    opt.step()
    return w.detach()


def test_lamb_torch_optimizer_variant_step_in_closed_form():
    """torch_optimizer.Lamb (8gpu_v2): m, v without bias correction, trust ratio min(‖w‖, 10) / ‖update‖."""
    torch.manual_seed(0)
    w0 = torch.randn(64, 64)  # ‖w‖ ≈ 64 > 10: the clamp acts
    g = torch.randn(64, 64) * 1e-3
    m, v = 0.1 * g, 0.001 * g * g
    update = m / (v.sqrt() + 1e-6) + 0.01 * w0
    expected = w0 - 0.1 * (10.0 / update.norm()) * update
    torch.testing.assert_close(_one_lamb_step("lamb-torch-optimizer", w0, g), expected, rtol=1e-6, atol=1e-6)
    # the paper's variant: bias-corrected moments, unclamped ‖w‖
    update = (g / (g.abs() + 1e-6)) + 0.01 * w0
    paper = w0 - 0.1 * (w0.norm() / update.norm()) * update
    torch.testing.assert_close(_one_lamb_step("lamb", w0, g), paper, rtol=1e-5, atol=1e-6)
    assert isinstance(make_optimizer("lamb-torch-optimizer", [torch.nn.Parameter(w0)], 1e-3, 0.0, "cpu"), Lamb)


def test_lamb_resumes_optimizer_state_saved_before_the_variants_existed():
    w = torch.nn.Parameter(torch.ones(3))
    opt = Lamb([w], lr=0.1)
    state = opt.state_dict()
    for group in state["param_groups"]:
        del group["debias"], group["weight_norm_max"]
    opt = Lamb([w], lr=0.1)
    opt.load_state_dict(state)
    w.grad = torch.ones(3)
    opt.step()
    assert torch.isfinite(w).all() and not torch.equal(w.detach(), torch.ones(3))


def test_seed_recipes():
    for name in SEED_PRESETS:
        cfg = load_preset(name)
        # the LSTM was clipped only where the HRM was and only until v2; from v3 on the scripts clipped the HRM
        assert cfg.train_lstm.grad_clip == (1.0 if name == "hrm-cloud-v2" else 0.0), name
        assert cfg.train_hrm.grad_clip == (0.0 if name == "hrm-cloud" else 1.0), name
        fp16_lstm = {"hrm-cloud-boosted", "hrm-cloud-fullscale", "hrm-cloud-split", "hrm-cloud-8gpu", "hrm-cloud-8gpu-v2"}
        assert (cfg.train_lstm.precision == "fp16") == (name in fp16_lstm), name
        assert cfg.seed_hrm_precision == ("bf16" if name in ("hrm-cloud-robustfix", "hrm-cloud-8gpu-v2") else "fp32")
        assert cfg.train_hrm.optimizer == ("lamb-torch-optimizer" if name == "hrm-cloud-8gpu-v2" else "adamw"), name
    assert load_preset("quick").seed_hrm_precision == "fp32" and load_preset("quick").train_hrm.optimizer == "adamw"


def test_seed_protocol_evaluates_the_hrm_at_the_recipes_precision():
    from hrmlab.forecast.registry import ForecasterSpec
    from hrmlab.experiments.grid.stages import seed_protocol_specs

    specs = [ForecasterSpec("hrm", "h.pt"), ForecasterSpec("lstm", "l.pt"), ForecasterSpec("oracle")]
    seed = seed_protocol_specs(load_preset("hrm-cloud-robustfix"), specs)
    assert [s.precision for s in seed] == ["bf16", "fp32", "fp32"]
    assert [s.precision for s in seed_protocol_specs(load_preset("hrm-cloud-8gpu"), specs)] == ["fp32"] * 3


def test_v1_world_is_drawn_as_v1_drew_it():
    """hrm_cloud.py: 40 × randint(0, 20, 2) walls (drawn as v1 drew them; the intended cells are kept), then per
    obstacle {'pos': rand(2) * 20, 'vel': randn(2) * 0.5}, with no wall check; bounces clip at 19.9."""
    assert load_preset("hrm-cloud").world == V1_WORLD
    seeds = [9999, 10000, 10049]
    state = bounce_grid.reset_seed_exact(V1_WORLD, seeds)
    for e, seed in enumerate(seeds):
        rng = np.random.RandomState(seed)
        for _ in range(40):
            rng.randint(0, 20, 2)
        for k in range(8):
            pos = rng.rand(2) * 20  # the same IEEE product of the same draw: equal on any CPU
            vel = rng.randn(2) * 0.5
            assert np.array_equal(state.pos[e, k], pos) and np.array_equal(state.vel[e, k], vel)
    assert (state.pos != np.round(state.pos)).any()  # continuous positions, not cells
    split = bounce_grid.reset_split(V1_WORLD, "train", np.arange(200))
    assert (split.pos >= 0).all() and (split.pos < 20).all() and (split.pos != np.round(split.pos)).any()
    rows = np.arange(200)[:, None]
    cells = split.pos.astype(int)
    assert split.walls[rows, cells[..., 0], cells[..., 1]].any()  # no wall check: some start on a wall
    state.pos[0, 0] = [19.5, 5.0]
    state.vel[0, 0] = [0.6, 0.0]
    bounce_grid.step(V1_WORLD, state)
    assert state.pos[0, 0, 0] == pytest.approx(19.9) and state.vel[0, 0, 0] == pytest.approx(-0.6)


def test_v1_models_see_raw_cell_coordinates():
    from hrmlab.data.collect import simulate_positions
    from hrmlab.forecast.loading import model_metadata

    assert V1_WORLD.position_scale == 1.0 and bounce_grid.BounceGridConfig().position_scale == 20.0
    raw = simulate_positions(V1_WORLD, "train", 0, 4, 12, 4)
    assert raw.max() > 1.5  # cells, not fractions of the grid
    state = bounce_grid.reset_split(V1_WORLD, "train", np.arange(4))
    np.testing.assert_allclose(raw[:, :, 0], state.pos, rtol=1e-7)  # float32 storage of the raw positions
    from hrmlab.forecast.lstm import LSTMConfig

    assert model_metadata("lstm", LSTMConfig(), V1_WORLD.position_scale, 10)["grid_size"] == 1.0
    assert math.isclose(load_preset("hrm-cloud").world.position_scale, 1.0)
