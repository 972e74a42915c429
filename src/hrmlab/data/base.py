"""The one thing training needs from data: a source of (X, Y) batches addressed by sample index.

X is (b, H, 2) float32 normalised positions (oldest first); Y is (b, 2) float32 normalised one-step
displacement (SPEC §3). Samplers (shuffling, DDP sharding) live in the trainer and only pass indices.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class SampleSource(Protocol):
    history: int

    def __len__(self) -> int: ...

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class ArraySource:
    """In-memory (X, Y) arrays behind the SampleSource protocol (tests, small data)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        if len(x) != len(y):
            raise ValueError(f"X and Y differ in length: {len(x)} vs {len(y)}")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = np.ascontiguousarray(y, dtype=np.float32)
        self.history = self.x.shape[1]

    def __len__(self) -> int:
        return len(self.x)

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x[indices], self.y[indices]
