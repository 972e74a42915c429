"""Stacked ensembles (hrmlab.train.ensemble): M members trained as one vmapped model equal M separate runs.

Tolerances (float32, CPU). The ensemble runs the same arithmetic with other kernels (batched matmuls, a row norm
for clipping, an element-wise AdamW instead of the fused one, linear ops instead of oneDNN's LSTM), so results
agree to rounding, not bit for bit:
* forwards: atol 1e-6 (outputs are O(0.1-1); observed ≤ 2e-7);
* gradients: ‖g_ens − g‖ / ‖g‖ ≤ 1e-5 per parameter tensor (observed ≤ 1e-6);
* one optimiser step (clip + AdamW, per-member rates, OneCycle, the trainer's weight decay 0.01): atol 1e-6 on every
  parameter and buffer (observed ≤ 5e-8: Adam's first step is lr·g/(|g|+eps), insensitive to rounding);
* five steps: rounding differences grow through training at a rate set by the model, not by the ensemble. The
  largest element-wise difference is a poor yardstick: an element whose gradient is ~0 gets an Adam step of ±lr on
  the sign of a rounding error, so the max over elements is heavy-tailed (max|ens − f64| / max|trainer − f64|
  observed up to 9× across data seeds and CPUs; torch's own fused and foreach AdamW up to 2.3× apart). The mean over
  all elements averages thousands of them and is stable (ensemble / torch ratio ≤ 1.07 over 6 data seeds × 3 members
  × 5 kinds). So the test asks that the ensemble stay, on average, as close to a float64 copy of the run as torch's
  float32 runs are: mean|ens − f64| ≤ 2·max(mean|fused − f64|, mean|foreach − f64|) + 1e-7. A moment bug is
  far outside it: AdamW with β2 = 0.99 instead of 0.999 lands 10× to 3·10^5× the envelope away (every member, lstm,
  trm, hrm-act+act).
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from hrmlab.forecast import hrm, hrm_act, lstm, trm
from hrmlab.forecast.models import build_model
from hrmlab.train.ensemble import (EnsembleStep, EnsembleUnsupported, LinearLSTM, StackedEnsemble,
                                   stacked_train_step)
from hrmlab.train.optim import make_optimizer, make_scheduler
from hrmlab.train.trainer import TrainConfig, mse_loss

M, B, H, K = 3, 16, 20, 3
LRS = [1e-3, 3e-3, 1e-2]
TOTAL_STEPS = 10
CPU = torch.device("cpu")

CONFIGS = {
    # small widths; default-initialised heads so every parameter gets a gradient from the first step
    "lstm": lstm.LSTMConfig(hidden=24, layers=2, output="residual-cv", out_steps=K),
    "hrm": hrm.HRMConfig(variant="sapient", d_model=32, n_layers=1, heads=4, h_period=2, block="gated", init_std=0.02,
                         output="residual-cv", out_steps=K),
    "hrm-act": hrm_act.HRMActConfig(d_model=32, heads=4, head_init="default", out_steps=K),  # the study's: no ACT
    "hrm-act+act": hrm_act.HRMActConfig(d_model=32, heads=4, act=True, head_init="default", out_steps=K),
    "trm": trm.TRMConfig(d_model=32, heads=4, layers=1, head_init="default", out_steps=K),  # with its weight EMA
}
KINDS = list(CONFIGS)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # CPU SDPA's per-member vmap fallback: slower, exact
        warnings.filterwarnings("ignore", message="There is a performance drop")
        yield


def members(kind: str) -> list[nn.Module]:
    return [build_model(CONFIGS[kind], seed=s) for s in range(M)]


def batches(steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(M, B, H, 2, generator=g), torch.randn(M, B, K, 2, generator=g) * 0.03) for _ in range(steps)]


def member_cfgs() -> list[TrainConfig]:
    """The trainer's defaults (adamw, weight decay 0.01), OneCycle; member 2 without clipping."""
    return [TrainConfig(schedule="onecycle", lr=lr, grad_clip=0.0 if i == 2 else 1.0) for i, lr in enumerate(LRS)]


