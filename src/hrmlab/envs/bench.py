"""`hrmlab bench --only gym`: env steps per second of the batched vector env against gymnasium's
SyncVectorEnv of the single env, on the same world with the same random actions (and one plain env)."""

from __future__ import annotations

import time

import numpy as np
import gymnasium as gym

import hrmlab.envs  # noqa: F401  (registers the ids)


def _steps_per_s(envs, num_envs: int, steps: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    envs.reset(seed=0)
    for _ in range(20):  # warm-up: first resets, caches
        envs.step(rng.integers(0, 5, size=num_envs))
    best = 0.0
    for _ in range(repeats):
        actions = rng.integers(0, 5, size=(steps, num_envs))
        t0 = time.perf_counter()
        for a in actions:
            envs.step(a)
        best = max(best, steps * num_envs / (time.perf_counter() - t0))
    return best


def _single_steps_per_s(steps: int, repeats: int) -> float:
    env = gym.make("hrmlab/BounceGrid-v0")
    rng = np.random.default_rng(0)
    best = 0.0
    for r in range(repeats):
        env.reset(seed=r)
        actions = rng.integers(0, 5, size=steps)
        t0 = time.perf_counter()
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        best = max(best, steps / (time.perf_counter() - t0))
    return best


def bench_gym(num_envs: int = 64, steps: int = 300, repeats: int = 3) -> dict:
    """Random actions on hrmlab/BounceGrid-v0 (episodes auto-reset from the train split)."""
    vector = gym.make_vec("hrmlab/BounceGrid-v0", num_envs=num_envs)  # the batched core
    sync = gym.make_vec("hrmlab/BounceGrid-v0", num_envs=num_envs, vectorization_mode="sync")
    fast = _steps_per_s(vector, num_envs, steps, repeats)
    slow = _steps_per_s(sync, num_envs, max(20, steps // 3), repeats)
    vector.close()
    sync.close()
    return {"gym_num_envs": num_envs,
            "gym_vector_env_steps_per_s": round(fast, 1),
            "gym_sync_vector_env_steps_per_s": round(slow, 1),
            "gym_vector_speedup": round(fast / slow, 1),
            "gym_single_env_steps_per_s": round(_single_steps_per_s(steps * 4, repeats), 1)}
