"""The Slurm backend: each `map` is one array job submitted through submitit (the optional extra `hrmlab[slurm]`).

The calling process (on a login node, or itself inside a job) orchestrates; the array tasks run the same
top-level functions the local pool runs, on the cluster's nodes, against the same stage cache on a shared
filesystem, so a finished run is never redone by a rerun or by a second machine. A task that fails (a node
lost, a time limit) is resubmitted with the other failed tasks of its map; what fails on every attempt is
reported together once every task has ended (`backends/retry.py`).

`cluster="local"` runs the array tasks as local processes through submitit's local executor: the same
pickling, job files and result collection as on a cluster (what the tests use), without one.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

from hrmlab.backends.retry import map_settled
from hrmlab.errors import UserError

log = logging.getLogger("hrmlab.backends")

CLUSTERS = ("slurm", "local")
DEFAULT_PARAMETERS = {"timeout_min": 24 * 60, "cpus_per_task": 1, "nodes": 1, "tasks_per_node": 1}
"""Per array task: one process, one CPU thread (as a pool worker; the study's runs are cache-keyed with one
thread), a day at most. A GPU is asked for with `gpus_per_node=1`; everything is overridable."""


def require_submitit():
    """The submitit module, or a one-line UserError naming the install command."""
    try:
        import submitit
    except ImportError:
        raise UserError("the Slurm backend needs the submitit package; install it with pip install "
                        "'hrmlab[slurm]'") from None
    return submitit


def parse_options(pairs: Iterable[str]) -> dict:
    """`KEY=VALUE` strings → submitit parameters (ints where they parse, else strings)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm-option takes KEY=VALUE (a submitit/Slurm parameter), got {pair!r}")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


def describe(item) -> str:
    """How a failed input is named in the error: the item's own `describe()` where it has one."""
    text = item.describe() if hasattr(item, "describe") else repr(item)
    return text if len(text) <= 80 else text[:77] + "..."


def run_in_task(fn: Callable, item):
    """One array task: the process set up as a pool worker (one thread, passive waits), then `fn(item)`."""
    from hrmlab.backends.local import _init_worker

    _init_worker()
    return fn(item)


class SlurmBackend:
    """`map(fn, items)` = one array job of len(items) tasks; results in item order once every task has ended."""

    name = "slurm"

    def __init__(self, folder: Path, cluster: str = "slurm", parameters: dict | None = None, retries: int = 1):
        if cluster not in CLUSTERS:
            raise UserError(f"unknown Slurm cluster {cluster!r}; valid choices: {', '.join(CLUSTERS)}")
        if retries < 0:
            raise UserError(f"--retries must be >= 0, got {retries}")
        self.submitit = require_submitit()
        self.folder, self.cluster, self.retries = Path(folder), cluster, retries
        self.parameters = {**DEFAULT_PARAMETERS, **(parameters or {})}
        self.workers = int(self.parameters.get("slurm_array_parallelism") or os.cpu_count() or 1)
        self._executor()  # unknown parameters fail here, before anything is submitted

    def _executor(self):
        executor = self.submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        try:
            executor.update_parameters(**self.parameters)
        except (ValueError, TypeError, NameError) as exc:  # submitit: NameError for an unknown name
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--slurm-option: {first}") from None
        return executor

    def label(self) -> str:
        gpus = self.parameters.get("gpus_per_node")
        parts = ["slurm array jobs", *(["submitit's local executor"] if self.cluster == "local" else []),
                 *([f"partition {self.parameters['slurm_partition']}"] if self.parameters.get("slurm_partition") else []),
                 f"{f'{gpus} GPU' if gpus else 'CPU'} per task"]
        return ", ".join(parts)

    def map(self, fn: Callable, items: Iterable) -> list:
        items = list(items)
        if not items:
            return []
        task = functools.partial(run_in_task, fn)

        def one_array(batch: list) -> list:
            jobs = self._executor().map_array(task, batch)
            log.info("slurm: array job %s, %d × %s", jobs[0].job_id.split("_")[0], len(jobs), fn.__qualname__)
            out = []
            for job in jobs:
                try:
                    out.append(job.result())
                except Exception as exc:  # noqa: BLE001 - settled: map_settled resubmits or reports it
                    out.append(exc)
            return out

        return map_settled(one_array, items, self.retries, "slurm", f"{fn.__qualname__} tasks", describe)
