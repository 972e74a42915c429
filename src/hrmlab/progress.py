"""Progress for long stages: a tqdm bar on a terminal, or, with progress bars off (--no-progress, batch and
cloud jobs), one log line at most every LOG_EVERY_S seconds, so a 20-minute stage is never silent."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("hrmlab.progress")

LOG_EVERY_S = 60.0
"""Without a bar, the shortest interval between two progress lines."""


class LogProgress:
    """The part of tqdm's interface the stages use (update, set_postfix, close), written as log lines.

    A line says done/total, the time left at the rate since the start, and the latest postfix; the update
    that completes the stage writes none (the stage logs its own result)."""

    def __init__(self, total: int, desc: str, unit: str = "episodes", initial: int = 0,
                 every_s: float | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        self.initial = self.done = initial
        self.start = self.last = time.perf_counter()
        self.postfix = ""

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            left = (now - self.start) / (self.done - self.initial) * (self.total - self.done)
            log.info("%s: %d/%d %s, about %.0f s left%s", self.desc, self.done, self.total, self.unit, left,
                     f" ({self.postfix})" if self.postfix else "")

    def close(self) -> None:
        pass


class NoProgress(LogProgress):
    """Nothing at all (e.g. ranks other than the main one)."""

    def update(self, n: int = 1) -> None:
        self.done += n


def make_progress(total: int, desc: str, *, bar: bool, unit: str = "episodes", initial: int = 0, enabled: bool = True):
    """A tqdm bar when `bar`, else log lines (LogProgress); silent when not `enabled`."""
    if not enabled:
        return NoProgress(total, desc, unit, initial)
    if not bar:
        return LogProgress(total, desc, unit, initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
