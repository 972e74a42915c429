"""The preset files: their names, their settings (`extends` merged) and which of them are scenario suites.

Plain data, read by everything that needs a preset's settings without loading it (the suites' worlds in
`evaluate/protocols.py`, the study's worlds); `hrmlab.presets.load_preset` turns them into configs through
the family registry.
"""

from __future__ import annotations

from pathlib import Path

from hrmlab.config import load_yaml
from hrmlab.errors import UserError, choose

PRESET_DIR = Path(__file__).resolve().parent
SUITE_BASE = "_suite"
"""The base every scenario-suite preset extends (`presets/_suite.yaml`): what makes a preset a suite."""


def preset_names() -> list[str]:
    """Runnable presets; files starting with `_` are bases that others extend, not experiments."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def suite_names() -> list[str]:
    """The scenario-suite presets (`extends: _suite`), in `preset_names` order: each states a world, and
    protocol and Gymnasium id of the same name run it (`evaluate/protocols.py`, `hrmlab.envs`)."""
    return [name for name in preset_names() if SUITE_BASE in _bases(name)]


def _bases(name: str) -> list[str]:
    """The presets `name` extends, nearest first (read from the files, without merging them)."""
    bases: list[str] = []
    base = load_yaml(PRESET_DIR / f"{name}.yaml").get("extends")
    while base is not None and str(base) not in bases and (PRESET_DIR / f"{base}.yaml").is_file():
        bases.append(str(base))
        base = load_yaml(PRESET_DIR / f"{base}.yaml").get("extends")
    return bases


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
