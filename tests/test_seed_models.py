"""Golden tests against the ORIGINAL hrm-cloud model classes (tests/fixtures/seed_models, see its README).

For each of the ten original scripts the fixture holds the original state_dict (original names) of the HRM
and the LSTM at small widths, an input batch and the original classes' outputs on it, plus the full-size
parameter counts and per-tensor initial mean/std at torch seed 0. hrmlab must reproduce all of them.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hrmlab.errors import UserError
from hrmlab.forecast.models import build_model, count_parameters
from hrmlab.forecast.seed_import import (SEED_SCRIPTS, detect_kind, hrmlab_names, load_seed_model, model_config,
                                         read_state_dict)
from hrmlab_bench.reference.hrm_formulation import reference_from

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "seed_models"
INDEX = json.loads((FIXTURES / "index.json").read_text())
SCRIPTS = list(INDEX)

# Outputs: float32 models (up to 12 blocks with softmax attention for 8gpu_v2) measured at <= 6e-7 relative
# (max |Δ| / max |golden|) on this machine, i.e. a few float32 ulp (1.2e-7). 1e-5 is the bound: ~80 ulp,
# room for other CPUs' BLAS summation orders and SIMD paths, and still 3 orders of magnitude below any real
# difference (a wrong norm eps changes outputs by 1e-3 to 1e-1, a wrong 8gpu_v2 wiring by ~0.6).
OUTPUT_RTOL = 1e-5
# Initial weights: hrmlab's seeded build replays the original's draw order, so mean/std match to ~1e-7 here; the
# issue asks std within 5 % per tensor, which also holds where another CPU's vectorised normal_ differs by ulp.
INIT_STD_RTOL = 0.05


def _fixture(script):
    z = np.load(FIXTURES / f"{script}.npz")
    hrm = {k[len("hrm."):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("hrm.")}
    lstm = {k[len("lstm."):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("lstm.")}
    return z, hrm, lstm


def _relative_error(out, golden):
    golden = torch.as_tensor(golden, dtype=torch.float64)
    return ((out.double() - golden).abs().max() / golden.abs().max()).item()


def _run(model, x, info):
    """The original's forward; RobustFix draws its initial states from the global RNG right after this seed."""
    with torch.no_grad():
        if info["forward_seed"] is not None:
            torch.manual_seed(info["forward_seed"])
        return model(x)


def test_every_original_script_has_a_fixture_and_a_table_entry():
    assert sorted(SCRIPTS) == sorted(SEED_SCRIPTS) and len(SCRIPTS) == 10
    assert sorted(p.stem for p in FIXTURES.glob("*.npz")) == sorted(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_hrm_reproduces_the_original_output(script):
    z, hrm, _ = _fixture(script)
    info = INDEX[script]
    model = load_seed_model(script, hrm, "hrm", **info["hrm_kwargs"])
    assert count_parameters(model) == info["hrm_params"]
    assert _relative_error(_run(model, torch.from_numpy(z["input"]), info), z["hrm_output"]) <= OUTPUT_RTOL


@pytest.mark.parametrize("script", SCRIPTS)
def test_lstm_reproduces_the_original_output(script):
    z, _, lstm = _fixture(script)
    info = INDEX[script]
    model = load_seed_model(script, lstm, "lstm", **info["lstm_kwargs"])
    assert count_parameters(model) == info["lstm_params"]
    with torch.no_grad():
        out = model(torch.from_numpy(z["input"]))
    assert _relative_error(out, z["lstm_output"]) <= OUTPUT_RTOL


def test_robustfix_draws_the_recorded_initial_states():
    """RobustFix's forward draws randn(batch, d)·0.01 per L block, then per H block, from the global RNG."""
    script = "hrm_cloudFullScaleRobustFix"
    z, hrm, _ = _fixture(script)
    model = load_seed_model(script, hrm, "hrm", **INDEX[script]["hrm_kwargs"])
    x = torch.from_numpy(z["input"])
    torch.manual_seed(INDEX[script]["forward_seed"])
    drawn = model.initial_states(x.shape[0], x) + model.initial_states(x.shape[0], x)  # L blocks, then H blocks
    recorded = torch.from_numpy(z["hrm_initial_states"])
    assert len(drawn) == len(recorded)
    for ours, theirs in zip(drawn, recorded):  # the same mt19937 draws times 0.01: equal to float32 rounding
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


RECURRENT = [s for s in SCRIPTS if SEED_SCRIPTS[s].hrm.variant != "encoder"]


@pytest.mark.parametrize("script", RECURRENT)
def test_reference_formulation_is_the_original_and_the_fast_path_matches_its_gradients(script):
    """hrm_formulation.py (real nn.MultiheadAttention on length-1 sequences, per-step embedding: the benchmark's
    baseline) reproduces the original too, and the fused v/out fast path has the same gradients (FullScale's
    are not finite in either: see the next test)."""
    z, hrm, _ = _fixture(script)
    info = INDEX[script]
    model = load_seed_model(script, hrm, "hrm", **info["hrm_kwargs"])
    reference = reference_from(model)
    x = torch.from_numpy(z["input"])
    assert _relative_error(_run(reference, x, info), z["hrm_output"]) <= OUTPUT_RTOL
    if script == "hrm_cloudFullScale":
        return
    if info["forward_seed"] is not None:
        torch.manual_seed(0)
    out = model(x)
    if info["forward_seed"] is not None:
        torch.manual_seed(0)
    ref_out = reference(x)
    out.square().sum().backward()
    ref_out.square().sum().backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        ref = ref_grads[name].grad
        # float32 recurrences over 20 steps: relative to the gradient's size (measured ≲ 1e-6)
        assert (p.grad - ref).norm() <= 1e-4 * ref.norm() + 1e-12, name


def test_the_originals_norm_is_singular_at_a_zero_state():
    """At t = 0 the H stack reads an all-zero state (zero initial states, zero biases at init), and the
    originals' x / max(‖x‖, eps) has gradient ~1/eps there: through FullScale's four plain H blocks (F.normalize,
    eps 1e-12) the first-step gradient overflows float32 — one reason that script was unstable, and what
    RobustFix's random initial states worked around. `norm_eps_mode: standard` (eps inside the root) is finite."""
    import dataclasses

    script = "hrm_cloudFullScale"
    z, hrm, _ = _fixture(script)
    x = torch.from_numpy(z["input"])
    original = load_seed_model(script, hrm, "hrm", **INDEX[script]["hrm_kwargs"])
    original(x).square().sum().backward()
    assert not all(torch.isfinite(p.grad).all() for p in original.parameters())
    standard = build_model(dataclasses.replace(original.cfg, norm_eps_mode="standard", norm_eps=1e-6))
    standard.load_state_dict(original.state_dict())
    standard(x).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in standard.parameters())


