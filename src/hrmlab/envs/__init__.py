"""hrmlab's worlds as Gymnasium environments (the `gym` extra: `pip install "hrmlab[gym]"`).

Importing this package registers the ids below with gymnasium (gymnasium 1.x loads no plugins by
itself, so `import hrmlab.envs` — or `gymnasium.register_envs(hrmlab.envs)` — comes first, or the id is
written with its module: `gymnasium.make("hrmlab.envs:hrmlab/BounceGrid-v0")`):

    hrmlab/BounceGrid-v0          the grid world; keyword arguments = BounceGridConfig settings, `protocol`
    hrmlab/BounceGrid-patrol-v0   one per scenario suite (patrol, rush, mixed, turning): the suite's world
    hrmlab/BlobWorld-v0           the diffusion planner's 64×64 world; keyword arguments = BlobWorldConfig

`gymnasium.make_vec(id, num_envs=N)` gives the batched vector env (`vector.py`). Spaces, rules and
rewards: `env.py`; policies: `hrmlab.policies`; an example: docs/gym.md. The rest of hrmlab never
imports this package, so it works without gymnasium.
"""

from __future__ import annotations

try:
    from gymnasium.envs.registration import register, registry
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError('hrmlab.envs needs gymnasium: pip install "hrmlab[gym]"') from exc

from hrmlab.envs.core import suite_env_id
from hrmlab.evaluate.protocols import SUITE_WORLDS


def env_ids() -> dict[str, dict]:
    """Every registered id → its entry points and default keyword arguments."""
    bounce = {"entry_point": "hrmlab.envs.env:BounceGridEnv",
              "vector_entry_point": "hrmlab.envs.vector:BounceGridVectorEnv"}
    ids = {"hrmlab/BounceGrid-v0": {**bounce, "kwargs": {}}}
    for name in SUITE_WORLDS:  # the suites' worlds come from their protocols: one source of truth
        ids[suite_env_id(name)] = {**bounce, "kwargs": {"protocol": name}}
    ids["hrmlab/BlobWorld-v0"] = {"entry_point": "hrmlab.envs.env:BlobWorldEnv",
                                  "vector_entry_point": "hrmlab.envs.vector:BlobWorldVectorEnv", "kwargs": {}}
    return ids


def register_envs() -> list[str]:
    """Register every id (again-safe); returns the ids."""
    ids = env_ids()
    for env_id, spec in ids.items():
        if env_id not in registry:
            register(id=env_id, **spec)
    return list(ids)


ENV_IDS = register_envs()


_LAZY = {"BounceGridEnv": "env", "BlobWorldEnv": "env", "HrmlabEnv": "env", "BounceGridVectorEnv": "vector",
         "BlobWorldVectorEnv": "vector", "HrmlabVectorEnv": "vector", "KING_MOVES": "core"}


def __getattr__(name: str):
    """`from hrmlab.envs import BounceGridEnv` etc. without importing the env modules up front."""
    if name not in _LAZY:
        raise AttributeError(f"module 'hrmlab.envs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"hrmlab.envs.{_LAZY[name]}"), name)
