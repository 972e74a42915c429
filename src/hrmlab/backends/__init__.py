"""Where work runs. A backend only has to offer `map(fn, items)`; everything else composes it. A backend that
can also hand results back as they finish offers `map_unordered(fn, items)` ((index, result) pairs), which
`as_completed` uses where the order does not matter (training runs whose results are recorded one by one).

* `local`: serial (tests, debugging) and a spawn-based process pool.
* `routed`: sends each function to its own mapper (the Modal orchestrator routes them to Modal functions).
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol


class Backend(Protocol):
    """Runs `fn` on every item (a picklable top-level function and picklable items); results in item order."""

    name: str

    def map(self, fn: Callable, items: Iterable) -> Iterable: ...


def as_completed(backend, fn: Callable, items: list):
    """(item, result) for every item: as each finishes where the backend offers `map_unordered`, else in order."""
    items = list(items)
    if hasattr(backend, "map_unordered"):
        for i, result in backend.map_unordered(fn, items):
            yield items[i], result
    else:
        yield from zip(items, backend.map(fn, items))