def _original_names(script, cfg):
    """hrmlab name → original name, for the tensors the index lists."""
    originals = list(INDEX[script]["full_size"]["init_mean_std"])
    ours = hrmlab_names({k: torch.zeros(1) for k in originals}, cfg)
    return dict(zip(ours, originals))


# One full-size build per distinct class: v2 = v1, Boosted = v3, Split = 8gpu = RobustFix (its random initial
# states are drawn in forward, not at init). Each build takes well under a second on one core.
FULL_SIZE_SCRIPTS = ["hrm_cloud", "hrm_cloudv3", "hrm_cloudMid", "hrm_cloudFullScale", "hrm_cloud_8gpu",
                     "hrm_cloud_8gpu_v2"]


@pytest.mark.parametrize("script", FULL_SIZE_SCRIPTS)
def test_full_size_parameter_counts_and_initial_distributions(script):
    full = INDEX[script]["full_size"]
    assert model_config(script) == model_config(script, **{k: v for k, v in full.items()
                                                            if k in ("hidden_dim", "k_step", "num_heads", "num_layers")})
    cfg = model_config(script)  # the script's CONFIG sizes are load_seed_model's defaults
    model = build_model(cfg, seed=0)
    assert count_parameters(model) == full["params"]
    names = _original_names(script, cfg)
    state = model.state_dict()
    assert sorted(names) == sorted(state)
    for ours, original in names.items():
        mean, std = full["init_mean_std"][original]
        values = state[ours].double()
        got_std = values.std().item() if values.numel() > 1 else 0.0
        if std == 0:  # constants: RMSNorm gains 1, biases 0
            assert got_std == 0 and values.mean().item() == mean, original
        else:
            assert abs(got_std - std) <= INIT_STD_RTOL * std, original
            assert abs(values.mean().item() - mean) <= INIT_STD_RTOL * std, original


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in FULL_SIZE_SCRIPTS])
def test_scripts_sharing_a_class_share_its_config(script):
    twin = {"hrm_cloudv2": "hrm_cloud", "hrm_cloudBoosted": "hrm_cloudv3", "hrm_cloudFullScaleRobustFix": "hrm_cloud_8gpu",
            "hrm_cloudFullScaleSplit": "hrm_cloud_8gpu"}[script]
    ours, theirs = SEED_SCRIPTS[script].hrm, SEED_SCRIPTS[twin].hrm
    assert (ours.initial_state != theirs.initial_state) == (script == "hrm_cloudFullScaleRobustFix")
    import dataclasses
    assert dataclasses.replace(ours, initial_state=theirs.initial_state) == theirs
    assert INDEX[script]["full_size"]["params"] == INDEX[twin]["full_size"]["params"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_presets_use_the_scripts_architecture(script):
    """Each seed preset builds its script's classes (the sizes and every architectural switch)."""
    from hrmlab.presets import load_preset

    seed = SEED_SCRIPTS[script]
    preset = load_preset(seed.preset)
    assert preset.hrm == seed.hrm, script
    assert preset.lstm == seed.lstm, script
    assert preset.data.history == seed.history, script


def test_wrapper_prefixes_kinds_and_bad_weights(tmp_path):
    _, hrm, lstm = _fixture("hrm_cloudv3")
    wrapped = {f"module._orig_mod.{k}": v for k, v in hrm.items()}
    assert detect_kind(wrapped) == "hrm" and detect_kind({f"module.{k}": v for k, v in lstm.items()}) == "lstm"
    a = load_seed_model("hrm_cloudv3", wrapped, hidden_dim=32)
    b = load_seed_model("hrm_cloudv3", hrm, hidden_dim=32)
    assert not a.training
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(UserError, match="unknown original script"):
        load_seed_model("hrm_cloud_v9", hrm)
    with pytest.raises(UserError, match="missing"):
        load_seed_model("hrm_cloudv3", lstm, "hrm", hidden_dim=32)
    with pytest.raises(UserError, match="wrong shape"):
        load_seed_model("hrm_cloudv3", hrm)  # CONFIG width 128, weights of width 32
    with pytest.raises(UserError, match="num_layers"):
        load_seed_model("hrm_cloudv3", hrm, num_layers=2)
    path = tmp_path / "hrm.pt"
    torch.save({"epoch": 3, "model_state_dict": wrapped}, path)
    assert read_state_dict(path).keys() == wrapped.keys()
    with pytest.raises(UserError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
