"""Collect forecasting data: simulate BounceGrid episodes in parallel shards, then merge (SPEC §3, §10).

What is stored is the trajectory of every obstacle, not the (X, Y) windows: the windows overlap H-fold,
so cutting them at load time (`dataset.py`) keeps the store 15× smaller (≈200 MB instead of ≈3 GB for
60,000 episodes) and lets one store serve any history length H < S.

`collect(world, data, cache_root, backend)` is the stage entry point. Its output lives under
`cache_root/data/<key>/`, where `key` hashes exactly the settings that change the stored arrays
(world config, episode counts, steps, reset batch, store format). A finished dataset is reused after its
checksums pass; a killed run resumes with the missing shards only; a corrupted shard or merged file is
regenerated with a warning. Shards are produced by `make_shard`, a picklable top-level function, through
`backend.map`, so the serial backend, the spawn pool and a Modal `.map` all run the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hrmlab.fileio import write_json_atomic
from hrmlab.backends.local import make_backend
from hrmlab.config import config_hash, to_dict
from hrmlab.data import shards
from hrmlab.data.dataset import open_dataset
from hrmlab.errors import UserError
from hrmlab.worlds import OBSERVED_HISTORY, bounce_grid
from hrmlab.worlds.bounce_grid import BounceGridConfig

log = logging.getLogger(__name__)

STORE_FORMAT = 1
"""Version of the on-disk layout; part of the key, so a layout change can never reuse an old store."""
SPLITS = ("train", "val")


@dataclass
class DataConfig:
    """Forecasting data settings. Defaults are the full-scale presets' (60,000 training episodes)."""

    train_episodes: int = 60_000
    """Episodes drawn from the train split (indices 0 … train_episodes-1)."""
    val_episodes: int = 3_000
    """Episodes drawn from the validation split (indices 0 … val_episodes-1); 0 disables validation."""
    steps_per_episode: int = 70
    """S: physics steps after each reset (v1: 60). An episode yields N × (S − H) samples."""
    history: int = OBSERVED_HISTORY
    """H: positions per input window (v2: 10). Applied when windows are cut, so it does not key the store."""
    reset_batch: int = 1_024
    """Episodes reset and stepped together as one numpy batch, aligned to multiples of this index, so an
    episode's content never depends on how the work was split into shards or workers."""
    episodes_per_shard: int = 5_120
    """Episodes per shard file: the unit of parallel work and of resumption (rounded up to a multiple
    of reset_batch). Operational: does not change the data."""
    workers: int | None = None
    """Worker processes when no backend is given: 1 = serial, None = one per core. Operational."""
    keep_shards: bool = False
    """Keep shard files after the merge (faster recovery from a corrupted merged file, 2× disk). Operational."""

    def validate(self) -> None:
        if self.train_episodes < 1:
            raise UserError(f"data.train_episodes must be ≥ 1, got {self.train_episodes}")
        if self.val_episodes < 0:
            raise UserError(f"data.val_episodes must be ≥ 0, got {self.val_episodes}")
        if self.history < 1:
            raise UserError(f"data.history must be ≥ 1, got {self.history}")
        if self.steps_per_episode <= self.history:
            raise UserError(f"data.steps_per_episode ({self.steps_per_episode}) must exceed data.history "
                            f"({self.history}): an episode yields N × (S − H) samples")
        if self.reset_batch < 1 or self.episodes_per_shard < 1:
            raise UserError("data.reset_batch and data.episodes_per_shard must be ≥ 1")

    def episodes(self, split: str) -> int:
        return {"train": self.train_episodes, "val": self.val_episodes}[split]


def store_config(world: BounceGridConfig, data: DataConfig) -> dict:
    """Exactly the settings that determine the stored arrays (what the dataset key hashes)."""
    return {
        "format": STORE_FORMAT,
        "world": to_dict(world),
        "data": {"train_episodes": data.train_episodes, "val_episodes": data.val_episodes,
                 "steps_per_episode": data.steps_per_episode, "reset_batch": data.reset_batch},
    }


def dataset_key(world: BounceGridConfig, data: DataConfig) -> str:
    return config_hash(store_config(world, data))


# --------------------------------------------------------------------------------------------------
# generation (runs in workers)


