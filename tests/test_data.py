"""Forecasting data pipeline: sample definition, cache behaviour, resumption, corruption, backends."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hrmlab.backends.local import ProcessPoolBackend, SerialBackend
from hrmlab.data import shards
from hrmlab.data.collect import DataConfig, collect, dataset_key
from hrmlab.data.collect import load_or_collect
from hrmlab.data.dataset import TrajectoryWindows, open_dataset
from hrmlab.errors import UserError
from hrmlab.worlds import bounce_grid, seeding
from hrmlab.worlds.bounce_grid import BounceGridConfig

WORLD = BounceGridConfig()
# 24 train episodes in 6 shards, 8 val episodes in 2 shards; 30 steps, history 5 → 6 × 25 samples/episode
TINY = DataConfig(train_episodes=24, val_episodes=8, steps_per_episode=30, history=5, reset_batch=4,
                  episodes_per_shard=4, workers=1)
TRAIN_SHARDS = [f"train_{a:09d}_{a + 4:09d}" for a in range(0, 24, 4)]
VAL_SHARDS = [f"val_{a:09d}_{a + 4:09d}" for a in range(0, 8, 4)]
DATA_LOGGER = "hrmlab.data"


def tiny(**changes) -> DataConfig:
    return DataConfig(**{**TINY.__dict__, **changes})


def merged_sha(paths) -> dict:
    return {split: shards.sha256_file(path) for split, path in paths.files.items()}


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def reference_samples(world: BounceGridConfig, split: str, episodes: int, steps: int, history: int,
                      reset_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """SPEC §3 written as the seed's episode loop, on the world's own trajectories: reset; per step, append
    the positions to the history, then step; once the history holds more than H positions, one sample per
    obstacle: X = the H positions before the latest, Y = latest − previous. Cell units / grid size."""
    xs, ys = [], []
    for first in range(0, episodes, reset_batch):  # reset in the same aligned batches as the collector
        state = bounce_grid.reset_split(world, split, np.arange(first, min(episodes, first + reset_batch)))
        recorded = []
        for _ in range(steps):
            recorded.append(state.pos.copy())
            bounce_grid.step(world, state)
        for e in range(state.batch):
            trace = []
            for t in range(steps):
                trace.append(recorded[t][e] / world.grid_size)  # (N, 2)
                if len(trace) > history:
                    for n in range(world.num_obstacles):
                        xs.append([p[n] for p in trace[-history - 1:-1]])
                        ys.append(trace[-1][n] - trace[-2][n])
    return np.asarray(xs), np.asarray(ys)


def run_killed_collect(root, data: DataConfig, after: int) -> None:
    """Run `collect` in a real subprocess that SIGKILLs itself when asked for shard number `after`."""
    script = textwrap.dedent(f"""
        import os, signal
        from hrmlab.data.collect import DataConfig, collect
        from hrmlab.worlds.bounce_grid import BounceGridConfig

        class DiesMidway:
            name = "dies-midway"
            def map(self, fn, items):
                for i, item in enumerate(items):
                    if i == {after}:
                        os.kill(os.getpid(), signal.SIGKILL)
                    yield fn(item)

        collect(BounceGridConfig(), DataConfig(**{data.__dict__!r}), {str(root)!r}, DiesMidway(), progress=False)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr


# ---------------------------------------------------------------------------------------------- samples


@pytest.mark.parametrize("split", ["train", "val"])
def test_windows_match_world_trajectories(tmp_path, split):
    paths = collect(WORLD, TINY, tmp_path, progress=False)
    source = paths.open(split)
    episodes = TINY.episodes(split)
    n, s, h = WORLD.num_obstacles, TINY.steps_per_episode, TINY.history
    assert len(source) == episodes * n * (s - h)  # N × (S − H) per episode
    x_ref, y_ref = reference_samples(WORLD, split, episodes, s, h, TINY.reset_batch)
    assert x_ref.shape == (len(source), h, 2)
    x, y = source.get_batch(np.arange(len(source)))
    np.testing.assert_array_equal(x, x_ref.astype(np.float32))  # positions / grid size, stored as float32
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=2e-7)  # displacement of float32 positions
    # in cell units the displacement is the world's velocity: speed 0.7 except on a border bounce
    speed = np.linalg.norm(y.astype(np.float64) * WORLD.grid_size, axis=1)
    assert np.mean(np.abs(speed - WORLD.speed) < 1e-4) > 0.8
    assert x.min() >= 0 and x.max() < 1


