"""The Modal app: the only module of hrmlab that imports modal.

    modal run -m hrmlab.cloud.modal_app --preset hrm-cloud-8gpu [--smoke] [--set 'train_hrm.epochs=5 eval.episodes=200']

Each function body is one call into the core (`hrmlab.cloud.orchestrate` and the stages it wraps), plus a
Volume reload/commit where another container's files must be seen. Sizes come from the preset's `cloud:`
section through `with_options`; the decorators carry only neutral defaults. The Volume `hrmlab-cache`,
mounted at /cache, holds the same config-hash-keyed cache as the local backend, so finished stages are
skipped and an interrupted training resumes from its last committed checkpoint.

Under `.local()` (tests, debugging) functions run in this process against the local cache
($HRMLAB_CACHE or .hrmlab_cache) and the Volume calls are skipped.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import modal

from hrmlab.backends.retry import settle_each
from hrmlab.cloud import orchestrate
from hrmlab.evaluate import runner as eval_runner
from hrmlab.stage_cache import default_cache
from hrmlab.threads import PROCESS_DEFAULTS

APP_NAME = "hrmlab"
VOLUME_NAME = orchestrate.VOLUME_NAME
CACHE_DIR = "/cache"
PYTHON_VERSION = "3.11"
TORCH_VERSION = "2.13.0"
"""CUDA build of torch in the image; keep in step with the torch the project is tested with."""
TORCH_INDEX_URL = "https://download.pytorch.org/whl/cu128"
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"
"""The project's own pyproject (read only where the image is built, i.e. on the launching machine)."""
DAY_S = 24 * 3600  # Modal's longest function timeout
SOURCE_SUFFIXES = {".py", ".yaml"}


def is_shipped_source(relative: Path) -> bool:
    """Files of the hrmlab package that go into containers: Python and the preset YAMLs, no caches."""
    hidden = any(part.startswith(".") or part == "__pycache__" for part in relative.parts)
    return relative.suffix in SOURCE_SUFFIXES and not hidden


image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install(f"torch=={TORCH_VERSION}", index_url=TORCH_INDEX_URL)
    .pip_install_from_pyproject(str(PYPROJECT))  # torch>=… is already met by the CUDA build above
    # torchrun's worker processes import hrmlab from where the source is added; OpenMP waits passively
    # in every container process, as it does locally (hrmlab/threads.py)
    .env({"PYTHONPATH": "/root", **PROCESS_DEFAULTS})
    .add_local_python_source("hrmlab", ignore=lambda path: not is_shipped_source(Path(path)))
)
cache_volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
VOLUMES = {CACHE_DIR: cache_volume}
app = modal.App(APP_NAME, image=image, include_source=False)  # the image adds the package itself

if not modal.is_local():  # inside a container: stage logs go to the Modal log stream
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


class CacheVolumeSync(orchestrate.VolumeSync):
    """Commit/reload the cache Volume inside a Modal container; nothing to do when run here with .local()."""

    def commit(self) -> None:
        if not modal.is_local():
            cache_volume.commit()

    def reload(self) -> None:
        if not modal.is_local():
            cache_volume.reload()


volume_sync = CacheVolumeSync()


def cache_root() -> Path:
    return Path(CACHE_DIR) if not modal.is_local() else default_cache()


# --------------------------------------------------------------------------------------- the functions
@app.function(timeout=3600, retries=2)
def collect_shard(spec):
    """One data shard, returned to the orchestrator (which stores it), so this container needs no Volume."""
    return orchestrate.shard_payload(spec)


@app.function(volumes=VOLUMES, timeout=3600, retries=2)
def evaluate_chunk(spec):
    """Closed-loop episodes of one chunk; reloads first to see checkpoints trained since the container started."""
    volume_sync.reload()
    return eval_runner.evaluate_chunk(spec)


@app.function(volumes=VOLUMES, timeout=DAY_S, retries=modal.Retries(max_retries=3, initial_delay=10.0))
def train(job, commit_every_s: float = 300.0):
    """One model's training (torchrun inside for several GPUs); commits checkpoints so a retry resumes."""
    volume_sync.reload()
    return orchestrate.train_with_commits(job, volume_sync.commit, commit_every_s)


@app.function(volumes=VOLUMES, timeout=3600, retries=2)
def run_task(task):
    """Any other top-level core function the pipeline sends out (diffusion expert shards; the denoiser's
    training, with the preset's cloud.train_gpu)."""
    return orchestrate.call_task(task, volume_sync)


@app.function(volumes=VOLUMES, timeout=DAY_S, retries=modal.Retries(max_retries=2, initial_delay=10.0))
def train_study_run(run):
    """One training run of `hrmlab study` (one arm, rate and seed); commits checkpoints every
    `cloud.checkpoint_commit_s` while it trains, so a retry or a rerun resumes it."""
    from hrmlab.experiments.study.train_runs import train_run

    volume_sync.reload()
    every = run.cfg.cloud.checkpoint_commit_s
    return orchestrate.train_with_commits(run, volume_sync.commit, every, runner=train_run)


def fan_out(function: modal.Function, settled: bool = False) -> orchestrate.Mapper:
    """(items, resources) → results in order: containers sized by the preset on Modal, this process under .local().
    settled: an input's exception (after the function's own retries) comes back in its place instead of raising."""

    def mapper(items, resources):
        if modal.is_local():
            return settle_each(function.local, items) if settled else map(function.local, items)
        sized = function.with_options(**resources)
        if settled:
            return sized.map(items, return_exceptions=True, wrap_returned_exceptions=False)
        return sized.map(items)

    return mapper


def train_remote(job, resources: dict, commit_every_s: float):
    if modal.is_local():
        return train.local(job, commit_every_s)
    return train.with_options(**resources).remote(job, commit_every_s)


@app.function(volumes=VOLUMES, cpu=2.0, memory=8192, timeout=DAY_S, nonpreemptible=True)
def run_pipeline(preset: str, overrides: list[str], smoke: bool = False):
    """The orchestrator: the local pipeline, each stage's work sent to the functions above. A CPU container
    that mostly waits; non-preemptible so a restart never re-submits a long training."""
    return orchestrate.run_pipeline_with(preset, overrides, smoke, map_collect=fan_out(collect_shard),
                                         map_eval=fan_out(evaluate_chunk), train_remote=train_remote,
                                         cache_root=cache_root(), sync=volume_sync, map_task=fan_out(run_task))


@app.function(volumes=VOLUMES, cpu=2.0, memory=8192, timeout=DAY_S, nonpreemptible=True)
def run_study_world(world: str, study, overrides: list[str], smoke: bool = False, retries: int = 1):
    """One world of `hrmlab study --backend modal`: the study's orchestrator for that world, its training runs
    fanned out to `train_study_run`; returns (record, per-episode outcomes) to the caller's machine."""
    return orchestrate.study_world_with(world, study, overrides, smoke, map_collect=fan_out(collect_shard),
                                        map_eval=fan_out(evaluate_chunk), map_train=fan_out(train_study_run, True),
                                        cache_root=cache_root(), sync=volume_sync, map_task=fan_out(run_task),
                                        retries=retries)


@app.local_entrypoint()
def main(preset: str = "quick", smoke: bool = False, set: str = ""):
    """modal run -m hrmlab.cloud.modal_app --preset PRESET [--smoke] [--set 'key=value key=value']"""
    code = orchestrate.run_in_app(run_pipeline, preset, shlex.split(set), smoke)
    if code:
        raise SystemExit(code)