class Separate:
    """One member trained as train/trainer.py trains a run: loss → backward → non-finite check → clip →
    AdamW → scheduler step → the model's after_optimizer_step (also after skipped steps)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, dtype=torch.float32, fused: bool = True):
        self.model = copy.deepcopy(model).to(dtype).train()
        self.cfg = cfg
        params = list(self.model.parameters())
        self.optimizer = (make_optimizer("adamw", params, cfg.lr, cfg.weight_decay, CPU) if fused else
                          torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True))
        self.scheduler = make_scheduler(cfg.schedule, self.optimizer, TOTAL_STEPS, cfg.lr, cfg.min_lr)

    def step(self, x, y) -> bool:
        dtype = next(self.model.parameters()).dtype
        self.optimizer.zero_grad(set_to_none=True)
        loss = mse_loss(self.model, (x.to(dtype), y.to(dtype))).float()
        skipped = not torch.isfinite(loss)
        if not skipped:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(list(self.model.parameters()),
                                                  self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf)
            skipped = not torch.isfinite(norm)
            if not skipped:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        for module in self.model.modules():
            if hasattr(module, "after_optimizer_step"):
                module.after_optimizer_step()
        return skipped


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in b if b[k].is_floating_point())


def mean_diff(a: dict, b: dict) -> float:
    """Mean absolute difference over every floating-point element of two state dicts."""
    diffs = [(a[k].double() - b[k].double()).abs().flatten() for k in b if b[k].is_floating_point()]
    return torch.cat(diffs).mean().item()


# ------------------------------------------------------------------------------------------- LSTM


def test_linear_lstm_equals_nn_lstm():
    torch.manual_seed(0)
    ref = nn.LSTM(2, 16, num_layers=2, batch_first=True)
    ours = LinearLSTM(ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = torch.randn(5, 9, 2, requires_grad=True)
    state = (torch.randn(2, 5, 16), torch.randn(2, 5, 16))
    for hx in (None, state):
        out, (h, c) = ours(x, hx)
        ref_out, (ref_h, ref_c) = ref(x, hx)
        for got, want in ((out, ref_out), (h, ref_h), (c, ref_c)):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # gradients to the same parameters and input
    ours(x)[0].square().sum().backward()
    g_ours = [p.grad.clone() for p in ours.parameters()] + [x.grad.clone()]
    x.grad = None
    ref(x)[0].square().sum().backward()
    for got, want in zip(g_ours, [p.grad for p in ref.parameters()] + [x.grad]):
        assert (got - want).norm() / want.norm() < 1e-5
    nn.LSTM(2, 16, num_layers=2, batch_first=True).load_state_dict(ours.state_dict())  # same keys and shapes


# ------------------------------------------------------------------------------------- per kind


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_separate_models(kind):
    models = members(kind)
    ens = StackedEnsemble(models)
    x = batches(1)[0][0]
    for mode in ("train", "eval"):
        getattr(ens, mode)()
        with torch.no_grad():
            got = ens(x)
            want = torch.stack([getattr(m, mode)()(x[i]) for i, m in enumerate(models)])
        assert got.shape == (M, B, K, 2)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_equal_separate_models(kind):
    models = members(kind)
    ens = StackedEnsemble(models)
    x, y = batches(1)[0]
    ens.zero_grad()
    losses = ens.losses((x, y))
    ens.backward(losses)
    assert ens.used is not None and all(ens.used.values())
    for i, model in enumerate(models):
        model.train().zero_grad()
        loss = mse_loss(model, (x[i], y[i]))
        loss.backward()
        torch.testing.assert_close(losses[i], loss.float(), atol=1e-6, rtol=0)
        for name, p in model.named_parameters():
            got = ens.params[name].grad[i]
            assert (got - p.grad).norm() <= 1e-5 * p.grad.norm() + 1e-12, name


@pytest.mark.parametrize("kind", KINDS)
def test_optimiser_steps_equal_separate_runs(kind):
    """(c) One step: atol 1e-6. Five steps: on average as close to a float64 run as torch's own float32 runs are."""
    models = members(kind)
    cfgs = member_cfgs()
    ens = StackedEnsemble(models)
    step = EnsembleStep(ens, cfgs, TOTAL_STEPS)
    trainer_runs = [Separate(m, c) for m, c in zip(models, cfgs)]
    foreach_runs = [Separate(m, c, fused=False) for m, c in zip(models, cfgs)]
    exact_runs = [Separate(m, c, dtype=torch.float64, fused=False) for m, c in zip(models, cfgs)]
    data = batches(5)
    for s, (x, y) in enumerate(data):
        result = stacked_train_step(step, (x, y))
        assert not result.skipped.any()
        for i in range(M):
            assert result.lr[i].item() == pytest.approx(trainer_runs[i].optimizer.param_groups[0]["lr"], rel=1e-6)
            trainer_runs[i].step(x[i], y[i])
            foreach_runs[i].step(x[i], y[i])
            exact_runs[i].step(x[i], y[i])
        for i in range(M):
            ours, theirs = ens.member_state_dict(i), trainer_runs[i].model.state_dict()
            assert ours.keys() == theirs.keys()
            if s == 0:
                assert max_diff(ours, theirs) <= 1e-6, (i, max_diff(ours, theirs))
            for key in theirs:
                if not theirs[key].is_floating_point():
                    assert torch.equal(ours[key], theirs[key]), key  # TRM's EMA update count
    for i in range(M):
        exact = exact_runs[i].model.state_dict()
        torch_runs = [trainer_runs[i].model.state_dict(), foreach_runs[i].model.state_dict()]
        envelope = max(mean_diff(run, exact) for run in torch_runs)
        assert mean_diff(ens.member_state_dict(i), exact) <= 2 * envelope + 1e-7, (i, envelope)
    assert step.optimizer.steps.tolist() == [5.0] * M


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_member_is_skipped_alone(kind):
    models = members(kind)
    cfgs = member_cfgs()
    ens, twin = StackedEnsemble(models), StackedEnsemble(models)
    step, twin_step = EnsembleStep(ens, cfgs, TOTAL_STEPS), EnsembleStep(twin, cfgs, TOTAL_STEPS)
    data = batches(3)
    for s, (x, y) in enumerate(data):
        bad = x.clone()
        if s == 1:
            bad[1, 0, 0, 0] = math.nan
        before = (ens.flat[1].clone(), step.optimizer.exp_avg[1].clone(), step.optimizer.exp_avg_sq[1].clone())
        result = step((bad, y))
        twin_step((x, y))
        if s == 1:
            assert result.skipped.tolist() == [False, True, False]
            assert math.isnan(result.loss[1]) and math.isnan(result.grad_norm[1])
            after = (ens.flat[1], step.optimizer.exp_avg[1], step.optimizer.exp_avg_sq[1])
            assert all(torch.equal(a, b) for a, b in zip(before, after))  # untouched, bit for bit
        else:
            assert not result.skipped.any()
        for i in (0, 2):  # the others are exactly what they would be without the bad member
            assert torch.equal(ens.flat[i], twin.flat[i])
            assert torch.equal(step.optimizer.exp_avg_sq[i], twin_step.optimizer.exp_avg_sq[i])
    assert step.optimizer.steps.tolist() == [3.0, 2.0, 3.0]
    # the skipping member continues as a separate run that skipped that step (its schedule moved on)
    run = Separate(models[1], cfgs[1])
    for s, (x, y) in enumerate(data):
        bad = x[1].clone()
        if s == 1:
            bad[0, 0, 0] = math.nan
        assert run.step(bad, y[1]) == (s == 1)
    if kind in ("lstm", "hrm"):  # three steps of the deep recursive models amplify rounding (see the module doc)
        assert max_diff(ens.member_state_dict(1), run.model.state_dict()) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_members_unstack_into_ordinary_models(kind):
    models = members(kind)
    ens = StackedEnsemble(models)
    step = EnsembleStep(ens, member_cfgs(), TOTAL_STEPS)
    data = batches(3)
    for x, y in data[:2]:
        step((x, y))
    x = data[2][0]
    with torch.no_grad():
        stacked = ens.eval()(x)  # trm: EMA weights; hrm-act+act: ACT halting (member by member)
    for i in range(M):
        fresh = build_model(CONFIGS[kind], seed=100)
        fresh.load_state_dict(ens.member_state_dict(i))  # strict: the ordinary keys, nothing more or less
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(x[i]), stacked[i], atol=1e-6, rtol=0)
        assert type(ens.member(i)) is type(models[i])

    # export: (model, optimizer, scheduler) as the trainer holds them; an ordinary run continues as the member
    exported = [step.export_member(i) for i in range(M)]
    ens.train()
    x, y = data[2]
    step((x, y))
    for i, (model, optimizer, scheduler) in enumerate(exported):
        model.train()
        optimizer.zero_grad()
        mse_loss(model, (x[i], y[i])).backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), math.inf if i == 2 else 1.0)
        optimizer.step()
        scheduler.step()
        for module in model.modules():
            if hasattr(module, "after_optimizer_step"):
                module.after_optimizer_step()
        assert max_diff(ens.member_state_dict(i), model.state_dict()) <= 1e-5


