"""Local backends: serial (debugging, tests) and a spawn-based process pool (data, experts, evaluation)."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Callable, Iterable, Iterator


def _init_worker() -> None:
    """One thread per worker: the pool provides the parallelism. Torch reads these variables when it
    is first imported, so a worker that never needs torch does not pay ~3 s and 250 MB to load it."""
    from hrmlab.threads import configure_process

    configure_process()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _indexed(task: tuple) -> tuple:
    """(index, fn(item)) for a (index, fn, item) task: what `map_unordered` sends to a worker."""
    i, fn, item = task
    return i, fn(item)


class SerialBackend:
    """Runs every item in this process, in order."""

    name = "serial"
    workers = 1

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        for item in items:
            yield fn(item)

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        """(index, result) as each finishes: in order, here."""
        yield from enumerate(self.map(fn, items))


class ProcessPoolBackend:
    """Runs items on `workers` spawned processes; results come back in item order as they finish."""

    name = "process"

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        yield from self._pooled(fn, list(items), ordered=True)

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        """(index, result) as each finishes, whatever the order (a short item is not held behind a long one)."""
        yield from self._pooled(fn, list(items), ordered=False)

    def _pooled(self, fn: Callable, items: list, ordered: bool) -> Iterator:
        """One pool for either map: results in item order, or (index, result) pairs as each finishes."""
        if self.workers == 1 or len(items) <= 1:
            serial = SerialBackend()
            yield from serial.map(fn, items) if ordered else serial.map_unordered(fn, items)
            return
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(self.workers, len(items)), initializer=_init_worker) as pool:
            if ordered:
                yield from pool.imap(fn, items)
            else:
                yield from pool.imap_unordered(_indexed, [(i, fn, item) for i, item in enumerate(items)])


def make_backend(workers: int | None) -> SerialBackend | ProcessPoolBackend:
    """workers=1 → serial; None → one process per core; n → n processes."""
    if workers == 1:
        return SerialBackend()
    return ProcessPoolBackend(workers)