def simulate_positions(world: BounceGridConfig, split: str, first_index: int, episodes: int, steps: int,
                       reset_batch: int) -> np.ndarray:
    """Normalised obstacle positions of episodes first_index … first_index+episodes-1 of `split`.

    Returns float32 (episodes, N, steps, 2): entry t is the position after t physics steps divided by the
    grid size, t = 0 (the reset position) … steps-1. The position after the last physics step is never part
    of a sample (see dataset.py), so it is not stored. Episodes are reset in batches aligned to multiples
    of `reset_batch` and all obstacles of a batch are stepped together with numpy.
    """
    n = world.num_obstacles
    out = np.empty((episodes, n, steps, 2), dtype=np.float32)
    end = first_index + episodes
    start = first_index
    while start < end:
        stop = min(end, (start // reset_batch + 1) * reset_batch)
        state = bounce_grid.reset_split(world, split, np.arange(start, stop))
        block = out[start - first_index:stop - first_index]
        block[:, :, 0] = state.pos / world.position_scale
        for t in range(1, steps):
            bounce_grid.step(world, state)
            block[:, :, t] = state.pos / world.position_scale
        start = stop
    return out


@dataclass(frozen=True)
class ShardSpec:
    """One unit of parallel work: episodes [first_index, first_index + episodes) of `split`."""

    world: BounceGridConfig
    split: str
    first_index: int
    episodes: int
    steps: int
    reset_batch: int
    path: str
    """Final file name; the worker writes it atomically."""

    @property
    def name(self) -> str:
        return Path(self.path).stem


def make_shard(spec: ShardSpec) -> dict:
    """Simulate one shard and write it atomically; returns its manifest record. Top level: picklable."""
    started = time.perf_counter()
    positions = simulate_positions(spec.world, spec.split, spec.first_index, spec.episodes, spec.steps,
                                   spec.reset_batch)
    written = shards.write_npy_atomic(Path(spec.path), positions)
    return {"name": spec.name, "split": spec.split, "first_index": spec.first_index, "episodes": spec.episodes,
            "shape": list(positions.shape), **written, "seconds": round(time.perf_counter() - started, 3)}


def plan_shards(world: BounceGridConfig, data: DataConfig, root: Path, split: str) -> list[ShardSpec]:
    """Shards of one split, each a whole number of reset batches (the last one may be shorter)."""
    total = data.episodes(split)
    per_shard = -(-data.episodes_per_shard // data.reset_batch) * data.reset_batch
    specs = []
    for first in range(0, total, per_shard):
        count = min(per_shard, total - first)
        name = f"{split}_{first:09d}_{first + count:09d}.npy"
        specs.append(ShardSpec(world, split, first, count, data.steps_per_episode, data.reset_batch,
                               str(root / shards.SHARD_DIR / name)))
    return specs


# --------------------------------------------------------------------------------------------------
# the stage


@dataclass
class DatasetPaths:
    """Handle on a finished dataset: where it is and what this call had to do to produce it."""

    root: Path
    key: str
    history: int
    files: dict[str, Path]
    """Merged positions file per split ('train', and 'val' when val_episodes > 0)."""
    reused: bool = False
    """True when the finished dataset was found and verified; nothing was generated."""
    shards_generated: list[str] = field(default_factory=list)
    shards_reused: list[str] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.root / shards.MANIFEST

    def open(self, split: str = "train"):
        """The split as a SampleSource (memory-mapped)."""
        return open_dataset(self, split)


def collect(world: BounceGridConfig, data: DataConfig, cache_root: str | Path, backend=None,
            progress: bool = True) -> DatasetPaths:
    """Make sure the dataset for (world, data) exists under `cache_root/data/<key>/`; return its paths.

    backend: anything with `map(fn, items)` yielding results in order; default `make_backend(data.workers)`.
    """
    data.validate()
    key = dataset_key(world, data)
    root = Path(cache_root) / "data" / key
    backend = backend if backend is not None else make_backend(data.workers)
    with shards.directory_lock(root):
        return _collect_locked(world, data, root, key, backend, progress)


def _new_manifest(world: BounceGridConfig, data: DataConfig, key: str) -> dict:
    n, s, h = world.num_obstacles, data.steps_per_episode, data.history
    return {
        "format": STORE_FORMAT,
        "key": key,
        "config": store_config(world, data),
        "data_config": to_dict(data),
        "layout": (f"<split>.npy: float32 (episodes, {n}, {s}, 2); [e, n, t] = (row, col) of obstacle n "
                   f"after t physics steps of episode e, divided by {world.position_scale} (world.coordinates); t = 0 is the reset"),
        "splits": {
            split: {"first_index": 0, "episodes": data.episodes(split),
                    "samples": data.episodes(split) * n * (s - h), "history": h}
            for split in SPLITS if data.episodes(split) > 0
        },
        "shards": {},
        "merged": {},
    }


def _collect_locked(world, data, root: Path, key: str, backend, progress: bool) -> DatasetPaths:
    shards.remove_stale_temp_files(root)
    splits = [s for s in SPLITS if data.episodes(s) > 0]
    files = {split: root / f"{split}.npy" for split in splits}
    done_marker = root / shards.DONE
    paths = DatasetPaths(root, key, data.history, files)

    manifest = shards.read_manifest(root)
    if manifest is None or manifest.get("key") != key or manifest.get("format") != STORE_FORMAT:
        done_marker.unlink(missing_ok=True)
        manifest = _new_manifest(world, data, key)

    merged_ok = {}
    for split in splits:
        ok, reason = shards.file_matches(files[split], manifest["merged"].get(split))
        merged_ok[split] = ok
        if not ok and split in manifest["merged"]:
            log.warning("dataset %s: merged %s file %s failed verification (%s); rebuilding it",
                        key, split, files[split], reason)
            del manifest["merged"][split]
    if done_marker.exists():
        if all(merged_ok.values()):
            log.info("dataset %s: reusing finished dataset at %s", key, root)
            paths.reused = True
            return paths
        done_marker.unlink()

    plans = {split: plan_shards(world, data, root, split) for split in splits if not merged_ok[split]}
    all_plans = dict(plans)
    (root / shards.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    _drop_foreign_shards(root, manifest, plans)
    write_json_atomic(root / shards.MANIFEST, manifest)

    for attempt in range(3):
        todo = []
        for specs in plans.values():
            for spec in specs:
                record = manifest["shards"].get(spec.name)
                ok, reason = shards.file_matches(Path(spec.path), record)
                if ok and record["episodes"] == spec.episodes:
                    if spec.name not in paths.shards_reused:
                        paths.shards_reused.append(spec.name)
                    continue
                if record is not None and Path(spec.path).exists():
                    log.warning("dataset %s: shard %s failed verification (%s); regenerating it",
                                key, spec.name, reason)
                elif Path(spec.path).exists():  # killed between its rename and the manifest update
                    log.info("dataset %s: shard %s has no recorded checksum; regenerating it", key, spec.name)
                manifest["shards"].pop(spec.name, None)
                todo.append(spec)
        if todo:
            _generate(todo, manifest, root, key, backend, progress)
            paths.shards_generated.extend(spec.name for spec in todo)
        try:
            for split, specs in plans.items():
                _merge_split(split, specs, manifest, files[split], world, data, progress)
                write_json_atomic(root / shards.MANIFEST, manifest)
            break
        except shards.ShardCorrupted as exc:
            log.warning("dataset %s: %s; regenerating it", key, exc)
            manifest["shards"].pop(exc.name, None)
            (root / shards.SHARD_DIR / f"{exc.name}.npy").unlink(missing_ok=True)
            paths.shards_reused = [name for name in paths.shards_reused if name != exc.name]
            plans = {split: specs for split, specs in plans.items() if split not in manifest["merged"]}
    else:
        raise RuntimeError(f"dataset {key}: shards keep changing on disk under {root}; is another process writing there?")

    if not data.keep_shards:
        for specs in all_plans.values():
            for spec in specs:
                Path(spec.path).unlink(missing_ok=True)
    write_json_atomic(done_marker, {"key": key})  # last: only now does the dataset look finished
    log.info("dataset %s: finished at %s (%d shards generated, %d reused)", key, root,
             len(paths.shards_generated), len(paths.shards_reused))
    return paths


def _drop_foreign_shards(root: Path, manifest: dict, plans: dict[str, list[ShardSpec]]) -> None:
    """Forget shards of another sharding plan (episodes_per_shard changed): their ranges would not tile."""
    planned = {spec.name for specs in plans.values() for spec in specs}
    for path in (root / shards.SHARD_DIR).glob("*.npy"):
        split = path.stem.split("_", 1)[0]
        if path.stem not in planned and split in plans:
            path.unlink()
    for name in list(manifest["shards"]):
        if name not in planned and manifest["shards"][name]["split"] in plans:
            del manifest["shards"][name]


def _generate(todo: list[ShardSpec], manifest: dict, root: Path, key: str, backend, progress: bool) -> None:
    episodes = sum(spec.episodes for spec in todo)
    log.info("dataset %s: generating %d shards (%d episodes) on %s", key, len(todo), episodes,
             getattr(backend, "name", type(backend).__name__))
    with tqdm(total=episodes, unit="ep", desc="collect", disable=not progress) as bar:
        for record in backend.map(make_shard, todo):
            manifest["shards"][record["name"]] = record
            write_json_atomic(root / shards.MANIFEST, manifest)  # a kill after this keeps the shard
            bar.update(record["episodes"])


def _merge_split(split: str, specs: list[ShardSpec], manifest: dict, out: Path, world: BounceGridConfig,
                 data: DataConfig, progress: bool) -> None:
    shape = (data.episodes(split), world.num_obstacles, data.steps_per_episode, 2)
    parts = [(Path(spec.path), manifest["shards"][spec.name]) for spec in specs]
    record = shards.merge_shards(parts, out, shape, np.float32, progress=progress, desc=f"merge {split}")
    manifest["merged"][split] = {"file": out.name, "shape": list(shape), **record}


def load_or_collect(world, data, cache_root, backend=None, progress: bool = True,
                    mmap: bool = True) -> dict:
    """Collect (or reuse) the dataset for (world, data) and open every split: {'train': ..., 'val': ...}."""
    paths = collect(world, data, cache_root, backend=backend, progress=progress)
    return {split: open_dataset(paths, split, mmap=mmap) for split in paths.files}