# ------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("cfg", [hrm.HRMConfig(variant="sapient", d_model=16, dropout=0.1),
                                 hrm.HRMConfig(variant="sapient", d_model=16, initial_state="random"),
                                 lstm.LSTMConfig(hidden=8, layers=2, dropout=0.1)],
                         ids=["dropout", "random-state", "lstm-dropout"])
def test_random_models_are_refused(cfg):
    with pytest.raises(EnsembleUnsupported, match="random"):
        StackedEnsemble([build_model(cfg, seed=s) for s in range(2)])


def test_unsupported_recipes_and_mixed_members_are_refused():
    small = lstm.LSTMConfig(hidden=8)
    ens = StackedEnsemble([build_model(small, seed=s) for s in range(2)])
    for bad in (TrainConfig(optimizer="lamb"), TrainConfig(precision="bf16"), TrainConfig(gpus=4)):
        with pytest.raises(EnsembleUnsupported):
            EnsembleStep(ens, bad, 10)
    with pytest.raises(EnsembleUnsupported, match="differs"):
        StackedEnsemble([build_model(small, seed=0), build_model(lstm.LSTMConfig(hidden=8, out_steps=2), seed=0)])
    with pytest.raises(ValueError, match="member dimension"):
        ens(torch.rand(3, 4, H, 2))


