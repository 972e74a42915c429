"""Episode identities and counter-based randomness.

An episode is identified by (split, index). Its 64-bit *episode id* puts the split code in the high bits,
so train / validation / test ids are disjoint by construction; seed protocols use the original's plain
integer seeds (split code 0) and therefore can never collide with a split either.

Split-based episodes draw their randomness from a counter-based hash (splitmix64 of episode key and
draw counter), so a whole batch of episodes is generated with vectorised numpy, yet every episode is
the same whatever batch or worker produced it. No global RNG is touched anywhere.
"""

from __future__ import annotations

import numpy as np

from hrmlab.errors import InvalidValue

SPLIT_CODES = {"seed": 0, "train": 1, "val": 2, "test": 3}
INDEX_BITS = 40
MAX_INDEX = (1 << INDEX_BITS) - 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def episode_ids(split: str, indices) -> np.ndarray:
    """64-bit ids of episodes `indices` of `split` ('train', 'val', 'test' or 'seed')."""
    if split not in SPLIT_CODES:
        raise InvalidValue(f"unknown split {split!r}; valid choices: {', '.join(SPLIT_CODES)}")
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() > MAX_INDEX):
        raise InvalidValue(f"episode index out of range [0, {MAX_INDEX}] for split {split!r}")
    return (np.uint64(SPLIT_CODES[split]) << np.uint64(INDEX_BITS)) | idx.astype(np.uint64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def episode_keys(ids: np.ndarray, world_seed: int, salt: int = 0) -> np.ndarray:
    """Per-episode random keys: depend on the episode id, the world's base seed and a purpose salt."""
    base = splitmix64(np.array([world_seed * 1_000_003 + salt], dtype=np.uint64))
    return splitmix64(np.asarray(ids, dtype=np.uint64) ^ base)


def uniform(keys: np.ndarray, counter) -> np.ndarray:
    """U[0,1) doubles, one per key, for draw number `counter` (int or array broadcast with keys)."""
    with np.errstate(over="ignore"):
        mixed = splitmix64(keys ^ (np.asarray(counter, dtype=np.uint64) * _M2 + np.uint64(1)))
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
