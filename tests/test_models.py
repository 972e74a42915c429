"""Forecaster models: exact parameter counts (SPEC §4), the length-1 attention shortcut, and the learned
forecaster's batched rollout. Fidelity to the ORIGINAL classes (outputs, initial weights) is tested against
the original's own numbers in test_seed_models.py."""

import numpy as np
import pytest
import torch
from torch import nn

from hrmlab.errors import UserError
from hrmlab.forecast.base import Observation
from hrmlab.forecast.hrm import EncoderHRM, HRMConfig, LengthOneAttention, SequenceAttention
from hrmlab.forecast.models import build_model, count_parameters
from hrmlab.forecast.learned import LearnedForecaster
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.worlds import bounce_grid
from hrmlab_bench.reference.hrm_formulation import reference_from

SPEC_TABLE = [  # preset, config, params (SPEC §4)
    ("v1/v2", dict(variant="sapient", d_model=256, heads=4, h_period=3, rmsnorm="original", detach_h_input=False),
     1_550_082),
    ("v3/boosted", dict(variant="sapient", d_model=128, heads=4, h_period=2, rmsnorm="original"), 388_226),
    ("mid", dict(variant="deep", d_model=256, n_layers=2, heads=4, block="gated", init_std=0.01), 3_624_194),
    ("fullscale", dict(variant="deep", d_model=512, n_layers=4, heads=8, block="plain", init_std=0.02), 24_771_074),
    ("robustfix/split/8gpu", dict(variant="deep", d_model=512, n_layers=4, heads=8, block="gated", init_std=0.01,
                                  initial_state="random"), 28_969_474),
    ("8gpu-v2", dict(variant="encoder", d_model=512, n_layers=4, heads=8, block="gated", ffn="gelu",
                     rmsnorm="standard", init_std=0.01), 29_411_842),
]


@pytest.mark.parametrize("preset,fields,expected", SPEC_TABLE, ids=[row[0] for row in SPEC_TABLE])
def test_hrm_parameter_counts(preset, fields, expected):
    assert count_parameters(build_model(HRMConfig(**fields))) == expected


@pytest.mark.parametrize("hidden,expected", [(128, 199_938), (256, 793_090), (512, 3_159_042)])
def test_lstm_parameter_counts(hidden, expected):
    assert count_parameters(build_model(LSTMConfig(hidden=hidden))) == expected
    assert count_parameters(build_model({"kind": "lstm", "hidden": hidden, "dropout": 0.1})) == expected


def _mha_twin(ours, d, heads):
    mha = nn.MultiheadAttention(d, heads, batch_first=True)
    mha.load_state_dict(ours.state_dict())  # same names and shapes as nn.MultiheadAttention
    return mha


def test_length_one_attention_equals_multihead_attention():
    torch.manual_seed(0)
    d, heads = 64, 4
    ours = LengthOneAttention(d, heads)
    nn.init.normal_(ours.in_proj_bias)
    nn.init.normal_(ours.out_proj.bias)
    mha = _mha_twin(ours, d, heads)
    x = torch.randn(16, d)
    expected = mha(x[:, None], x[:, None], x[:, None], need_weights=False)[0][:, 0]
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in mha.parameters()) == 4 * d * d + 4 * d


def test_sequence_attention_equals_multihead_attention():
    torch.manual_seed(0)
    d, heads = 64, 8
    ours = SequenceAttention(d, heads)
    nn.init.normal_(ours.in_proj_bias)
    mha = _mha_twin(ours, d, heads)
    x = torch.randn(4, 20, d)
    torch.testing.assert_close(ours(x), mha(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fields", [
    dict(variant="sapient", d_model=64, heads=4, h_period=2, block="gated", init_std=0.02),
    dict(variant="deep", d_model=64, n_layers=2, heads=4, block="plain", init_std=0.02, rmsnorm="standard"),
], ids=["quick-gated", "deep-plain"])
def test_fast_path_equals_reference_formulation_for_new_models(fields):
    """hrmlab's own (standard-norm) models: the fused length-1 fast path gives the outputs and gradients of the
    formulation with real nn.MultiheadAttention (which test_seed_models shows is the original's)."""
    model = build_model(HRMConfig(**fields), seed=1)
    reference = reference_from(model)
    x = torch.rand(8, 20, 2)
    out, ref_out = model(x), reference(x)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    ref_out.square().sum().backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        ref = ref_grads[name].grad  # plain recurrences grow large; compare relative to the gradient's size
        assert (p.grad - ref).norm() <= 1e-4 * ref.norm() + 1e-8, name


