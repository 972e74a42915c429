"""GPU figures: `hrmlab bench --only gpu` (needs CUDA; a clear error without it).

What a researcher moving from a laptop to a GPU wants to know, each against the card's own ceilings:

1. `gpu_ceiling_*`: a large bf16 and fp32 matmul and a device-to-device copy, measured in the same
   process, so every other figure can be read as a fraction of what this card reaches.
2. `gpu_hrm_train`: training steps of the 28.97M DeepSapientHRM (the RobustFix / split / 8gpu model),
   ours vs the original formulation on identical weights, fp32 and bf16 autocast, at batch 256 and 4096,
   with the step's matmul FLOPs (torch.utils.flop_counter, forward + backward) and achieved TFLOP/s.
3. `gpu_closed_loop`: the 1,000-episode closed loop of that model (untrained: cost does not depend on the
   weights) on the preset's test protocol, window roll-out as the seed scripts ran it, and stateful;
   wall seconds and forecaster milliseconds per episode-step. Constant velocity drives the planner and the
   model forecasts every same observation (hrmlab_bench.forecast.TimedShadows): an untrained model
   driving would crash its episodes early and shrink the work.
4. `gpu_study_train`: the study's four models at the quick preset's sizes and batch, through the real
   trainer: ms per optimiser step on the GPU against one CPU thread (what a study worker gets), i.e.
   whether the study itself gains from a GPU.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch

from hrmlab.errors import UserError
from hrmlab.experiments.study import StudyConfig, train_field

STUDY_MODELS = StudyConfig().models


def _emit(part: str, key: str, row: dict) -> None:
    """Print one finished row at once: a lease that ends mid-part keeps the rows already measured."""
    print(json.dumps({part: {key: row}}), flush=True)


def _median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def ceilings(n: int = 8192, copy_bytes: int = 4 << 30) -> dict:
    """bf16 / fp32 matmul TFLOP/s on fresh random data and copy bandwidth (bytes read + written)."""
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        s = _median_seconds(lambda: a @ b, repeats=10)
        out[f"gpu_ceiling_matmul_{name}_tflops"] = round(2 * n ** 3 / s / 1e12, 1)
        del a, b
    src = torch.empty(copy_bytes // 4, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    s = _median_seconds(lambda: dst.copy_(src), repeats=10)
    out["gpu_ceiling_copy_gb_s"] = round(2 * copy_bytes / s / 1e9, 0)
    out["gpu_fp32_matmul_allows_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    del src, dst
    torch.cuda.empty_cache()
    return out


def train_step_flops(model, batch: int, history: int = 20) -> float:
    """Matmul FLOPs of one forward + backward per sample (flop_counter; elementwise work not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(batch, history, 2, device="cuda")
    with FlopCounterMode(display=False) as counter:
        model(x).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def hrm_train(batches=(256, 4096), precisions=("fp32", "bf16"), steps: int = 10) -> dict:
    from hrmlab.forecast.models import build_model, count_parameters
    from hrmlab_bench.train import BENCH_MODEL, bench_hrm_training

    model = build_model(BENCH_MODEL, seed=0).cuda()
    flops, params = train_step_flops(model, 64), count_parameters(model)
    del model
    rows = {}
    for precision in precisions:
        for batch in batches:
            r = bench_hrm_training(batch=batch, steps=steps, warmup=2, device="cuda", precision=precision)
            rows[f"{precision}_b{batch}"] = row = {
                "samples_per_s": round(r["hrm_train_samples_per_s"]),
                "reference_samples_per_s": round(r["reference_train_samples_per_s"]),
                "speedup_vs_original_formulation": round(r["speedup"], 2),
                "step_ms": round(r["step_ms"], 2),
                "achieved_tflops": round(flops * r["hrm_train_samples_per_s"] / 1e12, 1),
                "outputs_match": r["outputs_match"],
            }
            _emit("hrm_train", f"{precision}_b{batch}", row)
            torch.cuda.empty_cache()
    return {"gpu_hrm_train": rows, "gpu_hrm_train_mflop_per_sample": round(flops / 1e6, 1),
            "gpu_hrm_train_params": params}


def closed_loop(preset: str = "hrm-cloud-robustfix", runs=(("stateful", "bf16", 1000), ("stateful", "fp32", 1000),
                                                          ("window", "bf16", 200), ("window", "fp32", 100))) -> dict:
    """(roll-out, precision, episodes) per row; all episodes of a row in one batch (6 obstacles each)."""
    from hrmlab.evaluate.episodes import run_closed_loop
    from hrmlab.evaluate.protocols import get_protocol
    from hrmlab.forecast.learned import LearnedForecaster
    from hrmlab.forecast.models import build_model
    from hrmlab.presets import resolve
    from hrmlab_bench.forecast import TimedShadows

    rows = {}
    for rollout, precision, episodes in runs:
        cfg = resolve(preset, [f"forecast.rollout={rollout}"])
        protocol = get_protocol(cfg.eval.protocol)
        model = build_model(cfg.model_config("hrm"), seed=0)
        fc = LearnedForecaster(model, cfg.world.grid_size, cfg.data.history, device="cuda", dtype=precision,
                               rollout=rollout, name=f"hrm-{rollout}")
        run_closed_loop(protocol, cfg.world, cfg.planner, TimedShadows({"hrm": fc}), np.arange(8),
                        history_len=cfg.data.history, forecast_error=False)  # kernels, allocator, planner JIT
        timed = TimedShadows({"hrm": fc})
        t0 = time.perf_counter()
        rec = run_closed_loop(protocol, cfg.world, cfg.planner, timed, np.arange(episodes),
                              history_len=cfg.data.history, forecast_error=False)
        wall = time.perf_counter() - t0
        rows[f"{rollout}_{precision}"] = row = {
            "episodes": episodes, "wall_s": round(wall, 2), "forecast_s": round(timed.seconds["hrm"], 2),
            "plan_s": round(rec.plan_seconds, 2), "episode_steps": int(rec.plan_calls),
            "forecast_ms_per_episode_step": round(1000 * timed.seconds["hrm"] / rec.plan_calls, 4),
        }
        _emit("closed_loop", f"{rollout}_{precision}", row)
        del fc, model
        torch.cuda.empty_cache()
    return {"gpu_closed_loop": rows, "gpu_closed_loop_preset": preset}


def study_train(steps: int = 60, preset: str = "quick") -> dict:
    """ms per optimiser step of the study's models through `train` (data loading, clipping, AdamW and
    each model's own objective included), GPU vs one CPU thread, after a warm-up run of the same size."""
    import tempfile

    from hrmlab.data.base import ArraySource
    from hrmlab.forecast.models import build_model
    from hrmlab.presets import resolve
    from hrmlab.train.trainer import TrainConfig, train

    cfg = resolve(preset, [])
    history = cfg.data.history
    rng = np.random.default_rng(0)
    n = 32_768
    start = rng.uniform(0.2, 0.8, (n, 1, 2))
    vel = rng.normal(0.0, 0.01, (n, 1, 2))
    source = ArraySource((start + np.arange(history)[None, :, None] * vel).astype(np.float32),
                         vel[:, 0].astype(np.float32))
    threads = torch.get_num_threads()
    rows = {}
    for kind in STUDY_MODELS:
        recipe = getattr(cfg, train_field(kind))
        row = {"batch": recipe.batch_size}
        for device in ("cuda", "cpu"):
            if device == "cpu":
                torch.set_num_threads(1)
            run_steps = steps if device == "cuda" else max(10, steps // 6)
            for _ in range(2):  # the first run warms kernels and allocators; the second is timed
                model = build_model(cfg.model_config(kind), seed=0)
                train_cfg = TrainConfig(epochs=100, batch_size=recipe.batch_size, lr=1e-3, max_steps=run_steps,
                                        checkpoint_every_steps=0, log_every_steps=run_steps, device=device)
                with tempfile.TemporaryDirectory() as tmp:
                    result = train(model, source, None, train_cfg, tmp, progress=False)
            row[f"{device}_ms_per_step"] = round(1000 * recipe.batch_size / result.samples_per_s, 2)
            torch.set_num_threads(threads)
        row["gpu_speedup_vs_one_cpu_thread"] = round(row["cpu_ms_per_step"] / row["cuda_ms_per_step"], 1)
        rows[kind] = row
        _emit("study_train", kind, row)
    return {"gpu_study_train": rows, "gpu_study_train_preset": preset}


PARTS = {"ceilings": ceilings, "hrm_train": hrm_train, "closed_loop": closed_loop, "study_train": study_train}


def bench_gpu(parts=tuple(PARTS), report=None) -> dict:
    """Run `parts` in order; `report(part, figures)` is called after each (a lease can end mid-bench)."""
    if not torch.cuda.is_available():
        raise UserError("bench gpu needs a CUDA device (torch.cuda.is_available() is False)")
    props = torch.cuda.get_device_properties(0)
    figures = {"gpu_name": props.name, "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
               "gpu_multiprocessors": props.multi_processor_count, "gpu_torch": torch.__version__}
    for name in parts:
        t0 = time.perf_counter()
        part = PARTS[name]()
        part[f"gpu_seconds_{name}"] = round(time.perf_counter() - t0, 1)
        figures.update(part)
        if report:
            report(name, part)
    return figures


def _report_scalars(name: str, part: dict) -> None:
    """A part's remaining figures once it ends (its table rows were printed by _emit as they finished)."""
    print(json.dumps({name: {k: v for k, v in part.items() if not isinstance(v, dict)}}), flush=True)


if __name__ == "__main__":  # python -m hrmlab_bench.gpu [PART ...]: figures printed as they are measured
    import sys

    bench_gpu(sys.argv[1:] or tuple(PARTS), report=_report_scalars)
