"""Data-pipeline benchmarks quoted in docs/benchmarks.md (the `hrmlab bench` command calls these).

* `bench_collect`: training samples produced per second by one process (one realistic shard: simulate,
  write, checksum), no pool start-up. Target ≥ 2.5M/s (20× the original's 127k/s per core).
* `bench_loader`: samples per second served by `get_batch` for batches of 2,048 random indices from a
  merged, memory-mapped dataset on disk. Target > 1M/s.
* `bench_full_collect`: the whole 60,000-episode collection + merge with the process pool, timed in a
  fresh subprocess so its peak memory (main process and largest worker) is measured cleanly.

Run from a shell: `python -m hrmlab_bench.data {collect,loader,full} [--workers N]` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hrmlab.backends.local import SerialBackend, make_backend
from hrmlab.data.collect import DataConfig, ShardSpec, collect, make_shard
from hrmlab.data.dataset import open_dataset
from hrmlab.worlds.bounce_grid import BounceGridConfig

log = logging.getLogger(__name__)


def bench_collect(episodes: int = 5_120, repeats: int = 3, world: BounceGridConfig | None = None,
                  data: DataConfig | None = None) -> dict:
    """Samples/s of `make_shard` on one shard of `episodes` episodes, best of `repeats`, in this process."""
    world = world or BounceGridConfig()
    data = data or DataConfig()
    samples = episodes * world.num_obstacles * (data.steps_per_episode - data.history)
    with tempfile.TemporaryDirectory() as tmp:
        def spec(count: int) -> ShardSpec:
            return ShardSpec(world, "train", 0, count, data.steps_per_episode, data.reset_batch, f"{tmp}/shard.npy")

        make_shard(spec(min(episodes, 64)))  # warm-up: first-call costs are not throughput
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            make_shard(spec(episodes))
            seconds.append(time.perf_counter() - started)
    best = min(seconds)
    return {"collect_samples_per_s": samples / best, "collect_episodes_per_s": episodes / best,
            "collect_shard_episodes": episodes, "collect_shard_seconds": best}


def bench_loader(episodes: int = 60_000, batch_size: int = 2_048, batches: int = 500,
                 cache_root: str | Path | None = None) -> dict:
    """Samples/s of `get_batch` with uniformly random indices from a merged on-disk dataset (memory-mapped)."""
    world = BounceGridConfig()
    data = DataConfig(train_episodes=episodes, val_episodes=0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = collect(world, data, cache_root or tmp, backend=SerialBackend(), progress=False)
        source = open_dataset(paths, "train")
        rng = np.random.default_rng(0)
        source.get_batch(rng.integers(0, len(source), batch_size))  # compile the gather kernel
        index_batches = rng.integers(0, len(source), (batches, batch_size))
        started = time.perf_counter()
        for indices in index_batches:
            source.get_batch(indices)
        seconds = time.perf_counter() - started
    return {"loader_samples_per_s": batches * batch_size / seconds, "loader_batch_size": batch_size,
            "loader_dataset_samples": len(source)}


def bench_full_collect(workers: int = 2, train_episodes: int = 60_000, val_episodes: int = 3_000,
                       cache_root: str | Path | None = None) -> dict:
    """Time a full collection + merge in a fresh subprocess; returns seconds and peak RSS (MB)."""
    command = [sys.executable, "-m", "hrmlab_bench.data", "_full", "--workers", str(workers),
               "--train-episodes", str(train_episodes), "--val-episodes", str(val_episodes)]
    if cache_root is not None:
        command += ["--cache-root", str(cache_root)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _full_collect_child(workers: int, train_episodes: int, val_episodes: int, cache_root: str | None) -> dict:
    world = BounceGridConfig()
    data = DataConfig(train_episodes=train_episodes, val_episodes=val_episodes, workers=workers)
    with tempfile.TemporaryDirectory(dir=cache_root) as tmp:
        started = time.perf_counter()
        paths = collect(world, data, tmp, backend=make_backend(workers), progress=False)
        seconds = time.perf_counter() - started
        size = sum(path.stat().st_size for path in paths.files.values())
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    samples = train_episodes * world.num_obstacles * (data.steps_per_episode - data.history)
    return {"full_collect_seconds": seconds, "full_collect_workers": workers,
            "full_collect_train_episodes": train_episodes, "full_collect_val_episodes": val_episodes,
            "full_collect_train_samples": samples, "full_collect_dataset_mb": size / 2**20,
            "full_collect_peak_rss_main_mb": main_mb, "full_collect_peak_rss_worker_mb": worker_mb,
            "full_collect_peak_rss_bound_mb": main_mb + workers * worker_mb}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hrmlab_bench.data", description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["collect", "loader", "full", "_full"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-episodes", type=int, default=60_000)
    parser.add_argument("--val-episodes", type=int, default=3_000)
    parser.add_argument("--cache-root", default=None)
    args = parser.parse_args(argv)
    if args.which == "collect":
        result = bench_collect()
    elif args.which == "loader":
        result = bench_loader()
    elif args.which == "full":
        result = bench_full_collect(args.workers, args.train_episodes, args.val_episodes, args.cache_root)
    else:
        result = _full_collect_child(args.workers, args.train_episodes, args.val_episodes, args.cache_root)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
