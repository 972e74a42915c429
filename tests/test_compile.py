"""Compiled training (issue 29): `train.compile: auto | on | off`.

* The recursive models compile whole (no graph break) and their compiled gradients equal the eager ones
  to GRAD_RTOL.
* `off` is the old eager path: the trainer does not wrap the model, and its weights after a few steps
  equal, bit for bit, those of a hand-written eager loop; the training key of `off` is the key of old.
* `auto` resolves as `COMPILE_AUTO` says, and a compiled run through the real Trainer works end to end,
  with its kernels cached under the stage cache.

Toy widths and few recursions keep each inductor compile to seconds; the compiled tests share one
on-disk compile cache (module fixture), so the trainer's compile of the trm graph the gradient test
already built is loaded, not rebuilt.
"""

import copy
import dataclasses
import os

import pytest
import torch

from hrmlab.data.base import ArraySource
from hrmlab.forecast.hrm import HRMConfig
from hrmlab.forecast.hrm_act import HRMActConfig
from hrmlab.forecast.models import build_model
from hrmlab.forecast.trm import TRMConfig
from hrmlab.train import trainer as trainer_mod
from hrmlab.train.checkpoint import unwrap_model
from hrmlab.train.optim import make_optimizer
from hrmlab.train.trainer import (AUTO_COMPILE_MIN_BATCH, COMPILE_AUTO, TrainConfig, mse_loss,
                                  resolve_compile, train)

GRAD_RTOL = 1e-5
"""Compiled vs eager gradients, per parameter: ‖g_compiled − g_eager‖ / ‖g_eager‖ ≤ 1e-5 at these toy sizes.
Both are float32 (unit roundoff 6e-8), but neither is exact: the recursion (one block feeding the next, a few
dozen deep) amplifies rounding, so the eager gradient itself is 4e-7 to 4e-6 away from the float64 one here
(and up to 4e-5 at the suite's width after a step: `hrmlab bench --only train_step`). Inductor fuses and
reorders the reductions (RMSNorm's mean square, the softmax, the attention sums over a head's features),
so the compiled gradient is another sample of that rounding: measured 2e-7 to 2.3e-6 from the eager one
here. 1e-5 leaves a margin of 4 over that and stays three orders below what a real change of the function
does (a wrong attention scale, a missing detach, a RoPE table off by one position: 1e-2 to 1). The second
check says the compiled gradient is no less accurate than the eager one: its distance to the float64
gradient is within ACCURACY_FACTOR of eager's (plus 1e-6, below which both are at the roundoff floor)."""
ACCURACY_FACTOR = 3.0

# default heads (not zero-initialised), so every parameter gets gradient in the first step
TOY_ACT = HRMActConfig(d_model=16, heads=2, h_cycles=1, l_cycles=2, segments=2, output="displacement",
                       head_init="default")
TOY_TRM = TRMConfig(d_model=16, heads=2, layers=1, latent_steps=1, recursions=2, segments=2, output="displacement",
                    head_init="default")
TOY_HRM = HRMConfig(variant="sapient", d_model=16, heads=2, block="gated", init_std=0.02)
TOY = {"hrm-act": TOY_ACT, "trm": TOY_TRM, "hrm": TOY_HRM}
HISTORY = {"hrm-act": 8, "trm": 8, "hrm": 4}  # short histories: hrm unrolls one block pair per step
BATCH = 16


