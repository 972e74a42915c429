"""Training-throughput benchmarks: our HRM formulation against the seed's original one; eager vs compiled.

`bench_train_step` times a training step of each of the study's models eager and under torch.compile
(issue 29: `figures.train_ms_per_step`). `bench_hrm_training` times full training steps (forward, MSE,
backward, clip, AdamW) of the 28.97M DeepSapientHRM (gated, d=512, 4+4 blocks, 8 heads, k=2) in both
formulations, interleaved so machine load affects both alike, after checking that they compute the same
outputs and gradients.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from hrmlab.forecast.hrm import HRMConfig
from hrmlab.forecast.models import build_model, count_parameters
from hrmlab_bench.reference.hrm_formulation import reference_from
from hrmlab.train.optim import make_optimizer

BENCH_MODEL = HRMConfig(variant="deep", d_model=512, n_layers=4, heads=8, h_period=2, block="gated", init_std=0.01)
"""The RobustFix / split / 8gpu model: 28,969,474 parameters."""
WARMUP_BATCH = 32
"""Samples per warm-up step: enough to touch every kernel, cheap enough to keep the bench short."""


def _train_step(model, optimizer, x, y, autocast_dtype) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    ctx = torch.autocast(device_type=x.device.type, dtype=autocast_dtype) if autocast_dtype else _null()
    with ctx:
        loss = F.mse_loss(model(x).float(), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def bench_hrm_training(batch: int = 256, steps: int = 1, warmup: int = 1, history: int = 20, seed: int = 0,
                       device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                       model_cfg: HRMConfig = BENCH_MODEL) -> dict:
    """Samples/s of training steps, ours vs the original formulation, on identical weights and data.

    Returns hrm_train_samples_per_s, reference_train_samples_per_s, speedup, the max output/gradient
    differences of the equivalence check, and the setup. precision: fp32 or bf16 (autocast).

    One full-batch fp32 step of this model is ~0.5 TFLOP, several seconds on a laptop-class CPU, so the
    defaults time one step per formulation after `warmup` steps on a small batch (allocators, kernels);
    raise `steps` on faster machines for a median."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    model = build_model(model_cfg, seed=seed).to(dev)
    reference = reference_from(model)
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.uniform(0, 1, (batch, history, 2)), dtype=torch.float32, device=dev)
    y = torch.as_tensor(rng.normal(0, 0.03, (batch, 2)), dtype=torch.float32, device=dev)

    # equivalence on the same weights, before any step changes them (a small slice keeps it cheap)
    check = x[: min(batch, 16)]
    out, ref_out = model(check), reference(check)
    out.square().sum().backward()
    ref_out.square().sum().backward()
    grads = dict(reference.named_parameters())
    grad_rel_diff = max(((p.grad - grads[n].grad).norm() / grads[n].grad.norm().clamp_min(1e-30)).item()
                        for n, p in model.named_parameters())
    output_max_diff = (out - ref_out).abs().max().item()
    outputs_match = bool(torch.allclose(out, ref_out, rtol=1e-4, atol=1e-5)) and grad_rel_diff < 1e-3
    if not outputs_match:
        raise AssertionError(f"formulations disagree: max output diff {output_max_diff:.3g}, "
                             f"gradient rel diff {grad_rel_diff:.3g}")

    opt = make_optimizer("adamw", model.parameters(), 1e-4, 0.01, dev)
    ref_opt = make_optimizer("adamw", reference.parameters(), 1e-4, 0.01, dev)
    warm = min(batch, WARMUP_BATCH)
    for _ in range(warmup):
        for m, o in ((model, opt), (reference, ref_opt)):
            _train_step(m, o, x[:warm], y[:warm], autocast_dtype)
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(steps):  # interleaved: machine load hits both formulations alike
        for name, m, o in (("ours", model, opt), ("reference", reference, ref_opt)):
            times[name].append(_train_step(m, o, x, y, autocast_dtype))
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["reference"])
    return {
        "hrm_train_samples_per_s": batch / ours_s,
        "reference_train_samples_per_s": batch / ref_s,
        "speedup": ref_s / ours_s,
        "step_ms": 1000 * ours_s,
        "reference_step_ms": 1000 * ref_s,
        "outputs_match": outputs_match,
        "output_max_abs_diff": output_max_diff,
        "grad_max_rel_diff": grad_rel_diff,
        "params": count_parameters(model),
        "batch": batch,
        "history": history,
        "timed_steps": steps,
        "precision": precision,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }


