"""Where work runs. A backend only has to offer `map(fn, items)`; everything else composes it.

* `local`: serial (tests, debugging) and a spawn-based process pool.
* `routed`: sends each function to its own mapper (the Modal orchestrator routes them to Modal functions).
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol


class Backend(Protocol):
    """Runs `fn` on every item (a picklable top-level function and picklable items); results in item order."""

    name: str

    def map(self, fn: Callable, items: Iterable) -> Iterable: ...
