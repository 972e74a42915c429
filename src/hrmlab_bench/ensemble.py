"""Stacked-ensemble training throughput: `hrmlab bench --only ensemble` (issue 29, item 4).

The study trains many runs of one model shape per world (training seeds × candidate learning rates). On a
GPU one such run is launch-bound; `hrmlab.train.ensemble` trains M of them as one batched model. This
benchmark measures what that buys on the device at hand (CUDA if available, else the CPU):

* `alone`: one member trained as the trainer trains it (zero_grad, the trainer's loss, backward,
  clip_grad_norm_, fused AdamW, OneCycle step), ms per step and samples/s;
* `ensemble_M`: an `EnsembleStep` of M members (M = 1, 4, 15), each member on its own batch of the study's
  size; ms per step and AGGREGATE samples/s (M × batch per step), and `speedup` = aggregate samples/s over
  the lone member's — how much faster M runs finish together than one after another.

Models and recipe: the study's (`experiments/study`: the preset's models with the direct roll-out head,
equal recipes: adamw, onecycle, clip 1, batch 512 in the suites, trm without EMA). On CPU only trm is timed
(one thread, as a study worker trains; the bench stays near a minute) and no gain is expected: a CPU is
compute-bound, so M members cost at least M times one (measured on a loaded 2-core x86: speedup 0.98 at
M = 1, 0.77 at 4, 0.60 at 15). On CUDA all four models are timed. Each figure is the minimum over the timed
steps (median beside it), after warm-up steps; on CPU few steps are timed (a 15-member trm step takes over
10 s there), so read the CPU figures as rough.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time

import numpy as np
import torch

PRESET = "suite-rush"
"""Whose models and recipe are timed (every suite shares them: presets/_suite.yaml)."""
MEMBERS = (1, 4, 15)
CPU_KINDS = ("trm",)
CUDA_KINDS = ("lstm", "hrm", "hrm-act", "trm")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _row(times: list[float], samples_per_step: int) -> dict:
    best, median = min(times), statistics.median(times)
    return {"ms_per_step": round(1000 * best, 2), "ms_per_step_median": round(1000 * median, 2),
            "samples_per_s": round(samples_per_step / best, 1), "timed_steps": len(times)}


def bench_ensemble(kinds: tuple[str, ...] | None = None, members: tuple[int, ...] = MEMBERS, preset: str = PRESET,
                   device: str | None = None, threads: int = 1, seed: int = 0, batch: int | None = None) -> dict:
    """Aggregate training samples/s of M-member stacked ensembles vs one member alone; see the module docstring.
    `batch`: samples per member per step (default: the study's, the preset's train batch size)."""
    import warnings

    from hrmlab.experiments.study import StudyConfig
    from hrmlab.experiments.study.config import arm_configs
    from hrmlab.forecast.models import build_model, count_parameters
    from hrmlab.train.ensemble import EnsembleStep, StackedEnsemble
    from hrmlab.train.optim import make_optimizer, make_scheduler
    from hrmlab.train.trainer import mse_loss

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    kinds = tuple(kinds or (CUDA_KINDS if cuda else CPU_KINDS))
    warmup, steps = (5, 20) if cuda else (1, 3)  # CPU: one warm-up step, then 3 timed (2 for M ≥ 4, 1 for M ≥ 8)
    cfg = arm_configs(preset, StudyConfig())["direct"]
    history = cfg.data.history
    before = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    requested_batch = batch
    table: dict[str, dict] = {}
    try:
        for kind in kinds:
            model_cfg, train_cfg = cfg.model_config(kind), cfg.train_config(kind)
            batch, k = requested_batch or train_cfg.batch_size, model_cfg.out_steps
            total_steps = 1000

            def data(m: int):
                x = torch.as_tensor(rng.uniform(0, 1, (m, batch, history, 2)), dtype=torch.float32, device=dev)
                y = torch.as_tensor(rng.normal(0, 0.03, (m, batch, k, 2)), dtype=torch.float32, device=dev)
                return x, y

            model = build_model(model_cfg, seed=seed).to(dev).train()
            optimizer = make_optimizer(train_cfg.optimizer, model.parameters(), train_cfg.lr, train_cfg.weight_decay,
                                       dev)
            scheduler = make_scheduler(train_cfg.schedule, optimizer, total_steps, train_cfg.lr, train_cfg.min_lr)
            x1, y1 = data(1)

            def alone():
                optimizer.zero_grad(set_to_none=True)
                mse_loss(model, (x1[0], y1[0])).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip or math.inf)
                optimizer.step()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()

            row = {"params": count_parameters(model), "batch": batch,
                   "alone": _row(_timed(alone, dev, warmup, steps), batch)}
            single = row["alone"]["samples_per_s"]
            for m in members:
                ensemble = StackedEnsemble([build_model(model_cfg, seed=seed + i) for i in range(m)], device=dev)
                rates = [train_cfg.lr * (1 + i % 3) for i in range(m)]  # candidate rates: the members differ
                step = EnsembleStep(ensemble, train_cfg, total_steps, lrs=rates)
                xm, ym = data(m)
                with warnings.catch_warnings():  # CPU SDPA's per-member vmap fallback warns once per op
                    warnings.filterwarnings("ignore", message="There is a performance drop")
                    timed = steps if cuda or m < 4 else (2 if m < 8 else 1)  # CPU: keep the bench near a minute
                    times = _timed(lambda: step((xm, ym)), dev, warmup, timed)
                ens_row = _row(times, m * batch)
                ens_row["speedup"] = round(ens_row["samples_per_s"] / single, 2)
                row[f"ensemble_{m}"] = ens_row
            table[kind] = row
    finally:
        torch.set_num_threads(before)
    return {
        "ensemble_train": table,
        "ensemble_setup": {"preset": preset, "rollout": "direct", "members": list(members),
                           "device": (torch.cuda.get_device_name(dev) if cuda
                                      else f"cpu ({platform.processor() or platform.machine()})"),
                           "threads": None if cuda else threads, "warmup_steps": warmup,
                           "statistic": "min (and median) ms per optimiser step; aggregate samples/s = M x batch / min",
                           "torch": torch.__version__,
                           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench_ensemble(), indent=2))