# ------------------------------------------------------------------------------------ compiled training

STEP_MODELS = ("lstm", "hrm", "hrm-act", "trm")
"""The study's four learned models."""
STEP_PRESET = "suite-rush"
"""Whose model configs are timed (every suite shares them: presets/_suite.yaml)."""
STEP_ROLLOUT = "direct"
"""The study's roll-out (StudyConfig.rollout): direct, so every head predicts the planner's K steps."""


def _step(model, optimizer, x, y) -> float:
    """One training step as the trainer takes it (train/trainer.py): zero_grad, the trainer's loss (a model's
    own objective for hrm-act and trm), backward, clip at 1, AdamW, the model's after-step hook (TRM's EMA)."""
    from hrmlab.train.checkpoint import unwrap_model
    from hrmlab.train.trainer import mse_loss

    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    mse_loss(model, (x, y)).backward()
    bare = unwrap_model(model)
    torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
    optimizer.step()
    if hasattr(bare, "after_optimizer_step"):
        bare.after_optimizer_step()
    return time.perf_counter() - start


def _grad_errors(eager, compiled, x, y) -> dict:
    """Gradients on the same weights and batch, max over parameters of the relative difference ‖g − g'‖ / ‖g'‖:
    compiled vs eager, and each against a float64 copy of the eager model (the float32 rounding error
    either has; the recursion, dozens of blocks deep, amplifies it, so it is far above float32's 6e-8)."""
    import copy

    from hrmlab.train.checkpoint import unwrap_model
    from hrmlab.train.trainer import mse_loss

    reference = copy.deepcopy(eager).double()
    for model, xs, ys in ((eager, x, y), (compiled, x, y), (reference, x.double(), y.double())):
        model.zero_grad(set_to_none=True)
        mse_loss(model, (xs, ys)).backward()
    worst = {"grad_max_rel_diff": 0.0, "eager_grad_max_rel_err": 0.0, "compiled_grad_max_rel_err": 0.0}
    for p, q, r in zip(eager.parameters(), unwrap_model(compiled).parameters(), reference.parameters()):
        if r.grad is None or r.grad.norm() == 0:
            continue
        for key, got, want in (("grad_max_rel_diff", q.grad, p.grad), ("eager_grad_max_rel_err", p.grad, r.grad),
                               ("compiled_grad_max_rel_err", q.grad, r.grad)):
            want = want.double()
            worst[key] = max(worst[key], ((got.double() - want).norm() / want.norm()).item())
    eager.zero_grad(set_to_none=True)
    compiled.zero_grad(set_to_none=True)
    return {k: float(f"{v:.2g}") for k, v in worst.items()}


