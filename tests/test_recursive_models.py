"""The HRM family's recursive forecasters (issue 16): `hrm-act` (the HRM paper's design) and `trm` (the
Tiny Recursive Model). Gradient paths, ACT halting, EMA at inference, test-time compute, and training
through the one Trainer and the pipeline — all at toy sizes."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hrmlab.data.base import ArraySource
from hrmlab.errors import UserError
from hrmlab.forecast.hrm_act import HRMAct, HRMActConfig
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.forecast.models import build_model, count_parameters, set_test_time_compute
from hrmlab.forecast.trm import TRM, TRMConfig
from hrmlab.presets import load_preset
from hrmlab.train.trainer import TrainConfig, mse_loss, train

TOY_ACT = dict(d_model=16, heads=2, h_cycles=3, l_cycles=2, segments=2, output="displacement")
TOY_TRM = dict(d_model=16, heads=2, layers=1, latent_steps=2, recursions=3, segments=2, output="displacement")


def batch(n=6, history=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, history, 2, generator=g), 0.03 * torch.randn(n, 2, generator=g)


def record_calls(module):
    """Forward pre-hook log of (grad enabled, state input requires grad, injection requires grad)."""
    calls = []
    handle = module.register_forward_pre_hook(
        lambda mod, args: calls.append((torch.is_grad_enabled(), args[0].requires_grad, args[1].requires_grad)))
    return calls, handle


# ------------------------------------------------------------------------------------------ hrm-act


def test_hrm_act_one_step_gradient_only_the_last_l_and_h_update_carry_gradient():
    model = HRMAct(HRMActConfig(**TOY_ACT))
    low, low_handle = record_calls(model.low)
    high, high_handle = record_calls(model.high)
    x, y = batch()
    model.train()
    model(x, target=y).backward()
    low_handle.remove(), high_handle.remove()
    # per segment: 3 × 2 = 6 L updates and 3 H updates; all but the last of each under no_grad. The
    # last ones read a state that carries no gradient (so nothing flows into earlier cycles) and an
    # injection that does (tokens for L, the fresh z_L for H)
    assert low == 2 * ([(False, False, False)] * 5 + [(True, False, True)])
    assert high == 2 * ([(False, False, False)] * 2 + [(True, False, True)])
    assert all(p.grad is not None for p in model.low.parameters())
    assert all(p.grad is not None for p in model.high.parameters())
    assert model.q_head is None  # no ACT: no Q head (DDP needs every parameter to get a gradient)


def test_hrm_act_initial_state_gets_no_gradient_unless_the_segment_is_a_single_update():
    def init_grad(h_cycles, l_cycles):
        model = HRMAct(HRMActConfig(**{**TOY_ACT, "h_cycles": h_cycles, "l_cycles": l_cycles, "segments": 1}))
        leaf = model.h_init.clone().requires_grad_(True)
        model.h_init = leaf  # a leaf we can inspect (the buffer itself is not trained)
        x, y = batch()
        model(x, target=y).backward()
        return leaf.grad

    assert init_grad(2, 2) is None  # earlier cycles ran under no_grad: the one-step gradient stops there
    assert init_grad(1, 1).abs().sum() > 0  # control: with one update, the start state is in the graph


def test_hrm_act_q_head_starts_at_zero_weights_and_bias_minus_five_and_init_is_truncated_lecun():
    model = HRMAct(HRMActConfig(**TOY_ACT, act=True))
    assert torch.count_nonzero(model.q_head.weight) == 0
    assert torch.equal(model.q_head.bias, torch.full((2,), -5.0))
    w = model.low.blocks[0].mlp.w1.weight  # fan_in 16: std 1/4 after truncation at ±2σ
    assert w.abs().max() <= 2 * 0.25 / 0.8796 + 1e-6
    # 512 draws: the sample std is within ±20 % of 0.25 with overwhelming probability
    assert 0.2 < w.std().item() < 0.3


def _act_model(halt_bias: float, continue_bias: float, segments: int = 3) -> HRMAct:
    model = HRMAct(HRMActConfig(**{**TOY_ACT, "segments": segments, "act": True, "head_init": "default"}))
    with torch.no_grad():
        model.q_head.bias.copy_(torch.tensor([halt_bias, continue_bias]))
    return model.eval()


def test_act_halts_when_halt_beats_continue_and_otherwise_runs_to_the_maximum():
    x, _ = batch()
    halting = _act_model(5.0, -5.0)
    first = halting(x)
    assert halting.last_segments == 1
    one_segment = copy.deepcopy(halting)
    one_segment.cfg = HRMActConfig(**{**TOY_ACT, "segments": 1, "act": True})
    with torch.no_grad():
        one_segment.q_head.bias.fill_(-5.0)  # never halts early: runs its one segment
    torch.testing.assert_close(first, one_segment(x), rtol=0, atol=0)  # the first segment's answer

    never = _act_model(-5.0, 5.0)
    out = never(x)
    assert never.last_segments == 3
    no_act = copy.deepcopy(never)
    no_act.cfg = HRMActConfig(**{**TOY_ACT, "segments": 3, "act": False})
    torch.testing.assert_close(out, no_act(x), rtol=0, atol=0)  # the last segment's answer (ACT off)

    fresh = _act_model(-5.0, -5.0)  # the paper's init: halt == continue, so no sample halts early
    fresh(x)
    assert fresh.last_segments == 3


def test_act_trains_the_q_head_on_correctness_targets():
    model = HRMAct(HRMActConfig(**{**TOY_ACT, "act": True, "halt_tolerance": 10.0}))  # every forecast "correct"
    x, y = batch()
    model.train()
    loss = model(x, target=y)
    loss.backward()
    assert model.q_head.bias.grad[0] < 0  # halt logit pushed up towards "correct" (target 1)
    no_act = copy.deepcopy(model)
    no_act.cfg = HRMActConfig(**{**TOY_ACT, "act": False})
    assert loss.item() > no_act(x, target=y).item()  # the Q losses are added


# ------------------------------------------------------------------------------------------ trm


def test_trm_backpropagates_through_exactly_the_last_recursion():
    model = TRM(TRMConfig(**TOY_TRM))
    calls, handle = record_calls(model.model.net)
    x, y = batch()
    model.train()
    model(x, target=y).backward()
    handle.remove()
    # per segment T = 3 recursions of n + 1 = 3 network calls: the first two recursions without
    # gradient, the last one's three calls with it: z ← net(z, x + y) twice (the first reads a z without
    # gradient), then y ← net(y, z) reading a y without gradient and the fresh z
    per_segment = [(False, False, False)] * 6 + [(True, False, True), (True, True, True), (True, False, True)]
    assert calls == 2 * per_segment
    assert all(p.grad is not None for p in model.model.parameters())


def test_trm_start_states_get_gradient_only_without_earlier_recursions():
    def init_grad(recursions):
        model = TRM(TRMConfig(**{**TOY_TRM, "recursions": recursions, "segments": 1}))
        leaf = model.model.z_init.clone().requires_grad_(True)
        model.model.z_init = leaf
        x, y = batch()
        model(x, target=y).backward()
        return leaf.grad

    assert init_grad(2) is None
    assert init_grad(1).abs().sum() > 0  # control: a single recursion is all in the graph


def test_trm_uses_ema_weights_at_inference_and_live_weights_in_training():
    model = TRM(TRMConfig(**{**TOY_TRM, "head_init": "default"}))
    x, _ = batch()
    model.eval()
    live = model(x)  # before any update there is no average yet: the live weights
    model.after_optimizer_step()  # first update: the average starts at the live weights
    torch.testing.assert_close(model(x), live, rtol=0, atol=0)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = copy.deepcopy(model.model)
    model.train()
    torch.testing.assert_close(model(x), moved(x, model.cfg.segments)[-1], rtol=0, atol=0)  # training: live
    model.eval()
    torch.testing.assert_close(model(x), live, rtol=0, atol=0)  # inference: the average, not the moved weights
    old = model.ema.weights()["head.weight"].clone()
    model.after_optimizer_step()  # second update: decay min(0.999, 2/11)
    decay = 2 / 11
    expected = decay * old + (1 - decay) * model.model.head.weight
    torch.testing.assert_close(model.ema.weights()["head.weight"], expected, rtol=1e-6, atol=1e-7)
    assert int(model.ema.updates.item()) == 2


def test_trainer_updates_the_ema_once_per_step_and_checkpoints_it(tmp_path):
    x, y = batch(64)
    source = ArraySource(x.numpy(), y.numpy())
    model = build_model(TRMConfig(**TOY_TRM), seed=0)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, checkpoint_every_steps=0, log_every_steps=1, device="cpu")
    result = train(model, source, source, cfg, tmp_path, progress=False)
    assert result.steps == 4 and int(model.ema.updates.item()) == 4
    reloaded = build_model(TRMConfig(**TOY_TRM), seed=1)
    from hrmlab.train.checkpoint import load_checkpoint

    load_checkpoint(tmp_path / "last.pt", model=reloaded, restore_rng=False)
    model.eval(), reloaded.eval()
    torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ both


@pytest.mark.parametrize("cfg", [HRMActConfig(**TOY_ACT), TRMConfig(**TOY_TRM)], ids=["hrm-act", "trm"])
def test_test_time_compute_scales_inference_segments_only(cfg):
    model = build_model(cfg)
    calls, handle = record_calls(model.model.net if isinstance(model, TRM) else model.high)
    x, y = batch()

    def calls_of(training: bool) -> int:
        calls.clear()
        model.train(training)
        with torch.set_grad_enabled(training):
            model(x, target=y) if training else model(x)
        return len(calls)

    trained = calls_of(True)
    per_segment = trained // cfg.segments
    for scale, segments in [(0.5, 1), (1.0, 2), (2.0, 4), (4.0, 8)]:
        set_test_time_compute(model, scale)
        assert calls_of(False) == per_segment * segments
        assert calls_of(True) == trained  # training keeps the trained recursion
    handle.remove()
    with pytest.raises(UserError, match="no recursion"):
        set_test_time_compute(build_model(LSTMConfig(hidden=8)), 2.0)


@pytest.mark.parametrize("cfg", [HRMActConfig(**TOY_ACT, out_steps=4), TRMConfig(**TOY_TRM, out_steps=4)],
                         ids=["hrm-act", "trm"])
def test_model_contract_multi_step_output_and_residual_cv(cfg):
    x, _ = batch()
    assert build_model(cfg)(x).shape == (6, 4, 2)
    fresh = build_model(type(cfg)(**{**vars(cfg), "output": "residual-cv", "head_init": "zero"})).eval()
    cv = (x[:, -1] - x[:, -2])[:, None].expand(-1, 4, -1)
    torch.testing.assert_close(fresh(x), cv, rtol=0, atol=0)  # untrained: exactly constant velocity


@pytest.mark.parametrize("kind", ["hrm-act", "trm"])
def test_quick_sizes_parameter_counts(kind):
    cfg = load_preset("quick")
    counts = {"hrm-act": 83_202, "trm": 83_202, "hrm": 114_114}  # equal by coincidence: 2 blocks each
    model = build_model(cfg.model_config(kind))
    print(f"quick {kind}: {count_parameters(model):,} parameters (quick hrm {counts['hrm']:,})")
    assert count_parameters(model) == counts[kind]
    assert count_parameters(build_model(cfg.hrm)) == counts["hrm"]


@pytest.mark.parametrize("cfg", [HRMActConfig(**{**TOY_ACT, "act": True}), TRMConfig(**TOY_TRM)], ids=["hrm-act", "trm"])
def test_the_one_trainer_trains_them_and_validates_on_plain_mse(cfg, tmp_path):
    x = torch.rand(256, 20, 2)
    y = (x[:, -1] - x[:, -2]) * 0.5  # a learnable target
    source = ArraySource(x.numpy(), y.numpy())
    model = build_model(cfg, seed=0)
    model.eval()
    with torch.no_grad():
        before = F.mse_loss(model(x), y).item()
    tc = TrainConfig(epochs=3, batch_size=32, lr=3e-3, checkpoint_every_steps=0, log_every_steps=1, device="cpu")
    result = train(model, source, source, tc, tmp_path, progress=False)
    assert result.steps == 24 and np.isfinite(result.best_val_loss)
    model.eval()
    with torch.no_grad():
        assert result.final_val_loss == pytest.approx(mse_loss(model, (x, y)).item(), rel=1e-4)
        assert F.mse_loss(model(x), y).item() < before  # it learned something


def test_pipeline_trains_and_evaluates_the_new_kinds(tmp_path, monkeypatch):
    from hrmlab.experiments.grid.stages import RunOptions, run_experiment
    from hrmlab.presets import resolve

    monkeypatch.setattr("hrmlab.experiments.grid.stages._write_report", lambda run_dir, animations=0: None)
    # the recursive kinds are not recurrent over time: they roll out directly (a K-step head), not statefully
    cfg = resolve("quick", ["physics_forecasters=[oracle]", "models=[hrm-act,trm]", "eval.episodes=4",
                            "seed_protocol=", "forecast.rollout=direct"], smoke=True)
    results = run_experiment(cfg, RunOptions(out=tmp_path / "run", cache=tmp_path / "cache", smoke=True, workers=1,
                                             progress=False))
    rows = results.primary.rows
    assert set(rows) == {"hrm-act", "trm", "oracle"} and all(r.episodes == 4 for r in rows.values())
    for kind in ("hrm-act", "trm"):
        assert Path(results.training[kind]["checkpoint"]).is_file()
    with pytest.raises(UserError, match="unknown model kind"):
        resolve("quick", ["models=[hrm,transformer]"])
    with pytest.raises(UserError, match="no stateful roll-out"):  # quick's default roll-out is stateful
        resolve("quick", ["models=[lstm,trm]"])


@pytest.mark.parametrize("model", [
    {"kind": "hrm-act", **TOY_ACT, "act": True, "h_cycles": 2, "output": "residual-cv"},
    {"kind": "trm", **TOY_TRM, "recursions": 2, "output": "residual-cv"},
], ids=["hrm-act", "trm"])
def test_two_process_ddp_trains_them_through_the_target_forward(model, tmp_path):
    import json

    from hrmlab.experiments.grid.torchrun_entry import RESULT_FILE, launch_torchrun, run_spec
    from hrmlab.train.trainer import read_metrics

    x, y = batch(320)
    for name, arr in (("tx", x[:256]), ("ty", y[:256]), ("vx", x[256:]), ("vy", y[256:])):
        np.save(tmp_path / f"{name}.npy", arr.numpy())
    spec = {"run_dir": str(tmp_path / "ddp"), "model": model, "progress": False,
            "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3, "log_every_steps": 1, "checkpoint_every_steps": 0,
                      "device": "cpu"},  # the gloo path, also on a machine with fewer than 2 GPUs
            "data": {"kind": "npy", **{k: str(tmp_path / f"{v}.npy") for k, v in
                                       (("train_x", "tx"), ("train_y", "ty"), ("val_x", "vx"), ("val_y", "vy"))}}}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    launch_torchrun(spec_path, nproc=2, timeout=120, capture=True)
    result = json.loads((tmp_path / "ddp" / RESULT_FILE).read_text())
    # identical parameters (and, for trm, identical EMA buffers: the digest covers the state dict)
    assert result["world_size"] == 2 and result["steps"] == 4
    assert result["rank_param_digests"][0] == result["rank_param_digests"][1]
    single = run_spec({**spec, "run_dir": str(tmp_path / "single")})
    losses = [[r["loss"] for r in read_metrics(tmp_path / d) if r["kind"] == "train"] for d in ("ddp", "single")]
    # the same global batches on 1 or 2 ranks: equal up to the order of float32 reductions
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    if not model.get("act"):  # ACT's halt decisions are discontinuous: near-ties may flip in the last bit
        assert result["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=1e-4)
    assert np.isfinite(result["final_val_loss"])
