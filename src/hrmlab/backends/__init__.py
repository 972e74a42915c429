"""Where work runs. A backend only has to offer `map(fn, items)`; everything else composes it."""
