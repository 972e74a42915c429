"""Presets: one YAML file per experiment of the seed (plus `quick`), loaded into experiment configs.

A preset's `family` (`hrmlab.families`: grid by default, or diffusion) picks its config tree and loader.
Files only hold what differs from the defaults.
"""

from __future__ import annotations

from pathlib import Path

from hrmlab.config import load_yaml
from hrmlab.errors import choose

PRESET_DIR = Path(__file__).resolve().parent
DEFAULT_PRESET = "quick"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_data(name: str) -> dict:
    choose("preset", name, preset_names())
    return load_yaml(PRESET_DIR / f"{name}.yaml")


def load_preset(name: str, overrides=()):
    """The experiment config of preset `name` with `key=value` overrides applied."""
    from hrmlab.families import get_family

    data = preset_data(name)
    return get_family(data.get("family", "grid")).call("load", data, name, list(overrides or ()))


def resolve(name: str | None, overrides=(), smoke: bool = False):
    """What `hrmlab run` runs: preset (default `quick`) + `key=value` overrides, shrunk by `smoke`."""
    cfg = load_preset(name or DEFAULT_PRESET, list(overrides or ()))
    if not smoke:
        return cfg
    from hrmlab.config import apply_overrides
    from hrmlab.families import family_of

    return apply_overrides(family_of(cfg).call("smoke", cfg), list(overrides or ()))  # explicit settings win
