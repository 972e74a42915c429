"""The Modal backend's logic, without modal: routing, per-stage resources, Volume sync, checkpoint commits.

`modal_app` only wires Modal functions into these pieces, so everything here runs (and is tested) on a
machine without modal or a token: tests inject local mappers where Modal would fan out over containers.

How the work is split:
- collection: containers simulate shards and *return* them; the orchestrator writes them into the cache
  (checksums compared). One writer per dataset directory, and no Volume reload while the dataset's lock
  file is open (Modal refuses to reload a Volume with open files).
- training: one GPU container per model, torchrun inside for several GPUs; it reloads the Volume to see the
  dataset, commits checkpoints every `cloud.checkpoint_commit_s`, and a retry resumes from the last one.
- evaluation: containers reload the Volume (to see the checkpoints) and return chunk results.
The orchestrator commits before it fans out (so workers see what it wrote) and reloads after training (so it
sees the checkpoint).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hrmlab.data import shards
from hrmlab.data.collect import make_shard
from hrmlab.errors import UserError
from hrmlab.evaluate.runner import evaluate_chunk
from hrmlab.experiments.grid.config import CloudConfig, HardwareConfig
from hrmlab.experiments.families import family_of
from hrmlab.backends.routed import RoutedBackend, function_ref
from hrmlab.experiments.grid.stages import RunOptions, TrainJob, run_train_job

VOLUME_NAME = "hrmlab-cache"
"""The Modal Volume holding the stage cache and run directories."""

log = logging.getLogger("hrmlab.cloud")

Mapper = Callable[[list, dict], Iterable]
"""(items, resources) → results in item order; on Modal `fn.with_options(**resources).map(items)`."""
TrainRemote = Callable[[TrainJob, dict, float], dict]
"""(job, resources, commit_every_s) → training summary; on Modal `train.with_options(**resources).remote(...)`."""


class VolumeSync:
    """Commit/reload of the cache Volume. Here a no-op (one shared disk); `modal_app` supplies the real one."""

    def commit(self) -> None:
        pass

    def reload(self) -> None:
        pass


LOCAL_SYNC = VolumeSync()


# ------------------------------------------------------------------------------------------ resources
def train_gpu(cfg) -> str | None:
    """Modal GPU string of the training container: `cloud.train_gpu`, else `gpu_type:gpus`; None = CPU."""
    cloud = getattr(cfg, "cloud", None) or CloudConfig()
    hardware = getattr(cfg, "hardware", None) or HardwareConfig()
    if cloud.train_gpu:
        return cloud.train_gpu
    if hardware.gpus > 0:
        return f"{hardware.gpu_type or 'any'}:{hardware.gpus}"
    return None


def gpu_count(gpu: str | None) -> int:
    """GPUs in a Modal GPU string: 'H100:8' → 8, 'A10G' → 1, None → 0."""
    if not gpu:
        return 0
    _, _, count = gpu.partition(":")
    return int(count) if count else 1


def resources_for(cfg) -> dict[str, dict]:
    """`with_options` arguments per stage, all from the preset's `cloud:` section (and `hardware:`)."""
    cloud = getattr(cfg, "cloud", None) or CloudConfig()
    return {
        "collect": {"cpu": cloud.collect_cpu, "memory": cloud.collect_memory_mb, "timeout": cloud.collect_timeout_s},
        "train": {"gpu": train_gpu(cfg), "memory": cloud.train_memory_mb, "timeout": cloud.train_timeout_s},
        "eval": {"cpu": cloud.eval_cpu, "gpu": cloud.eval_gpu or None, "timeout": cloud.eval_timeout_s},
    }


# ----------------------------------------------------------------------------------------- collection
def shard_payload(spec) -> tuple[dict, np.ndarray]:
    """Worker side: simulate the shard into a private folder and return (record, array), not a file on the Volume."""
    with tempfile.TemporaryDirectory(prefix="hrmlab-shard-") as tmp:
        local = dataclasses.replace(spec, path=str(Path(tmp) / Path(spec.path).name))
        record = make_shard(local)
        return record, np.load(local.path)


def store_shard(spec, payload: tuple[dict, np.ndarray]) -> dict:
    """Orchestrator side: write a returned shard where the collector expects it; the checksum must match."""
    record, array = payload
    path = Path(spec.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = shards.write_npy_atomic(path, array)
    if written["sha256"] != record["sha256"]:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"shard {record['name']} changed in transit "
                           f"(sha256 {written['sha256']} ≠ {record['sha256']})")
    return record