def data(kind, n=BATCH, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, HISTORY[kind], 2, generator=g), 0.03 * torch.randn(n, 2, generator=g)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One inductor cache for this module's compiles, under a throwaway HRMLAB_CACHE."""
    root = tmp_path_factory.mktemp("hrmlab_cache")
    saved = {k: os.environ.get(k) for k in ("HRMLAB_CACHE", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ["HRMLAB_CACHE"] = str(root)
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    folder = trainer_mod.use_compile_cache()
    yield folder
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("kind", ["hrm-act", "trm", "hrm"])
def test_compiled_gradients_equal_eager_ones_and_the_model_compiles_whole(kind, compile_cache):
    torch._dynamo.reset()
    eager = build_model(TOY[kind], seed=0).train()
    twin = copy.deepcopy(eager)
    reference = copy.deepcopy(eager).double()
    compiled = torch.compile(twin, dynamic=False, fullgraph=True)  # fullgraph: a graph break is an error
    x, y = data(kind)
    losses = []
    for model, xs, ys in ((eager, x, y), (compiled, x, y), (reference, x.double(), y.double())):
        loss = mse_loss(model, (xs, ys))  # what the trainer calls: the model's own objective where it has one
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=GRAD_RTOL)
    errors = {"compiled": [], "eager": []}
    for (name, p), q, r in zip(eager.named_parameters(), twin.parameters(), reference.parameters()):
        assert p.grad is not None and q.grad is not None and p.grad.norm() > 0, name
        rel = ((q.grad - p.grad).norm() / p.grad.norm()).item()
        assert rel <= GRAD_RTOL, f"{kind} {name}: compiled vs eager gradient, relative difference {rel:.3g}"
        for label, g in (("compiled", q.grad), ("eager", p.grad)):
            errors[label].append(((g.double() - r.grad).norm() / r.grad.norm()).item())
    assert max(errors["compiled"]) <= ACCURACY_FACTOR * max(errors["eager"]) + 1e-6, errors


def test_eager_attention_and_rope_are_the_old_computation():
    """Eager forwards keep F.scaled_dot_product_attention and compute the RoPE tables inline on the input's
    device; the buffers the compiled graph reads hold the very same values."""
    from hrmlab.forecast.hrm_act import Attention, rotary_tables

    attn = Attention(16, 2, rope=True, theta=10_000.0, max_positions=64)
    x = torch.randn(3, 6, 16)
    cos, sin = attn.rotary(x)
    ref_cos, ref_sin = rotary_tables(6, 8, 10_000.0)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert torch.equal(attn.rope_cos[:6], ref_cos) and torch.equal(attn.rope_sin[:6], ref_sin)
    assert "rope_cos" not in attn.state_dict()  # non-persistent: checkpoints are unchanged
    # the eager forward equals the explicit formula with SDPA (the old code path)
    b, t, d, h = 3, 6, 16, 2
    q, k, v = attn.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
    from hrmlab.forecast.hrm_act import rotate

    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    old = attn.out(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
    assert torch.equal(attn(x), old)


# ------------------------------------------------------------------------------------------ off / auto


def _manual_eager_steps(model, x, y, steps, cfg):
    """The trainer's fp32 step written out: full batch, loss × 1, backward, clip, AdamW, after-step hook."""
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay, torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = mse_loss(model, (x, y)).float()
        (loss * 1.0).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        if hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step()
    return model


def test_compile_off_is_the_old_eager_path_bit_for_bit(tmp_path, monkeypatch):
    wrapped = []
    monkeypatch.setattr(torch, "compile", lambda *a, **k: wrapped.append(a) or a[0])
    x, y = data("trm")
    cfg = TrainConfig(epochs=3, batch_size=BATCH, lr=3e-3, checkpoint_every_steps=0, log_every_steps=1,
                      device="cpu", compile="off")
    trained = build_model(TOY_TRM, seed=0)
    train(trained, ArraySource(x.numpy(), y.numpy()), None, cfg, tmp_path, progress=False)
    assert not wrapped  # off: the model is never handed to torch.compile
    by_hand = _manual_eager_steps(build_model(TOY_TRM, seed=0), x, y, 3, cfg)
    for (name, p), q in zip(trained.named_parameters(), by_hand.parameters()):
        assert torch.equal(p, q), name
    for a, b in zip(trained.ema.buffers(), by_hand.ema.buffers()):
        assert torch.equal(a, b)


def test_auto_resolves_as_the_table_says():
    assert COMPILE_AUTO[("cpu", "lstm")] is False
    assert COMPILE_AUTO[("cpu", "hrm")] is False  # faster per step, but its compile outweighs a quick run's gain
    for kind in ("hrm-act", "trm"):
        assert COMPILE_AUTO[("cpu", kind)] is True
    big, small = AUTO_COMPILE_MIN_BATCH, AUTO_COMPILE_MIN_BATCH - 1
    for (device, kind), on in COMPILE_AUTO.items():
        assert resolve_compile("auto", kind, device, big) is (on and trainer_mod._have_cpp_compiler())
        assert resolve_compile("auto", kind, device, small) is False  # smoke runs and tests stay eager
    assert resolve_compile("auto", "trm", "cuda", 512) is False  # not measured on a GPU: eager
    assert resolve_compile("auto", None, "cpu", 512) is False  # not a forecaster (the diffusion planner)
    assert resolve_compile("on", "lstm", "cpu", 2) is True and resolve_compile("off", "trm", "cpu", 512) is False
    # presets and older configs write booleans; YAML reads `--set x.compile=on` as true
    assert TrainConfig(compile=True).compile == "on" and TrainConfig(compile=False).compile == "off"
    assert TrainConfig().compile == "auto"
    with pytest.raises(ValueError, match="valid choices: auto, on, off"):
        TrainConfig(compile="fast")
    # the trainer finds the kind the training key resolves by, through the residual-cv wrapper too
    from hrmlab.presets import resolve

    suite = resolve("suite-rush", ["forecast.rollout=direct"])
    for kind in ("lstm", "hrm", "hrm-act", "trm"):
        assert trainer_mod.model_kind(build_model(suite.model_config(kind))) == kind
    assert trainer_mod.model_kind(torch.nn.Linear(2, 2)) is None


def test_training_key_names_compile_only_when_it_is_on():
    from hrmlab.experiments.grid.stages import compiled_training, train_key
    from hrmlab.presets import resolve

    cfg = dataclasses.replace(resolve("suite-rush", ["forecast.rollout=direct"]), device="cpu")

    def with_compile(value, batch=512):
        return dataclasses.replace(cfg, train_trm=dataclasses.replace(cfg.train_trm, compile=value, batch_size=batch))

    off = train_key(with_compile("off"), "trm")
    assert train_key(with_compile("auto", batch=32), "trm") != off  # (the batch is in the key anyway)
    assert train_key(with_compile("off", batch=32), "trm") == train_key(with_compile("auto", batch=32), "trm")
    assert train_key(with_compile("on"), "trm") != off
    auto_on = compiled_training(with_compile("auto"), "trm")
    assert (train_key(with_compile("auto"), "trm") == train_key(with_compile("on"), "trm")) is auto_on
    assert (train_key(with_compile("auto"), "trm") == off) is (not auto_on)
    # the LSTM never compiles under auto: its key is the eager key
    lstm = dataclasses.replace(cfg, train_lstm=dataclasses.replace(cfg.train_lstm, compile="auto"))
    assert train_key(lstm, "lstm") == train_key(
        dataclasses.replace(cfg, train_lstm=dataclasses.replace(cfg.train_lstm, compile="off")), "lstm")


# ------------------------------------------------------------------------------------------ end to end


def test_a_compiled_trainer_run_works_end_to_end(tmp_path, compile_cache, monkeypatch):
    torch._dynamo.reset()
    calls = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *a, **k: calls.append(k) or real_compile(*a, **k))
    x, y = data("trm")
    source = ArraySource(x.numpy(), y.numpy())
    cfg = TrainConfig(epochs=3, batch_size=BATCH, lr=3e-3, checkpoint_every_steps=0, log_every_steps=1,
                      device="cpu", compile="on")
    model = build_model(TOY_TRM, seed=0)
    result = train(model, source, source, cfg, tmp_path / "compiled", progress=False)
    assert calls == [{"dynamic": False}]  # static shapes: the sampler drops the incomplete tail
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.final_val_loss))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(compile_cache)
    assert any(compile_cache.iterdir())  # kernels and graphs cached under the stage cache
    # the same run eager: the same losses to float tolerance, and the checkpoint is a plain model's
    eager = build_model(TOY_TRM, seed=0)
    eager_result = train(eager, source, source, dataclasses.replace(cfg, compile="off"), tmp_path / "eager",
                         progress=False)
    assert result.final_val_loss == pytest.approx(eager_result.final_val_loss, rel=1e-4)
    state = torch.load(result.checkpoint_path, map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith("_orig_mod") for k in state)
    assert unwrap_model(model) is model
