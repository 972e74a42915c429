"""Presets: one YAML file per experiment of the seed (plus `quick`), loaded into experiment configs.

A preset's `family` picks its config tree: `grid` (forecaster + A*, `hrmlab.experiment`), `diffusion`
(`hrmlab.diffusion.experiment`) or `diffusion-st` (`hrmlab.diffusion.spacetime.experiment`). Files only hold what differs from the defaults.
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
    data = preset_data(name)
    if data.get("family") == "diffusion-st":
        from hrmlab.diffusion.spacetime.experiment import load_st_experiment

        return load_st_experiment(data, name, overrides)
    if data.get("family", "grid") == "diffusion":
        from hrmlab.diffusion.experiment import load_diffusion_experiment

        return load_diffusion_experiment(data, name, overrides)
    from hrmlab.experiment import load_experiment

    return load_experiment(data, name, overrides)


def resolve(name: str | None, overrides=(), smoke: bool = False):
    """What `hrmlab run` runs: preset (default `quick`) + `key=value` overrides, shrunk by `smoke`."""
    cfg = load_preset(name or DEFAULT_PRESET, list(overrides or ()))
    if not smoke:
        return cfg
    from hrmlab.config import apply_overrides

    if cfg.family == "diffusion-st":
        from hrmlab.diffusion.spacetime.experiment import smoke as shrink
    elif cfg.family == "diffusion":
        from hrmlab.diffusion.experiment import smoke as shrink
    else:
        from hrmlab.experiment import smoke as shrink
    return apply_overrides(shrink(cfg), list(overrides or ()))  # explicit settings win over smoke sizes
