"""Roll-out modes (forecast/learned.py): the stateful contract against the window computation, the direct
head and its loss, checkpoints that record their mode, and mode settings.

What must match between `stateful` and `window`, and why: both feed back the predicted position
(last + displacement), but a window forecast re-encodes only the last H positions from a fresh state while
a stateful forecast keeps the state of every token since the history began. So

* the FIRST forecast step is the same computation in both (encode(x) is forward(x)): bit-identical;
* every later step of a stateful forecast equals forward() over the whole sequence so far (the history
  plus the positions predicted up to then) — encode/advance only cut the same recurrence in two;
* for a model whose output depends on the newest token only, window and stateful forecasts coincide.

Those comparisons run in float64: the two sides then differ only in the order of matmul reductions
(all history tokens embedded in one matmul vs one token per call, GEMM vs GEMV), a few ulp (1e-16
relative) per operation, compounded through at most ~40 recurrent steps: measured ≤ 2e-14 relative, also
for the plain seed-style blocks whose states (and outputs) grow to ~1e4. A tolerance of 1e-10 relative
(plus 1e-10 absolute) leaves 5,000× margin and still cannot hide an algorithmic difference (a wrong time
index, state or feedback changes outputs by > 1e-4 relative at these sizes).
"""

import numpy as np
import pytest
import torch

from hrmlab.errors import UserError
from hrmlab.forecast.base import Observation
from hrmlab.forecast.hrm import HRMConfig
from hrmlab.forecast.models import build_model
from hrmlab.forecast.learned import LearnedForecaster
from hrmlab.forecast.loading import load_forecaster, model_metadata
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.train.checkpoint import save_checkpoint
from hrmlab.train.trainer import mse_loss
from hrmlab.worlds import bounce_grid

EXACT = dict(rtol=1e-10, atol=1e-10)  # float64, see the module docstring
RECURRENT = {
    "lstm": LSTMConfig(hidden=16),
    "sapient-gated": HRMConfig(variant="sapient", d_model=32, heads=4, h_period=2, block="gated", init_std=0.02),
    "deep-plain-k3": HRMConfig(variant="deep", d_model=32, n_layers=2, heads=4, h_period=3, block="plain",
                               rmsnorm="original", detach_h_input=False),
}
WORLD = bounce_grid.BounceGridConfig()


def _model(cfg, dtype=torch.float64):
    return build_model(cfg, seed=1).to(dtype).eval()


def _observation(episodes=3, seed=0):
    state = bounce_grid.reset_split(WORLD, "val", np.arange(episodes))
    history = np.random.default_rng(seed).uniform(2, 17, (episodes, WORLD.num_obstacles, 20, 2))
    return Observation(history, state, WORLD)


@pytest.mark.parametrize("name", RECURRENT)
def test_encode_then_advance_equals_forward_over_the_whole_sequence(name):
    model = _model(RECURRENT[name])
    x = torch.rand(5, 23, 2, dtype=torch.float64)
    with torch.no_grad():
        for split in (1, 19, 20, 22):  # H-period phases 0, 1, 2 of the deep model's k = 3 all occur
            state, step = model.encode(x[:, :split])
            torch.testing.assert_close(step, model(x[:, :split]), **EXACT)
            for t in range(split, x.shape[1]):
                state, step = model.advance(state, x[:, t])
                torch.testing.assert_close(step, model(x[:, :t + 1]), **EXACT)


@pytest.mark.parametrize("name", RECURRENT)
def test_stateful_forecast_is_forward_over_history_plus_fed_back_predictions(name):
    model = _model(RECURRENT[name])
    obs = _observation()
    horizon, g = 6, WORLD.grid_size
    stateful = LearnedForecaster(model, g, history=20, device="cpu", rollout="stateful").forecast(obs, horizon)
    seq = torch.as_tensor(obs.history.reshape(-1, 20, 2) / g, dtype=torch.float32)  # the forecaster's input
    expected = []
    with torch.no_grad():
        for _ in range(horizon):
            position = seq[:, -1] + model(seq.double()).float()
            expected.append(position)
            seq = torch.cat([seq, position[:, None]], dim=1)
    expected = torch.stack(expected, 1).double().numpy().reshape(stateful.shape) * g
    np.testing.assert_allclose(stateful, expected, rtol=1e-10, atol=1e-8)  # cells: g × the float64 bound

    window = LearnedForecaster(_model(RECURRENT[name], torch.float32), g, 20, device="cpu")
    first_stateful = LearnedForecaster(_model(RECURRENT[name], torch.float32), g, 20, device="cpu",
                                       rollout="stateful")
    np.testing.assert_array_equal(first_stateful.forecast(obs, 1), window.forecast(obs, 1))  # same computation