def test_loader_shapes_dtypes_and_bounds(tmp_path):
    paths = collect(WORLD, TINY, tmp_path, progress=False)
    source = open_dataset(paths, "train")
    assert isinstance(source.positions, np.memmap)  # served from disk, not loaded
    assert source.history == TINY.history
    indices = np.random.default_rng(0).integers(0, len(source), 64)
    x, y = source.get_batch(indices)
    assert x.shape == (64, TINY.history, 2) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (64, 2) and y.dtype == np.float32
    x_again, _ = source.get_batch(indices[::-1])
    np.testing.assert_array_equal(x_again, x[::-1])
    for bad in ([len(source)], [-1]):
        with pytest.raises(IndexError):
            source.get_batch(np.array(bad))
    # the same store serves another history length; a directory path works as well as the handle
    other = open_dataset(paths.root, "train", history=10)
    assert len(other) == TINY.train_episodes * WORLD.num_obstacles * (TINY.steps_per_episode - 10)
    x10, y10 = other.get_batch(np.arange(6))
    np.testing.assert_array_equal(x10, source.positions[0, :, :10].astype(np.float32))
    np.testing.assert_array_equal(y10, source.positions[0, :, 10] - source.positions[0, :, 9])
    with pytest.raises(UserError):
        open_dataset(paths, "test")


def test_windows_with_their_future_extend_the_one_step_samples(tmp_path):
    """future=K: sample (e, w, n) keeps the one-step sample's X, and Y[k] is the one-step Y of the window
    k steps later; only windows whose K-step future was observed exist (S − H − K + 1 per obstacle)."""
    paths = collect(WORLD, TINY, tmp_path, progress=False)
    one = open_dataset(paths, "train")
    k = 7
    multi = open_dataset(paths, "train", future=k)
    n, s, h = WORLD.num_obstacles, TINY.steps_per_episode, TINY.history
    assert multi.windows_per_episode == s - h - k + 1 and len(multi) == TINY.train_episodes * n * (s - h - k + 1)
    x, y = multi.get_batch(np.arange(len(multi)))
    assert x.shape == (len(multi), h, 2) and y.shape == (len(multi), k, 2) and y.dtype == np.float32
    episode, start, obstacle = multi.locate(np.arange(len(multi)))
    for step in range(k):  # the one-step sample of (episode, start + step, obstacle)
        twin = (episode * (s - h) + start + step) * n + obstacle
        x1, y1 = one.get_batch(twin)
        if step == 0:
            np.testing.assert_array_equal(x, x1)
        np.testing.assert_array_equal(y[:, step], y1)  # the same float32 subtraction: exact
    assert multi.get_batch(np.arange(3))[1].shape == (3, k, 2)
    with pytest.raises(UserError, match="future"):
        open_dataset(paths, "train", future=s - h + 1)


def test_load_or_collect_returns_both_splits(tmp_path):
    splits = load_or_collect(WORLD, TINY, tmp_path, progress=False)
    assert set(splits) == {"train", "val"}
    assert all(isinstance(s, TrajectoryWindows) for s in splits.values())
    no_val = load_or_collect(WORLD, tiny(val_episodes=0), tmp_path, progress=False)
    assert set(no_val) == {"train"}


def test_invalid_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="must exceed"):
        collect(WORLD, tiny(steps_per_episode=5), tmp_path, progress=False)
    with pytest.raises(UserError, match="no finished dataset"):
        open_dataset(tmp_path, "train")


def test_split_episodes_are_disjoint(tmp_path):
    paths = collect(WORLD, TINY, tmp_path, progress=False)
    manifest = json.loads(paths.manifest.read_text())
    ids = {}
    for split, info in manifest["splits"].items():
        ids[split] = set(seeding.episode_ids(split, np.arange(info["first_index"],
                                                              info["first_index"] + info["episodes"])).tolist())
    assert ids["train"].isdisjoint(ids["val"])
    train, val = np.load(paths.files["train"]), np.load(paths.files["val"])
    starts_train = {tuple(ep[:, 0].ravel()) for ep in train}
    assert not any(tuple(ep[:, 0].ravel()) in starts_train for ep in val)  # no val episode is a train episode


