"""Remote maps that keep going when an input fails: resubmit the failed inputs, then report every failure at once.

On a remote engine (Modal containers, Slurm array jobs) one input can fail for reasons that have nothing to do
with the work (a preempted node, a lost container). Raising at the first failure would abandon the inputs still
running; instead every input runs to the end, the failed ones are resubmitted up to `retries` times, and what
still fails is one `RunsFailed` naming each input — the finished ones are already in the stage cache, so a
rerun does only the failed work.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from hrmlab.errors import UserError

log = logging.getLogger("hrmlab.backends")

SettledMapper = Callable[[list], Iterable]
"""items → one entry per item in order: its result, or the exception it ended with (never raised)."""


class RunsFailed(UserError):
    """Some inputs of a remote map failed on every attempt; the others finished (and are cached)."""

    def __init__(self, engine: str, what: str, failures: list[tuple[str, BaseException]], attempts: int):
        self.failures = failures
        shown = "; ".join(f"{name}: {reason(exc)}" for name, exc in failures[:3])
        more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        super().__init__(f"{engine}: {len(failures)} {what} failed after {attempts} attempt"
                         f"{'s' if attempts > 1 else ''} ({shown}{more}); the others finished and are cached — "
                         "rerun the same command to resume")


def reason(exc: BaseException) -> str:
    """One line for a failure: the innermost exception line of a remote traceback carried as text (a Slurm
    task's), else the exception's type and first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if "Traceback (most recent call last):" in lines:
        inner = lines[lines.index("Traceback (most recent call last):") + 1:]
        inner = inner[:next((i for i, line in enumerate(inner) if line.startswith("---")), len(inner))]
        last = [line for line in inner if not line.startswith(("File ", "^")) and ":" in line]
        if last:
            return last[-1]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def map_settled(mapper: SettledMapper, items: list, retries: int, engine: str, what: str = "inputs",
                describe: Callable[[object], str] = repr) -> list:
    """Results of `mapper` over `items` in order, each failed input resubmitted up to `retries` times (all the
    failures of one round together); raises RunsFailed naming what failed on every attempt."""
    items = list(items)
    results = list(mapper(items))
    if len(results) != len(items):
        raise RuntimeError(f"{engine}: {len(results)} results for {len(items)} inputs")
    for attempt in range(1, retries + 1):
        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        if not failed:
            break
        log.warning("%s: %d of %d %s failed (%s); resubmitting them (retry %d of %d)", engine, len(failed),
                    len(items), what, describe(items[failed[0]]), attempt, retries)
        for i, result in zip(failed, mapper([items[i] for i in failed]), strict=True):
            results[i] = result
    failures = [(describe(item), r) for item, r in zip(items, results) if isinstance(r, BaseException)]
    if failures:
        raise RunsFailed(engine, what, failures, retries + 1)
    return results


def settle_each(fn: Callable, items: Iterable) -> list:
    """`fn` over `items` here, each exception returned in place of its result (a SettledMapper's local form)."""
    out = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as exc:  # noqa: BLE001 - settled: the caller decides what a failure means
            out.append(exc)
    return out