def bench_train_step(batch: int = 512, steps: int = 10, warmup: int = 2, threads: int = 1,
                     models: tuple[str, ...] = STEP_MODELS, preset: str = STEP_PRESET, seed: int = 0) -> dict:
    """ms per training step, eager vs torch.compile (train.compile=on), for the study's four models.

    Each model is built twice from one seed (same weights): one copy trains eager, the other compiled
    (`torch.compile(model, dynamic=False)`, as the trainer compiles), each with its own AdamW. Their
    gradients on the same weights are compared (`_grad_errors`: compiled vs eager, and each vs float64);
    then they take `warmup` untimed steps and `steps` timed steps each, INTERLEAVED (eager, compiled,
    eager, ...) so that load from other processes hits both alike; the minimum and the median are reported.
    The compile is timed apart: `compile_s` is the first compiled step minus an eager step with an empty
    inductor cache (a fresh temporary folder: what the first run of a model shape pays), `compile_warm_s`
    the same for a fresh model of that shape compiled again in this process from the on-disk cache. One
    thread, batch `batch`, the preset's model configs with the study's direct roll-out heads."""
    import copy
    import tempfile

    from torch._inductor.utils import fresh_cache

    from hrmlab.forecast.models import build_model
    from hrmlab.presets import resolve

    cpu = torch.device("cpu")
    cfg = resolve(preset, [f"forecast.rollout={STEP_ROLLOUT}"])
    rng = np.random.default_rng(seed)
    table: dict[str, dict] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="hrmlab-bench-compile-") as tmp, fresh_cache(dir=tmp):
        for kind in models:
            model_cfg = cfg.model_config(kind)
            x = torch.as_tensor(rng.uniform(0, 1, (batch, cfg.data.history, 2)), dtype=torch.float32)
            y = torch.as_tensor(rng.normal(0, 0.03, (batch, model_cfg.out_steps, 2)), dtype=torch.float32)
            eager = build_model(model_cfg, seed=seed).train()
            bare = copy.deepcopy(eager)
            compiled = torch.compile(bare, dynamic=False)
            opt_e = make_optimizer("adamw", eager.parameters(), 1e-3, 0.01, cpu)
            opt_c = make_optimizer("adamw", bare.parameters(), 1e-3, 0.01, cpu)

            eager_once = _step(eager, opt_e, x, y)
            compile_s = _step(compiled, opt_c, x, y) - eager_once  # the first call compiles
            for p, q in zip(eager.parameters(), bare.parameters()):  # the same weights again
                q.data.copy_(p.data)
            grad_errors = _grad_errors(eager, compiled, x, y)  # after one step: the zero-init head passes gradient

            torch._dynamo.reset()  # forget the compiled code: a fresh model of this shape, from the disk cache
            warm = copy.deepcopy(bare)
            warm_opt = make_optimizer("adamw", warm.parameters(), 1e-3, 0.01, cpu)
            warm_c = torch.compile(warm, dynamic=False)
            compile_warm_s = _step(warm_c, warm_opt, x, y) - _step(eager, opt_e, x, y)
            compiled, bare, opt_c = warm_c, warm, warm_opt  # time the copy compiled last (the live one)
            del warm_c

            for _ in range(warmup):
                _step(eager, opt_e, x, y)
                _step(compiled, opt_c, x, y)
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(steps):
                times["eager"].append(_step(eager, opt_e, x, y))
                times["compiled"].append(_step(compiled, opt_c, x, y))
            e_min, c_min = 1000 * min(times["eager"]), 1000 * min(times["compiled"])
            e_med, c_med = 1000 * statistics.median(times["eager"]), 1000 * statistics.median(times["compiled"])
            table[kind] = {"eager": round(e_min, 1), "compiled": round(c_min, 1), "speedup": round(e_min / c_min, 2),
                           "eager_median": round(e_med, 1), "compiled_median": round(c_med, 1),
                           "speedup_median": round(e_med / c_med, 2), "compile_s": round(compile_s, 1),
                           "compile_warm_s": round(compile_warm_s, 1), **grad_errors}
            torch._dynamo.reset()
    torch.set_num_threads(before)  # other benchmarks of this call run as they would alone
    return {
        "train_ms_per_step": table,
        "train_step_setup": {"preset": preset, "rollout": STEP_ROLLOUT, "batch": batch, "threads": threads,
                             "timed_steps": steps, "warmup_steps": warmup, "statistic": "min (and median) ms",
                             "torch": torch.__version__,
                             "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"},
    }


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1:] == ["train_step"]:
        print(json.dumps(bench_train_step(), indent=2))
    else:
        print(json.dumps(bench_hrm_training(), indent=2))
