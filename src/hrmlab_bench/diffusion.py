"""Expert speed: numba space-time A* vs the pure-Python implementations, per core, on the same episodes.

Timings are process CPU time (`time.process_time`) in one process, so they measure work per core and are
not inflated by other load on the machine; the compiled kernel is warmed up first (compilation excluded)
and its best of `repeats` passes is used. Two Python baselines:

* `reference` — `reference.expert_astar.plan_reference`, a careful pure-Python version (heapq, sets, dicts);
* `seed_style` — `reference.expert_astar.plan_seed_style`, the same search with the original script's per-node
  costs (path lists in heap entries, `np.linalg.norm` per check). It is slow, so it runs on the first
  `seed_style_episodes` episodes and is compared with the kernel on exactly those.
"""

from __future__ import annotations

import time

from hrmlab.planning import blob_astar
from hrmlab.planning.blob_astar import ExpertConfig
from hrmlab_bench.reference.expert_astar import plan_reference, plan_seed_style
from hrmlab.worlds import blob_world
from hrmlab.worlds.blob_world import BlobWorldConfig


def _cpu_seconds(fn, items) -> tuple[float, list]:
    t0 = time.process_time()
    out = [fn(*item) for item in items]
    return time.process_time() - t0, out


def bench_expert(episodes: int = 20, seed_style_episodes: int = 3, first_seed: int = 1000,
                 repeats: int = 3) -> dict:
    """Expert plans per CPU-second for the numba kernel and the Python baselines (seed protocol episodes)."""
    world = BlobWorldConfig()
    cfg = ExpertConfig(forecast_clip=False)
    state = blob_world.reset_seed_exact(world, range(first_seed, first_seed + episodes))
    traj = blob_world.trajectory(world, state, cfg.max_steps, clip=False)
    items = [(state.static[e], traj[e], state.start[e], state.goal[e]) for e in range(episodes)]

    def fast(static, tr, start, goal):
        return blob_astar.plan(static, tr, start, goal, cfg)

    def reference(static, tr, start, goal):
        return plan_reference(static, tr, start, goal, cfg.max_steps, cfg.wait_cost, cfg.clearance,
                              cfg.goal_tolerance)

    def seed_style(static, tr, start, goal):
        return plan_seed_style(static, tr, start, goal, cfg.max_steps, cfg.wait_cost, cfg.clearance,
                               cfg.goal_tolerance)

    fast(*items[0])  # compile / load the cached kernel
    fast_s, fast_paths = min((_cpu_seconds(fast, items) for _ in range(repeats)), key=lambda r: r[0])
    ref_s, ref_paths = _cpu_seconds(reference, items)
    k = min(seed_style_episodes, episodes)
    fast_k_s = min(_cpu_seconds(fast, items[:k])[0] for _ in range(repeats))
    seed_s, seed_paths = _cpu_seconds(seed_style, items[:k])

    def same(a, b):
        return all((x is None) == (y is None) and (x is None or len(x) == len(y)) for x, y in zip(a, b))

    return {
        "timer": "process CPU seconds, one core",
        "episodes": episodes,
        "plans_found": int(sum(p is not None for p in fast_paths)),
        "numba_paths_per_s": episodes / fast_s,
        "reference_paths_per_s": episodes / ref_s,
        "speedup_vs_reference": ref_s / fast_s,
        "seed_style": {
            "episodes": k,
            "paths_per_s": k / seed_s,
            "numba_paths_per_s": k / fast_k_s,
            "speedup": seed_s / fast_k_s,
        },
        "same_path_lengths": bool(same(fast_paths, ref_paths) and same(fast_paths[:k], seed_paths)),
        "numba_ms_per_plan": 1000 * fast_s / episodes,
    }


if __name__ == "__main__":  # pragma: no cover - `python -m hrmlab_bench.diffusion`
    import json

    print(json.dumps(bench_expert(), indent=1))
