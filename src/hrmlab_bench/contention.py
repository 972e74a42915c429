"""Training beside other work: how much slower a training step gets when every core also runs a busy process.

`bench_contention` times real training steps (forward, MSE, backward, clip, AdamW) of the `quick` preset's
LSTM and HRM, each in a fresh child process started the way `hrmlab` starts (hrmlab/threads.py: its
OpenMP defaults in the environment, the training thread count of the default `train.cpu_threads`):
first on the quiet machine, then beside one busy process per available CPU, which the bench starts and
stops itself. For contrast it also times torch's own default (one spinning OpenMP thread per core) quiet
and beside the same busy processes.

Each child process measures for a fixed time after one warm-up step and reports the median step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = ("lstm", "hrm")
BATCH = 256
"""The quick preset's training batch."""


def _train_steps(kind: str, seconds: float, threads_setting: int) -> dict:
    """In this (child) process: time training steps of the quick preset's `kind` for `seconds`."""
    import torch
    import torch.nn.functional as F

    from hrmlab.forecast.models import build_model
    from hrmlab.presets import resolve
    from hrmlab.threads import use_cpu_threads

    threads = torch.get_num_threads() if threads_setting < 0 else use_cpu_threads(threads_setting)
    cfg = resolve("quick")
    model = build_model(cfg.model_config(kind), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, cfg.data.history, 2, generator=gen)
    with torch.no_grad():
        y = model(x) + 0.01
    times = []
    deadline = None
    while True:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
        if deadline is None:  # the first step warms allocators and kernels; time from here
            deadline = time.perf_counter() + seconds
        elif time.perf_counter() > deadline and len(times) >= 5:  # at least 4 timed steps
            break
    steps = times[1:]
    return {"kind": kind, "threads": threads, "steps": len(steps), "median_ms": 1000 * statistics.median(steps),
            "wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


def _child(kind: str, seconds: float, env: dict, threads_setting: int) -> dict:
    """One measurement in a fresh process. threads_setting: a `cpu_threads` value, or -1 for torch's own
    default (one thread per core)."""
    cmd = [sys.executable, "-m", "hrmlab_bench.contention", "--child", kind, "--seconds", str(seconds),
           "--threads", str(threads_setting)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds * 20 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"contention child {kind} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class BusyCores:
    """`n` processes that spin in pure Python until the context ends (one per core: a machine in use)."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self) -> "BusyCores":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.5)  # let the scheduler see them
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def bench_contention(seconds: float = 8.0, default_seconds: float = 8.0, models=MODELS) -> dict:
    """Median training-step time of each model quiet and beside one busy process per CPU, with hrmlab's
    threading, plus torch's default threading beside the same load. Figures: contention_<kind>_* ."""
    from hrmlab.threads import PROCESS_DEFAULTS, available_cpus, configure_process
    from hrmlab.train.trainer import TrainConfig

    configure_process()
    setting = TrainConfig().cpu_threads
    ours = dict(os.environ)
    torch_default = {k: v for k, v in os.environ.items() if k not in PROCESS_DEFAULTS}
    cpus = available_cpus()
    figures: dict = {"contention_busy_processes": cpus, "contention_cpus": cpus,
                     "contention_process_defaults": ", ".join(f"{k}={v}" for k, v in PROCESS_DEFAULTS.items())}
    for kind in models:
        quiet = _child(kind, seconds, ours, setting)
        with BusyCores(cpus):
            busy = _child(kind, seconds, ours, setting)
            default_busy = _child(kind, default_seconds, torch_default, -1)
        default_quiet = _child(kind, seconds, torch_default, -1)
        figures.update({
            f"contention_{kind}_threads": quiet["threads"],
            f"contention_{kind}_torch_default_threads": default_quiet["threads"],
            f"contention_{kind}_quiet_ms": round(quiet["median_ms"], 1),
            f"contention_{kind}_busy_ms": round(busy["median_ms"], 1),
            f"contention_{kind}_slowdown": round(busy["median_ms"] / quiet["median_ms"], 2),
            f"contention_{kind}_torch_default_quiet_ms": round(default_quiet["median_ms"], 1),
            f"contention_{kind}_torch_default_busy_ms": round(default_busy["median_ms"], 1),
            f"contention_{kind}_torch_default_slowdown": round(default_busy["median_ms"] / default_quiet["median_ms"], 2),
            f"contention_{kind}_steps_timed": [quiet["steps"], busy["steps"], default_quiet["steps"], default_busy["steps"]],
        })
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="child process of the contention benchmark")
    parser.add_argument("--child", required=True, choices=MODELS)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(_train_steps(args.child, args.seconds, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
