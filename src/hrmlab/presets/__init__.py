"""Presets: one YAML file per experiment of the seed (plus `quick`), loaded into experiment configs.

A preset's `family` (the registry `hrmlab.experiments.families`: grid when it names none, diffusion,
diffusion-st) picks its config tree and loader. Files only hold what differs from the defaults; reading
them (names, settings, suites) is `store.py`.
"""

from __future__ import annotations

from hrmlab.presets.store import PRESET_DIR, SUITE_BASE, deep_merge, preset_data, preset_names, suite_names

__all__ = ["DEFAULT_PRESET", "PRESET_DIR", "SUITE_BASE", "deep_merge", "load_preset", "preset_data", "preset_names",
           "resolve", "suite_names"]

DEFAULT_PRESET = "quick"


def load_preset(name: str, overrides=()):
    """The experiment config of preset `name` with `key=value` overrides applied."""
    from hrmlab.experiments.families import preset_family

    data = preset_data(name)
    return preset_family(data).load(data, name, list(overrides or ()))


def resolve(name: str | None, overrides=(), smoke: bool = False):
    """What `hrmlab run` runs: preset (default `quick`) + `key=value` overrides, shrunk by `smoke`."""
    cfg = load_preset(name or DEFAULT_PRESET, list(overrides or ()))
    if not smoke:
        return cfg
    from hrmlab.config import apply_overrides
    from hrmlab.experiments.families import family_of

    return apply_overrides(family_of(cfg).smoke(cfg), list(overrides or ()))  # explicit settings win
