"""`hrmlab bench --only diffusion_st`: time of one replanning step of the space-time diffusion planner.

One BlobWorld test episode at a time (the latency a single agent sees), the `diffusion-st-cpu` preset's
network and sampling (weights do not change the time: a freshly initialised network of the same size),
one torch thread: encode the condition, sample the candidates, guide, project, check and pick. Wall time
and this process's CPU time are both reported: on a shared machine the wall time also holds the waits
for a core.
"""

from __future__ import annotations

import time

import numpy as np
import torch


def bench_st_planner(replans: int = 60, preset: str = "diffusion-st-cpu", overrides=()) -> dict:
    from hrmlab.diffusion.spacetime.model import STDenoiser
    from hrmlab.diffusion.spacetime.planner import DiffusionSTPolicy
    from hrmlab.diffusion.spacetime.worlds import BlobOracleForecaster, blob_rules
    from hrmlab.forecast.base import Observation
    from hrmlab.presets import load_preset
    from hrmlab.worlds import OBSERVED_HISTORY, blob_world

    cfg = load_preset(preset, list(overrides))
    world = cfg.blob
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = STDenoiser(cfg.model, world.map_size, cfg.data.horizon).eval()
        rules = blob_rules(world, cfg.expert.goal_tolerance, cfg.eval.collision_radius)
        state = blob_world.reset_split(world, "test", np.arange(20))
        history = blob_world.rewound_history(world, state, OBSERVED_HISTORY)
        view = blob_world.forecaster_view(world)
        forecast = BlobOracleForecaster(world).forecast(Observation(history, state, view), cfg.data.horizon - 1)
        times, cpu = [], []
        for i in range(replans + 3):
            e = np.array([i % state.batch])
            sub = state.subset(e)
            policy = DiffusionSTPolicy(model, rules, cfg.sampling, cfg.planner)  # fresh: every call replans
            t0, c0 = time.perf_counter(), time.process_time()
            policy(Observation(history[e], sub, view), sub.start, forecast[e], np.array([0]))
            if i >= 3:  # the first calls compile and warm up
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    finally:
        torch.set_num_threads(threads)
    times, cpu = np.array(times) * 1000, np.array(cpu) * 1000
    return {"st_replan_ms_p50": round(float(np.median(times)), 1),
            "st_replan_ms_p90": round(float(np.quantile(times, 0.9)), 1),
            "st_replan_cpu_ms_p50": round(float(np.median(cpu)), 1),
            "st_candidates": cfg.sampling.candidates, "st_denoising_steps": cfg.sampling.steps}
