"""Training-throughput benchmark: our HRM formulation against the seed's original one, same weights.

`bench_hrm_training` times full training steps (forward, MSE, backward, clip, AdamW) of the 28.97M
DeepSapientHRM (gated, d=512, 4+4 blocks, 8 heads, k=2) in both formulations, interleaved so machine
load affects both alike, after checking that they compute the same outputs and gradients.
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


if __name__ == "__main__":
    import json

    print(json.dumps(bench_hrm_training(), indent=2))
