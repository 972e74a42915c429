"""A backend that routes each function to its own mapper: the Modal orchestrator's backend (modal-free)."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

log = logging.getLogger("hrmlab.backends")


def function_ref(fn: Callable) -> str:
    """'module:qualname' of a top-level function, so a generic worker can import it."""
    return f"{fn.__module__}:{fn.__qualname__}"


class RoutedBackend:
    """A backend whose `map` sends each core function to its own route (on Modal: a Modal function's `.map`).

    routes: {core function: items → results in order}. Functions without a route go to `fallback`
    ((fn, items) → results) when given, else they are an error: nothing silently runs in the orchestrator."""

    def __init__(self, routes: dict[Callable, Callable[[list], Iterable]], before_map: Callable[[], None] = None,
                 fallback: Callable[[Callable, list], Iterable] | None = None, name: str = "modal"):
        self.name = name
        self.routes = dict(routes)
        self.before_map = before_map
        self.fallback = fallback

    def map(self, fn: Callable, items: Iterable) -> Iterable:
        items = list(items)
        route = self.routes.get(fn)
        if route is None and self.fallback is None:
            raise ValueError(f"the routed backend has no route for {function_ref(fn)}")
        if not items:
            return
        if self.before_map is not None:
            self.before_map()  # workers must see what this container wrote (manifests, checkpoints)
        log.info("%s: %d × %s", self.name, len(items), function_ref(fn))
        yield from route(items) if route is not None else self.fallback(fn, items)