# ------------------------------------------------------------------------------------------------ cache


def test_finished_dataset_is_reused(tmp_path):
    first = collect(WORLD, TINY, tmp_path, progress=False)
    assert not first.reused and first.shards_generated == TRAIN_SHARDS + VAL_SHARDS
    assert not list((first.root / shards.SHARD_DIR).glob("*.npy"))  # shards removed after the merge
    stamp = first.files["train"].stat().st_mtime_ns
    again = collect(WORLD, tiny(workers=2, episodes_per_shard=8, history=3, keep_shards=True), tmp_path,
                    progress=False)  # operational fields and H do not change the stored arrays
    assert again.reused and again.root == first.root and not again.shards_generated
    assert again.files["train"].stat().st_mtime_ns == stamp
    assert again.history == 3


def test_config_change_makes_a_new_dataset(tmp_path):
    base = collect(WORLD, TINY, tmp_path, progress=False)
    changed = [
        (WORLD, tiny(train_episodes=20)),
        (WORLD, tiny(steps_per_episode=25)),
        (BounceGridConfig(speed=0.5), TINY),
        (BounceGridConfig(seed=1), TINY),
    ]
    roots = {base.root}
    for world, data in changed:
        paths = collect(world, data, tmp_path, progress=False)
        assert not paths.reused and paths.root not in roots
        roots.add(paths.root)
    assert dataset_key(WORLD, TINY) == dataset_key(WORLD, tiny(workers=2, episodes_per_shard=8, history=7))
    assert len(list((tmp_path / "data").iterdir())) == 5


def test_resume_after_kill_generates_only_missing_shards(tmp_path):
    reference = collect(WORLD, TINY, tmp_path / "reference", progress=False)
    root = tmp_path / "run"
    run_killed_collect(root, TINY, after=3)
    dataset = root / "data" / dataset_key(WORLD, TINY)
    assert not (dataset / shards.DONE).exists()  # a half-written stage never looks finished
    assert not (dataset / "train.npy").exists()
    present = sorted(p.stem for p in (dataset / shards.SHARD_DIR).glob("*.npy"))
    assert present == TRAIN_SHARDS[:3]
    (dataset / shards.SHARD_DIR / f".{TRAIN_SHARDS[3]}.npy.tmp-12345").write_bytes(b"half a shard")

    resumed = collect(WORLD, TINY, root, progress=False)
    assert resumed.shards_reused == TRAIN_SHARDS[:3]
    assert resumed.shards_generated == TRAIN_SHARDS[3:] + VAL_SHARDS
    assert (dataset / shards.DONE).exists()
    assert not list((dataset / shards.SHARD_DIR).iterdir())  # temp file of the killed run cleaned up
    assert merged_sha(resumed) == merged_sha(reference)


def test_resume_with_another_shard_size(tmp_path):
    reference = collect(WORLD, TINY, tmp_path / "reference", progress=False)
    run_killed_collect(tmp_path / "run", TINY, after=2)
    resumed = collect(WORLD, tiny(episodes_per_shard=8), tmp_path / "run", progress=False)
    assert resumed.shards_reused == [] and len(resumed.shards_generated) == 4
    assert merged_sha(resumed) == merged_sha(reference)