def test_encoder_sees_the_last_step_but_not_the_order_of_the_others():
    """8gpu_v2 has no positional encoding and reads the last token: reordering the first T-1 steps changes
    nothing (attention is permutation-equivariant), moving another step into last place does."""
    model = build_model(HRMConfig(variant="encoder", d_model=32, n_layers=2, heads=4, block="gated", ffn="gelu",
                                  init_std=0.2))
    assert isinstance(model, EncoderHRM)
    x = torch.rand(5, 20, 2)
    shuffled = torch.cat([x[:, torch.randperm(19)], x[:, 19:]], dim=1)
    swapped = torch.cat([x[:, :18], x[:, 19:], x[:, 18:19]], dim=1)
    with torch.no_grad():
        out = model(x)
        scale = out.abs().max()
        # only float32 summation order differs (~1e-6 of the output here; exact to 1e-15 in float64)
        assert (model(shuffled) - out).abs().max() <= 1e-4 * scale
        assert (model(swapped) - out).abs().max() > 1e-2 * scale  # measured ~0.1 of the output


def test_random_initial_state_and_bad_configs():
    model = build_model(HRMConfig(variant="deep", d_model=32, n_layers=2, initial_state="random", init_std=0.02))
    x = torch.rand(3, 10, 2)
    assert model(x).shape == (3, 2)
    with pytest.raises(UserError):
        build_model(HRMConfig(variant="sapient", n_layers=2))
    with pytest.raises(UserError):
        build_model({"kind": "hrm", "no_such_field": 1})
    with pytest.raises(UserError):
        build_model({"kind": "transformer"})


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model(HRMConfig(d_model=32), seed=3)
    b = build_model(HRMConfig(d_model=32), seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def _constant_step_lstm(step_rc):
    """A real LSTMPredictor whose head ignores the LSTM and always predicts the displacement `step_rc`."""
    model = build_model(LSTMConfig(hidden=16))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(step_rc))
    return model


def test_learned_forecaster_rollout_shapes_and_units():
    world = bounce_grid.BounceGridConfig()
    state = bounce_grid.reset_split(world, "val", np.arange(3))
    history = np.random.default_rng(0).uniform(0, 19, (3, world.num_obstacles, 20, 2))
    forecaster = LearnedForecaster(_constant_step_lstm([0.01, -0.02]), grid_size=world.grid_size, history=20,
                                   device="cpu", name="const")
    out = forecaster.forecast(Observation(history, state, world), horizon=7)
    assert out.shape == (3, world.num_obstacles, 7, 2)
    steps = np.arange(1, 8)[None, None, :, None]
    expected = history[:, :, -1][:, :, None] + steps * np.array([0.01, -0.02]) * world.grid_size
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


def test_learned_forecaster_batches_match_single_episodes_and_pads_short_history():
    world = bounce_grid.BounceGridConfig()
    state = bounce_grid.reset_split(world, "val", np.arange(4))
    history = np.random.default_rng(1).uniform(0, 19, (4, world.num_obstacles, 20, 2))
    model = build_model(HRMConfig(variant="deep", d_model=32, n_layers=1, init_std=0.02), seed=0)
    forecaster = LearnedForecaster(model, grid_size=world.grid_size, history=20, device="cpu")
    batched = forecaster.forecast(Observation(history, state, world), horizon=5)
    single = forecaster.forecast(Observation(history[2:3], state.subset([2]), world), horizon=5)
    np.testing.assert_allclose(batched[2:3], single, rtol=1e-4, atol=1e-4)
    short = history[:, :, -3:]
    padded = np.concatenate([np.repeat(short[:, :, :1], 17, axis=2), short], axis=2)
    np.testing.assert_allclose(forecaster.forecast(Observation(short, state, world), 5),
                               forecaster.forecast(Observation(padded, state, world), 5), rtol=1e-6, atol=1e-6)
    bf16 = LearnedForecaster(model, grid_size=world.grid_size, history=20, device="cpu", dtype="bf16")
    assert bf16.forecast(Observation(history, state, world), 5).shape == batched.shape


def test_forecast_metrics_reproduce_reference_baselines_and_score_learned_models():
    from hrmlab.evaluate.forecast_metrics import ForecastEvalConfig, forecast_metrics, format_forecast_table
    from hrmlab.forecast.physics import OracleForecaster

    world = bounce_grid.BounceGridConfig()
    learned = LearnedForecaster(_constant_step_lstm([0.0, 0.0]), grid_size=world.grid_size, history=20,
                                device="cpu", name="learned-zero")
    results = forecast_metrics([learned, OracleForecaster()], world, ForecastEvalConfig(episodes=60))
    assert list(results) == ["learned-zero", "oracle", "zero", "constant-velocity"]
    # SPEC §3: zero motion 6.0e-4 and constant velocity 4.8e-5 on the training distribution
    assert results["zero"]["one_step_mse"] == pytest.approx(6.0e-4, rel=0.1)
    assert results["constant-velocity"]["one_step_mse"] == pytest.approx(4.8e-5, rel=0.5)
    assert results["oracle"]["one_step_mse"] == 0 and results["oracle"]["ade"] == 0
    assert results["learned-zero"]["ade"] == pytest.approx(results["zero"]["ade"], rel=1e-5)
    assert results["constant-velocity"]["ade"] < results["zero"]["ade"]
    assert "× below zero-motion" in format_forecast_table(results)