def test_window_and_stateful_coincide_for_an_lstm_without_memory():
    """W_hh = 0 and a forget gate shut by its bias: each LSTM output depends on the newest token only, so the
    window forecast (fresh state, last H positions) and the stateful one (carried state) must agree."""
    model = _model(LSTMConfig(hidden=16))
    hidden = model.cfg.hidden
    with torch.no_grad():
        for layer in range(model.cfg.layers):
            getattr(model.lstm, f"weight_hh_l{layer}").zero_()
            getattr(model.lstm, f"bias_ih_l{layer}")[hidden:2 * hidden] = -1e4  # sigmoid(-1e4) = 0 exactly
    obs = _observation()
    window = LearnedForecaster(model, WORLD.grid_size, 20, device="cpu").forecast(obs, 8)
    stateful = LearnedForecaster(model, WORLD.grid_size, 20, device="cpu", rollout="stateful").forecast(obs, 8)
    np.testing.assert_allclose(stateful, window, rtol=1e-10, atol=1e-8)
    assert np.abs(np.diff(window, axis=2)).max() > 1e-3  # the model does move the obstacles


@pytest.mark.parametrize("cfg", [
    LSTMConfig(hidden=16, out_steps=5),
    HRMConfig(variant="sapient", d_model=32, block="gated", init_std=0.02, out_steps=5),
    HRMConfig(variant="deep", d_model=32, n_layers=2, out_steps=5),
    HRMConfig(variant="encoder", d_model=32, n_layers=1, block="gated", ffn="gelu", init_std=0.02, out_steps=5),
], ids=["lstm", "sapient", "deep", "encoder"])
def test_direct_head_shapes_chaining_and_loss(cfg):
    model = _model(cfg)
    x = torch.rand(7, 20, 2, dtype=torch.float64)
    with torch.no_grad():
        steps = model(x)
    assert steps.shape == (7, 5, 2)
    one = _model(type(cfg)(**{**cfg.__dict__, "out_steps": 1}))
    assert one(x).shape == (7, 2)
    # per-step displacements: positions are last + running sum; a longer horizon chains K steps at a time
    obs = _observation()
    direct = LearnedForecaster(model, WORLD.grid_size, 20, device="cpu", rollout="direct")
    out = direct.forecast(obs, 12)
    seq = torch.as_tensor(obs.history.reshape(-1, 20, 2) / WORLD.grid_size, dtype=torch.float32)
    expected = []
    with torch.no_grad():
        while len(expected) < 12:
            pred = model(seq[:, -20:].double()).float()
            for k in range(5):
                expected.append(seq[:, -1] + pred[:, k] if k == 0 else expected[-1] + pred[:, k])
            seq = torch.cat([seq, torch.stack(expected[-5:], 1)], dim=1)
    expected = torch.stack(expected[:12], 1).double().numpy().reshape(out.shape) * WORLD.grid_size
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-8)
    np.testing.assert_array_equal(direct.forecast(obs, 3), out[:, :, :3])
    # the direct loss (the trainer's default on (B, K, 2) targets): mean squared per-step displacement
    # error over the K steps and both coordinates; returned in float32 (6e-8 relative)
    y = torch.rand(7, 5, 2, dtype=torch.float64)
    expected_loss = ((model(x) - y) ** 2).sum(-1).mean() / 2
    torch.testing.assert_close(mse_loss(model, (x, y)).double(), expected_loss, rtol=1e-6, atol=0)


def _checkpoint(tmp_path, cfg, kind, rollout):
    model = build_model(cfg, seed=0)
    path = tmp_path / f"{kind}-{rollout}.pt"
    save_checkpoint(path, model=model, step=0, epoch=0,
                    config={"forecaster": model_metadata(kind, cfg, WORLD.grid_size, 20, rollout)})
    return path