def test_study_models_with_unused_parameters_are_left_alone():
    """EncoderHRM's low gates get no gradient: torch's AdamW leaves them alone (no decay), so must the ensemble."""
    cfg = hrm.HRMConfig(variant="encoder", ffn="gelu", d_model=16, heads=4, n_layers=1, block="gated", out_steps=K)
    models = [build_model(cfg, seed=s) for s in range(2)]
    ens = StackedEnsemble(models)
    step = EnsembleStep(ens, TrainConfig(), TOTAL_STEPS)
    x, y = batches(1)[0]
    step((x[:2], y[:2]))
    unused = [n for n, used in ens.used.items() if not used]
    assert unused and all("low_blocks" in n and "gate" in n for n in unused)
    for i, model in enumerate(models):
        run = Separate(model, TrainConfig())
        run.step(x[i], y[i])
        assert max_diff(ens.member_state_dict(i), run.model.state_dict()) <= 1e-6


def test_ensemble_benchmark_is_registered_and_runs():
    from hrmlab_bench.ensemble import bench_ensemble
    from hrmlab_bench.registry import BENCHMARKS

    assert "ensemble" in BENCHMARKS
    out = bench_ensemble(kinds=("lstm",), members=(2,), batch=32)
    row = out["ensemble_train"]["lstm"]
    assert row["alone"]["samples_per_s"] > 0 and row["ensemble_2"]["speedup"] > 0
    assert out["ensemble_setup"]["device"]
