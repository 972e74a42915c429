"""Presets: one YAML file per experiment of the seed (plus `quick`), loaded into experiment configs.

A preset's `family` (`hrmlab.families`: grid by default, or diffusion) picks its config tree and loader.
Files only hold what differs from the defaults.
"""

from __future__ import annotations

from pathlib import Path

from hrmlab.config import load_yaml
from hrmlab.errors import UserError, choose

PRESET_DIR = Path(__file__).resolve().parent
DEFAULT_PRESET = "quick"


def preset_names() -> list[str]:
    """Runnable presets; files starting with `_` are bases that others extend, not experiments."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def deep_merge(base: dict, child: dict) -> dict:
    """`child` over `base`: nested mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in child.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def preset_data(name: str, _chain: tuple[str, ...] = ()) -> dict:
    """A preset file's settings; `extends: BASE` starts from preset (or `_base` file) BASE's settings."""
    if not _chain:
        choose("preset", name, preset_names())
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"preset {_chain[-1]} extends {name!r}, which does not exist")
    data = load_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if base in _chain + (name,):
        raise UserError(f"preset {name} extends itself through {' -> '.join(_chain + (name, base))}")
    return deep_merge(preset_data(str(base), _chain + (name,)), data)


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