def test_checkpoints_record_their_mode_and_refuse_the_wrong_one(tmp_path):
    window = _checkpoint(tmp_path, LSTMConfig(hidden=8), "lstm", "window")
    assert load_forecaster(window, "m").rollout == "window"
    assert load_forecaster(window, "m", rollout="stateful").rollout == "stateful"  # a recurrent one-step model
    with pytest.raises(UserError, match="trained for the window roll-out and cannot be evaluated direct"):
        load_forecaster(window, "m", rollout="direct")
    hrm = _checkpoint(tmp_path, HRMConfig(variant="sapient", d_model=16), "hrm", "window")
    assert load_forecaster(hrm, "m", rollout="stateful").forecast(_observation(1), 3).shape == (
        1, WORLD.num_obstacles, 3, 2)
    direct = _checkpoint(tmp_path, LSTMConfig(hidden=8, out_steps=20), "lstm", "direct")
    assert load_forecaster(direct, "m").forecast(_observation(1), 20).shape == (1, WORLD.num_obstacles, 20, 2)
    for other in ("window", "stateful"):
        with pytest.raises(UserError, match="trained for the direct roll-out"):
            load_forecaster(direct, "m", rollout=other)
    encoder = _checkpoint(tmp_path, HRMConfig(variant="encoder", d_model=16, n_layers=1, ffn="gelu"), "hrm", "window")
    with pytest.raises(UserError, match="EncoderHRM is not recurrent"):
        load_forecaster(encoder, "m", rollout="stateful")


def test_mode_errors_reach_the_cli_as_one_line(tmp_path):
    import subprocess
    import sys

    from hrmlab.forecast.registry import parse_forecasters

    window = _checkpoint(tmp_path, LSTMConfig(hidden=8), "lstm", "window")
    assert parse_forecasters(f"m={window}@stateful,oracle")[0].rollout == "stateful"
    with pytest.raises(UserError, match="valid choices: window, stateful, direct"):
        parse_forecasters(f"m={window}@sideways")
    proc = subprocess.run([sys.executable, "-m", "hrmlab.cli", "evaluate", "--episodes", "2", "--forecasters",
                           f"m={window}@direct"], capture_output=True, text=True)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("hrmlab: error")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "cannot be evaluated direct" in errors[0]


def test_mode_settings_in_presets():
    from hrmlab.experiments.grid.stages import train_key
    from hrmlab.presets import preset_names, resolve

    for name in preset_names():
        if name.startswith("hrm-cloud"):  # seed replays: the original scripts' window roll-out
            assert resolve(name, []).forecast.rollout == "window", name
    direct = resolve("quick", ["forecast.rollout=direct"])
    assert direct.model_config("hrm").out_steps == direct.planner.horizon == direct.model_config("lstm").out_steps
    stateful = resolve("quick", ["forecast.rollout=stateful"])
    assert stateful.model_config("hrm").out_steps == 1
    for model in ("hrm", "lstm"):  # stateful runs the window-trained model: one cached checkpoint
        assert train_key(stateful, model) == train_key(resolve("quick", ["forecast.rollout=window"]), model)
        assert train_key(direct, model) != train_key(stateful, model)
    with pytest.raises(UserError, match="out_steps is set by forecast.rollout"):
        resolve("quick", ["hrm.out_steps=5"])
    with pytest.raises(UserError, match="EncoderHRM is not recurrent"):
        resolve("hrm-cloud-8gpu-v2", ["forecast.rollout=stateful"])


@pytest.mark.parametrize("rollout", ["stateful", "direct"])
def test_pipeline_trains_and_evaluates_each_mode_at_smoke_size(rollout, tmp_path, monkeypatch):
    from hrmlab.forecast.loading import read_metadata
    from hrmlab.experiments.grid.stages import RunOptions, run_experiment
    from hrmlab.presets import resolve

    monkeypatch.setattr("hrmlab.experiments.grid.stages._write_report", lambda run_dir, animations=0: None)
    cfg = resolve("quick", ["physics_forecasters=[oracle]", "seed_protocol=", f"forecast.rollout={rollout}"],
                  smoke=True)
    results = run_experiment(cfg, RunOptions(out=tmp_path / "run", cache=tmp_path / "cache", smoke=True, workers=1,
                                             progress=False))
    for model in ("hrm", "lstm"):
        meta = read_metadata(results.training[model]["checkpoint"])
        assert meta["rollout"] == ("direct" if rollout == "direct" else "window")  # what it was trained for
        assert meta["model"]["out_steps"] == (20 if rollout == "direct" else 1)
        assert results.forecasters[model]["rollout"] == rollout
        row = results.evaluations["standard"].rows[model]
        assert sum(row.outcomes.values()) == row.episodes == cfg.eval.episodes
        assert np.isfinite(results.training[model]["best_val_loss"])


