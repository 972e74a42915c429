"""Dataclass configs: strict loading from dicts/YAML, `--set a.b=c` overrides, and stable config hashes.

Every concern has its own `@dataclass` (world, planner, data, model, training, ...) defined next to the
code that uses it; this module only holds the generic machinery that turns nested dataclasses into
dicts, back, and into a hash that keys the stage cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, Iterable

import yaml

from hrmlab.errors import InvalidType, InvalidValue, UserError
from hrmlab.validate import check_config


def to_dict(cfg: Any) -> Any:
    """Nested dataclass → plain dict (lists and scalars kept)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


NOT_IN_KEY = {"cache_key": False}
"""Field metadata (`field(default=..., metadata=NOT_IN_KEY)`) of a setting that cannot change a stage's
output (logging, checkpoint cadence, chunking): `key_dict` leaves it out, so changing it reuses the cache."""


def key_dict(cfg: Any) -> Any:
    """`to_dict` without the fields marked NOT_IN_KEY: exactly what changes a stage's result."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: key_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if f.metadata.get("cache_key", True)}
    if isinstance(cfg, (list, tuple)):
        return [key_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: key_dict(v) for k, v in cfg.items()}
    return cfg


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def changed_dict(cfg: Any) -> Any:
    """`key_dict` keeping only what differs from each dataclass's defaults (nested sections recursively).

    Keys long-lived results (the study's stored world summaries): adding a new setting whose default keeps
    the old behaviour — the project's rule for new settings — leaves the key of every existing config as it
    was, so hours of stored results are not redone because a field was added elsewhere."""
    if not dataclasses.is_dataclass(cfg):
        return key_dict(cfg)
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("cache_key", True):
            continue
        value, default = getattr(cfg, f.name), _default_of(f)
        if dataclasses.is_dataclass(value):
            sub = changed_dict(value)
            if sub or type(value) is not type(default):
                out[f.name] = sub
        elif default is dataclasses.MISSING or key_dict(value) != key_dict(default):
            out[f.name] = key_dict(value)
    return out


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short hash of a config (dataclass or dict): keys the cache of the stage it configures."""
    blob = json.dumps(key_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise InvalidValue(f"config key {where} may not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InvalidType(f"config key {where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InvalidType(f"config key {where} must be a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise InvalidValue(f"config key {where}={value!r} is invalid; valid choices: "
                               f"{', '.join(map(str, allowed))}")
        return value
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise InvalidType(f"config key {where} must be true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise InvalidType(f"config key {where} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise InvalidType(f"config key {where} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise InvalidType(f"config key {where} must be an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidType(f"config key {where} must be a number, got {value!r}") from None
    if tp is str:
        return str(value)
    return value


def from_dict(cls, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from `data`; unknown keys are a UserError naming the valid ones."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UserError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(names))}")
    hints = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    cfg = cls(**kwargs)
    check_config(cfg, where)  # value ranges (hrmlab/validate.py): every resolved config is checked here
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` → (['a','b'], yaml-parsed c)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value (e.g. planner.time_index=seed)")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise UserError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(cfg: Any, overrides: Iterable[str]) -> Any:
    """Return a copy of dataclass `cfg` with `key.path=value` overrides applied (validated)."""
    data = to_dict(cfg)
    for text in overrides or ():
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                valid = sorted(k for k, v in node.items() if isinstance(v, dict)) if isinstance(node, dict) else []
                raise UserError(f"unknown config section {'.'.join(path[:i + 1])!r}; valid sections: {', '.join(valid)}")
            node = node[part]
        leaf = path[-1]
        if leaf not in node:
            prefix = ".".join(path[:-1])
            valid = ", ".join(sorted(node))
            raise UserError(f"unknown config key {'.'.join(path)!r}; valid keys{' in ' + prefix if prefix else ''}: {valid}")
        node[leaf] = value
    return from_dict(type(cfg), data)


def load_yaml(path) -> dict:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"cannot parse {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping at top level")
    return data


def save_yaml(cfg: Any, path) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