def test_corrupted_and_truncated_shards_are_regenerated(tmp_path, caplog):
    reference = collect(WORLD, TINY, tmp_path / "reference", progress=False)
    root = tmp_path / "run"
    run_killed_collect(root, TINY, after=4)
    shard_dir = root / "data" / dataset_key(WORLD, TINY) / shards.SHARD_DIR
    flipped, truncated = shard_dir / f"{TRAIN_SHARDS[1]}.npy", shard_dir / f"{TRAIN_SHARDS[2]}.npy"
    blob = bytearray(flipped.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, different content: only the checksum can tell
    flipped.write_bytes(bytes(blob))
    truncated.write_bytes(truncated.read_bytes()[:1000])

    with caplog.at_level(logging.WARNING, logger=DATA_LOGGER):
        resumed = collect(WORLD, TINY, root, progress=False)
    messages = warnings_of(caplog)
    assert any(TRAIN_SHARDS[1] in m and "sha256" in m for m in messages)
    assert any(TRAIN_SHARDS[2] in m and "truncated" in m for m in messages)
    assert resumed.shards_reused == [TRAIN_SHARDS[0], TRAIN_SHARDS[3]]
    assert resumed.shards_generated == [TRAIN_SHARDS[1], TRAIN_SHARDS[2]] + TRAIN_SHARDS[4:] + VAL_SHARDS
    assert merged_sha(resumed) == merged_sha(reference)


def test_corrupted_merged_file_is_detected_and_rebuilt(tmp_path, caplog):
    first = collect(WORLD, TINY, tmp_path, progress=False)
    good = merged_sha(first)
    with open(first.files["train"], "r+b") as fh:
        fh.seek(-7, 2)
        fh.write(b"\x00garble")
    with caplog.at_level(logging.WARNING, logger=DATA_LOGGER):
        again = collect(WORLD, TINY, tmp_path, progress=False)
    assert any("merged train" in m for m in warnings_of(caplog))
    assert not again.reused and again.shards_generated == TRAIN_SHARDS  # val was intact: not redone
    assert merged_sha(again) == good


# --------------------------------------------------------------------------------------------- backends


def test_serial_and_process_pool_give_identical_datasets(tmp_path):
    serial = collect(WORLD, TINY, tmp_path / "serial", backend=SerialBackend(), progress=False)
    pooled = collect(WORLD, TINY, tmp_path / "pool", backend=ProcessPoolBackend(2), progress=False)
    assert merged_sha(serial) == merged_sha(pooled)
    # and the sharding does not matter either: one big shard gives the same bytes
    single = collect(WORLD, tiny(episodes_per_shard=1000), tmp_path / "single", progress=False)
    assert merged_sha(single) == merged_sha(serial)


def test_reference_statistics_of_the_seed_data(tmp_path):
    """SPEC §3 reference losses: zero motion MSE 6.0e-4, constant velocity 4.8e-5, 8.6% bounce samples."""
    data = DataConfig(train_episodes=1_000, val_episodes=0, workers=1)
    source = collect(WORLD, data, tmp_path, progress=False).open("train")
    assert len(source) == 1_000 * 300
    x, y = (a.astype(np.float64) for a in source.get_batch(np.arange(len(source))))
    constant_velocity = x[:, -1] - x[:, -2]
    bounced = np.any(np.abs(y - constant_velocity) > 1e-6, axis=1)
    assert np.mean(y ** 2) == pytest.approx(6.0e-4, rel=0.03)
    assert np.mean((y - constant_velocity) ** 2) == pytest.approx(4.8e-5, rel=0.1)
    assert np.mean(bounced) == pytest.approx(0.086, abs=0.006)


def test_shard_changed_after_verification_is_caught_by_the_merge(tmp_path, caplog):
    reference = collect(WORLD, TINY, tmp_path / "reference", progress=False)
    root = tmp_path / "run"
    run_killed_collect(root, TINY, after=2)
    victim = root / "data" / dataset_key(WORLD, TINY) / shards.SHARD_DIR / f"{TRAIN_SHARDS[0]}.npy"

    class CorruptsFirstShardThenRuns(SerialBackend):
        """Damages an already verified shard while the missing ones are generated."""

        def map(self, fn, items):
            if victim.exists():
                blob = bytearray(victim.read_bytes())
                blob[-1] ^= 0x01
                victim.write_bytes(bytes(blob))
            yield from super().map(fn, items)

    with caplog.at_level(logging.WARNING, logger=DATA_LOGGER):
        resumed = collect(WORLD, TINY, root, backend=CorruptsFirstShardThenRuns(), progress=False)
    assert any(TRAIN_SHARDS[0] in m and "changed since it was verified" in m for m in warnings_of(caplog))
    assert TRAIN_SHARDS[0] in resumed.shards_generated and TRAIN_SHARDS[0] not in resumed.shards_reused
    assert merged_sha(resumed) == merged_sha(reference)
