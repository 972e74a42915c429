"""`hrmlab bench --only gym`: env steps per second of the batched vector env against gymnasium's
SyncVectorEnv of the single env, on the same world with the same random actions (and one plain env)."""

from __future__ import annotations

import time

import numpy as np
import gymnasium as gym

import hrmlab.envs  # noqa: F401  (registers the ids)


def _timed_steps(envs, actions: np.ndarray) -> float:
    t0 = time.perf_counter()
    for a in actions:
        envs.step(a)
    return actions.size / (time.perf_counter() - t0)


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
    """Random actions on hrmlab/BounceGrid-v0 (episodes auto-reset from the train split). The repeats
    of the two vector envs alternate, so a change of load on a shared machine hits both alike."""
    vector = gym.make_vec("hrmlab/BounceGrid-v0", num_envs=num_envs)  # the batched core
    sync = gym.make_vec("hrmlab/BounceGrid-v0", num_envs=num_envs, vectorization_mode="sync")
    rng = np.random.default_rng(0)
    fast = slow = 0.0
    for envs in (vector, sync):
        envs.reset(seed=0)
        _timed_steps(envs, rng.integers(0, 5, size=(20, num_envs)))  # warm-up: first resets, caches
    for _ in range(repeats):
        fast = max(fast, _timed_steps(vector, rng.integers(0, 5, size=(steps, num_envs))))
        slow = max(slow, _timed_steps(sync, rng.integers(0, 5, size=(max(20, steps // 3), num_envs))))
    vector.close()
    sync.close()
    return {"gym_num_envs": num_envs,
            "gym_vector_env_steps_per_s": round(fast, 1),
            "gym_sync_vector_env_steps_per_s": round(slow, 1),
            "gym_vector_speedup": round(fast / slow, 1),
            "gym_single_env_steps_per_s": round(_single_steps_per_s(steps * 4, repeats), 1)}