def test_forecast_bench_reports_every_mode_with_exact_lstm_flops():
    from hrmlab_bench.forecast import bench_forecast

    out = bench_forecast(episodes=2, chunk=2, warmup_episodes=1, models=("lstm",))  # the HRM: same code, slower
    assert set(out["forecast_ms_per_step"]["lstm"]) == set(out["forecast_mflop_per_forecast"]["lstm"]) == {
        "window", "stateful", "direct"}
    assert all(ms > 0 for ms in out["forecast_ms_per_step"]["lstm"].values())
    assert out["forecast_episode_steps"] > 0 and out["matmul_peak_gflops"] > 0
    # the quick LSTM (2 layers, h = 64, input 2): matmul FLOPs per token and per head call, horizon 20
    h, horizon, history = 64, 20, 20
    token = 2 * 4 * h * (2 + h) + 2 * 4 * h * (h + h)
    head = 2 * h * 2
    expected = {"window": horizon * (history * token + head),
                "stateful": (history + horizon - 1) * token + horizon * head,
                "direct": history * token + horizon * head}
    for mode, flops in expected.items():
        assert out["forecast_mflop_per_forecast"]["lstm"][mode] == round(flops / 1e6, 3)


@pytest.mark.parametrize("rollout", ["window", "stateful", "direct"])
def test_bf16_autocast_runs_every_mode_close_to_fp32(rollout):
    cfg = LSTMConfig(hidden=16, out_steps=8 if rollout == "direct" else 1)
    model = _model(cfg, torch.float32)
    obs = _observation()
    fp32 = LearnedForecaster(model, WORLD.grid_size, 20, device="cpu", rollout=rollout).forecast(obs, 8)
    bf16 = LearnedForecaster(model, WORLD.grid_size, 20, device="cpu", rollout=rollout, dtype="bf16").forecast(obs, 8)
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%, a few roundings deep ≈ 0.4%): this untrained
    # model's steps reach ~4 cells, so ≲ 0.016 cells per step and ≲ 0.13 after 8 steps (measured: ≤ 0.073)
    assert bf16.shape == fp32.shape and np.isfinite(bf16).all()
    np.testing.assert_allclose(bf16, fp32, rtol=0, atol=0.25)


def test_a_spec_runs_a_recursive_checkpoint_with_scaled_test_time_compute(tmp_path):
    from hrmlab.forecast.registry import build_forecaster, parse_forecasters
    from hrmlab.forecast.trm import TRMConfig

    cfg = TRMConfig(d_model=16, heads=2, layers=1, latent_steps=2, recursions=2, segments=2, out_steps=3,
                    head_init="default")  # residual-cv wraps the recursive net: the scale must reach it inside
    path = _checkpoint(tmp_path, cfg, "trm", "direct")
    specs = parse_forecasters(f"a={path},b={path}@direct*2,c={path}*0.5")
    assert [s.compute_scale for s in specs] == [1.0, 2.0, 0.5] and specs[1].rollout == "direct"
    built = [build_forecaster(s) for s in specs]
    assert [[m.compute_scale for m in f.model.modules() if hasattr(m, "set_compute_scale")] for f in built] == [
        [1.0], [2.0], [0.5]]
    outputs = [f.forecast(_observation(1), 3) for f in built]
    assert not np.allclose(outputs[0], outputs[1])  # more segments change the answer of an untrained net
    for bad in ("*0", "*x", "*-1"):
        with pytest.raises(UserError, match="compute scale"):
            parse_forecasters(f"a={path}{bad}")
    lstm = _checkpoint(tmp_path, LSTMConfig(hidden=8), "lstm", "window")
    with pytest.raises(UserError, match="no recursion"):
        build_forecaster(parse_forecasters(f"a={lstm}*2")[0])