def collect_and_store(map_payloads: Mapper, specs: list, resources: dict) -> Iterable[dict]:
    """make_shard's route: fan out `shard_payload`, store each result here, yield the records in order."""
    for spec, payload in zip(specs, map_payloads(specs, resources), strict=True):
        yield store_shard(spec, payload)


def call_task(task: tuple[str, object], sync: VolumeSync = LOCAL_SYNC):
    """Generic worker: run `module:function` on one item between a Volume reload and commit."""
    ref, item = task
    module, _, name = ref.partition(":")
    fn = getattr(importlib.import_module(module), name)
    sync.reload()
    result = fn(item)
    sync.commit()
    return result


# -------------------------------------------------------------------------------------------- backend
def generic_fallback(map_task: Mapper, resources: dict, sync: VolumeSync) -> Callable[[Callable, list], Iterable]:
    """Route any other top-level function (e.g. diffusion expert generation) through a generic worker."""

    def run(fn: Callable, items: list) -> Iterable:
        ref = function_ref(fn)
        yield from map_task([(ref, item) for item in items], resources)
        sync.reload()  # see the files those workers wrote

    return run


# ------------------------------------------------------------------------------------------- training
def train_with_commits(job: TrainJob, commit_fn: Callable[[], None], every_s: float,
                       runner: Callable[[TrainJob], dict] = run_train_job) -> dict:
    """Train while a background thread commits the Volume every `every_s` seconds, and once at the end.

    A preempted or timed-out container loses at most `every_s` of checkpoints; its retry resumes from the
    last committed one (the trainer restarts from run_dir/last.pt)."""
    stop = threading.Event()

    def commit_periodically() -> None:
        while not stop.wait(every_s):
            try:
                commit_fn()
            except Exception:  # a failed commit must not kill training; the next one catches up
                log.warning("periodic Volume commit failed", exc_info=True)

    thread = threading.Thread(target=commit_periodically, name="checkpoint-commits", daemon=True)
    if every_s > 0:
        thread.start()
    try:
        return runner(job)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        commit_fn()


def remote_train_runner(train_remote: TrainRemote, resources: dict, commit_every_s: float,
                        sync: VolumeSync = LOCAL_SYNC) -> Callable[[TrainJob], dict]:
    """The pipeline's train_runner: each model trains in a container with the preset's GPUs (torchrun for >1)."""
    gpus = gpu_count(resources.get("gpu"))

    def run(job: TrainJob) -> dict:
        sync.commit()  # the training container reads the dataset this container wrote
        summary = train_remote(dataclasses.replace(job, gpus=gpus), resources, commit_every_s)
        sync.reload()  # and this container reads the checkpoint it wrote
        return summary

    return run


# ------------------------------------------------------------------------------------------- pipeline
def resolve_config(preset: str, overrides=(), smoke: bool = False):
    """Preset + overrides, shrunk by smoke: the same config `hrmlab run` resolves."""
    from hrmlab.presets import resolve

    return resolve(preset, overrides, smoke)


def run_dir_name(preset: str, smoke: bool = False) -> str:
    """The run directory's name, as `hrmlab run` names it locally."""
    return preset + ("-smoke" if smoke else "")


def run_pipeline_with(preset: str, overrides, smoke: bool, map_collect: Mapper, map_eval: Mapper,
                      train_remote: TrainRemote, cache_root, out=None, sync: VolumeSync = LOCAL_SYNC,
                      map_task: Mapper | None = None):
    """The whole pipeline with collection, training and evaluation sent through the given remote calls.

    out: run directory (default cache_root/runs/<preset>[-smoke], i.e. on the Volume next to the cache).
    Returns the family's run result (`evaluate.result.RunResult`)."""
    cfg = resolve_config(preset, overrides, smoke)
    resources = resources_for(cfg)
    cloud = getattr(cfg, "cloud", None) or CloudConfig()
    routes = {
        make_shard: lambda specs: collect_and_store(map_collect, specs, resources["collect"]),
        evaluate_chunk: lambda chunks: map_eval(chunks, resources["eval"]),
    }
    fallback = generic_fallback(map_task, resources["collect"], sync) if map_task is not None else None
    backend = RoutedBackend(routes, before_map=sync.commit, fallback=fallback)
    train_runner = remote_train_runner(train_remote, resources["train"], cloud.checkpoint_commit_s, sync)
    cache_root = Path(cache_root)
    out = Path(out) if out is not None else cache_root / "runs" / run_dir_name(preset, smoke)
    # allow_cpu: this orchestrator is a CPU container; the GPUs are in the training function
    opts = RunOptions(out=out, cache=cache_root, smoke=smoke, allow_cpu=True)
    log.info("modal: preset %s → %s (train on %s)", cfg.name, out, resources["train"]["gpu"] or "CPU")
    try:
        return _run_family(cfg, opts, backend, train_runner, map_task, resources["train"], sync)
    finally:
        sync.commit()  # results, report and stage markers persist even when a later stage failed


