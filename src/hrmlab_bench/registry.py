"""`hrmlab bench`: every performance figure the docs quote, measured by one command.

Each benchmark is a function returning a flat dict of named figures; `run_benchmarks` runs the
selected ones and records the machine, so docs/benchmarks.md can cite command and hardware.
"""

from __future__ import annotations

import os
import platform
from typing import Callable

from hrmlab_bench.closed_loop import bench_closed_loop, bench_planner


def _lazy(module: str, func: str) -> Callable[[], dict]:
    def call() -> dict:
        import importlib

        return getattr(importlib.import_module(module), func)()

    call.__name__ = func
    return call


BENCHMARKS: dict[str, Callable[[], dict]] = {
    "closed_loop": bench_closed_loop,
    "planner": bench_planner,
    "collect": _lazy("hrmlab_bench.data", "bench_collect"),
    "loader": _lazy("hrmlab_bench.data", "bench_loader"),
    "hrm_train": _lazy("hrmlab_bench.train", "bench_hrm_training"),
    "train_step": _lazy("hrmlab_bench.train", "bench_train_step"),  # eager vs compiled: minutes of compiling; not default
    "expert": _lazy("hrmlab_bench.diffusion", "bench_expert"),
    "gym": _lazy("hrmlab_bench.gym", "bench_gym"),  # needs the gym extra; not in the default set
    "forecast": _lazy("hrmlab_bench.forecast", "bench_forecast"),
    "diffusion_st": _lazy("hrmlab_bench.diffusion_st", "bench_st_planner"),
    "gpu": _lazy("hrmlab_bench.gpu", "bench_gpu"),  # needs CUDA; not in the default set
    "contention": _lazy("hrmlab_bench.contention", "bench_contention"),  # ~2 min, loads the cores; not default
    "ensemble": _lazy("hrmlab_bench.ensemble", "bench_ensemble"),  # stacked ensembles vs one run (GPU-minded); not default
}


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    return info


def run_benchmarks(names: list[str]) -> dict:
    figures: dict = {}
    for name in names:
        figures.update(BENCHMARKS[name]())
    return {"machine": machine_info(), "figures": figures}