def _run_family(cfg, opts: RunOptions, backend: RoutedBackend, train_runner, map_task: Mapper | None,
                train_resources: dict, sync: VolumeSync):
    family = family_of(cfg)
    run_train_task = family.train_task()
    if run_train_task is None:  # the grid stages' TrainJob through the GPU training function
        return family.run(cfg, opts, backend=backend, train_runner=train_runner)

    if map_task is None:
        raise UserError(f"preset {cfg.name} ({family.name} family) trains through the app's generic task "
                        "function (modal_app.run_task), which this orchestrator was not given")

    def train_task_remote(task) -> str:
        """The denoiser trains in its own container with cloud.train_gpu; the planner lands on the Volume."""
        sync.commit()  # the training container reads the expert shards this container wrote
        (planner,) = map_task([(function_ref(run_train_task), task)], train_resources)
        sync.reload()  # and this container reads the planner it wrote
        return planner

    return family.run(cfg, opts, backend=backend, train_runner=train_task_remote)


# ------------------------------------------------------------------------------------------- the study
def study_world_with(world: str, study, overrides, smoke: bool, map_collect: Mapper, map_eval: Mapper,
                     map_train: Mapper, cache_root, sync: VolumeSync = LOCAL_SYNC, map_task: Mapper | None = None,
                     retries: int = 1) -> tuple[dict, dict]:
    """One world of `hrmlab study` with its shards, training runs and evaluation chunks sent out; returns the
    world's (record, per-episode outcomes) to the caller, who writes the documents.

    map_train must be settled (an input's exception comes back in its place): every run ends, the failed ones are
    resubmitted `retries` times together, and what still fails is one RunsFailed once the rest has finished.
    Each run commits its checkpoints to the Volume while it trains and its summary under its stage key when it
    ends, so a rerun (or a second machine) skips finished runs and resumes interrupted ones."""
    from hrmlab.backends.retry import map_settled
    from hrmlab.experiments.study.config import arm_configs
    from hrmlab.experiments.study.run import study_world
    from hrmlab.experiments.study.train_runs import train_run

    cfg = next(iter(arm_configs(world, study, overrides, smoke).values()))
    resources = resources_for(cfg)

    def train_runs(runs: list) -> list:
        done = map_settled(lambda batch: map_train(batch, resources["train"]), runs, retries, "modal",
                           "training runs", lambda run: run.describe())
        sync.reload()  # see the checkpoints the training containers committed
        return done

    routes = {
        make_shard: lambda specs: collect_and_store(map_collect, specs, resources["collect"]),
        evaluate_chunk: lambda chunks: map_eval(chunks, resources["eval"]),
        train_run: train_runs,
    }
    fallback = generic_fallback(map_task, resources["collect"], sync) if map_task is not None else None
    backend = RoutedBackend(routes, before_map=sync.commit, fallback=fallback)
    cache_root = Path(cache_root)
    opts = RunOptions(out=cache_root / "runs" / f"study-{world}" / ("smoke" if smoke else "full"), cache=cache_root,
                      smoke=smoke, allow_cpu=True, progress=False)
    log.info("modal: study world %s (train on %s)", world, resources["train"]["gpu"] or "CPU")
    try:
        record, episodes = study_world(world, study, opts, overrides, smoke, backend)
    finally:
        sync.commit()  # finished runs and evaluations persist even when a later stage failed
    record["backend"] = f"modal: training in {resources['train']['gpu'] or 'CPU'} containers"
    return record, episodes


def fetch_command(preset: str, smoke: bool = False, out: str | Path | None = None) -> str:
    name = run_dir_name(preset, smoke)
    return f"modal volume get {VOLUME_NAME} runs/{name} {out or Path('runs') / name}"


def run_in_app(run_pipeline, preset: str, overrides=(), smoke: bool = False, out: str | Path | None = None) -> int:
    """With the app running (`app.run()` or `modal run`): the pipeline in its orchestrator, then a summary.

    run_pipeline: the app's orchestrator function (passed in: this module never imports modal)."""
    from hrmlab.experiments.families import family_of

    try:
        cfg = resolve_config(preset, overrides, smoke)
    except UserError as exc:
        print(f"hrmlab: error: {exc}")
        return 2
    results = run_pipeline.remote(preset, list(overrides), smoke)
    family_of(cfg).print_summary(results, cfg)
    print(f"\nresults are on the Volume {VOLUME_NAME}; fetch them with:\n  {fetch_command(preset, smoke, out)}")
    return 0
