"""Forecasting samples cut from stored obstacle trajectories at load time (SPEC §3).

Design choice: the store keeps per-episode trajectories, float32 (episodes, N, S, 2), and `get_batch`
cuts the (X, Y) windows on the fly. Windows overlap H-fold, so storing them would take ≈2.9 GB for
60,000 episodes (X alone is H × 2 floats per sample); the trajectories take ≈200 MB, fit the page cache,
and serve any H < S from one store. Cutting costs one compiled gather per batch (numba; ≈3M samples/s).

Sample definition, exactly as SPEC §3 with the reset position counted as the first history entry (as the
seed's episode loop and our evaluator do): with P[t] the normalised position after t physics steps,
t = 0 … S-1, an episode's history holds P[0] … P[t] at loop step t; once it holds more than H positions
(t ≥ H) the step yields, per obstacle,

    X = P[t-H : t]            the H positions before the current one, oldest first, (H, 2)
    Y = P[t] - P[t-1]         the latest one-step displacement, (2,)

for t = H … S-1, i.e. S − H samples per obstacle and N × (S − H) per episode (300 at S=70, H=20, N=6).
The position after the S-th physics step is never observed, so it is not stored.

Sample order: episode-major, then loop step, then obstacle (index = (e·(S−H) + t−H)·N + n), as the seed
appended them. Positions are (row, col) divided by the grid size.

Windows with their future (the `direct` and `stateful` roll-outs train on K steps, forecast/learned.py):
with `future` = K the target is the next K per-step displacements,

    Y[k] = P[t+k] - P[t+k-1]      k = 0 … K-1, (K, 2)

so a window needs K − 1 more observed positions after t: t = H … S-K, i.e. S − H − K + 1 windows per
obstacle (31 instead of 50 at S=70, H=20, K=20). The first window of every episode is the same as with
K = 1; the last K − 1 loop steps of an episode are not cut, because their futures were never observed.
K = 1 is exactly the sample set above, in the same order.
"""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np

from hrmlab.data import shards
from hrmlab.errors import UserError


class TrajectoryWindows:
    """SampleSource over positions (E, N, S, 2): sample i ↔ (episode, step, obstacle), cut on demand."""

    def __init__(self, positions: np.ndarray, history: int, future: int = 1):
        if positions.ndim != 4 or positions.shape[-1] != 2 or positions.dtype != np.float32:
            raise ValueError(f"positions must be float32 (episodes, N, S, 2), got {positions.dtype} {positions.shape}")
        episodes, obstacles, steps, _ = positions.shape
        if not 1 <= history < steps:
            raise UserError(f"history {history} must be in [1, {steps - 1}] for trajectories of {steps} positions")
        if not 1 <= future <= steps - history:
            raise UserError(f"future {future} must be in [1, {steps - history}]: trajectories of {steps} positions "
                            f"with history {history} leave no window with {future} observed future steps")
        self.positions = positions
        self.history = history
        self.future = future
        self.episodes, self.obstacles, self.steps = episodes, obstacles, steps
        self.windows_per_episode = steps - history - future + 1
        self.samples_per_episode = obstacles * self.windows_per_episode
        self._flat = np.asarray(positions).reshape(-1)  # a plain view, also of a memmap

    def __len__(self) -> int:
        return self.episodes * self.samples_per_episode

    def locate(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(episode, window start, obstacle) of each sample index; window start w = loop step t − H."""
        idx = np.asarray(indices, dtype=np.int64)
        episode, rest = np.divmod(idx, self.samples_per_episode)
        start, obstacle = np.divmod(rest, self.obstacles)
        return episode, start, obstacle

    def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """X (b, H, 2) float32 and Y float32 for sample `indices` (any order, repeats allowed):
        Y is (b, 2) with future = 1, else (b, K, 2)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)})")
        x = np.empty((idx.size, self.history, 2), dtype=np.float32)
        y = np.empty((idx.size, self.future, 2), dtype=np.float32)
        _cut_windows(self._flat, idx, self.samples_per_episode, self.obstacles, self.steps, self.history, x, y)
        return x, (y[:, 0] if self.future == 1 else y)


@numba.njit(cache=True, nogil=True)
def _cut_windows(flat, indices, samples_per_episode, obstacles, steps, history, x, y):
    # compiled gather: 2-3x numpy fancy indexing, and no (b, 2H) index temporaries
    for i in range(indices.shape[0]):
        episode, rest = divmod(indices[i], samples_per_episode)
        start, obstacle = divmod(rest, obstacles)
        base = ((episode * obstacles + obstacle) * steps + start) * 2
        for k in range(history):
            x[i, k, 0] = flat[base + 2 * k]
            x[i, k, 1] = flat[base + 2 * k + 1]
        for k in range(y.shape[1]):
            last = base + 2 * (history + k)
            y[i, k, 0] = flat[last] - flat[last - 2]
            y[i, k, 1] = flat[last + 1] - flat[last - 1]


def open_dataset(source, split: str = "train", history: int | None = None, mmap: bool = True,
                 future: int = 1) -> TrajectoryWindows:
    """A split of a collected dataset. `source`: the DatasetPaths from `collect`, or a dataset directory.

    history defaults to the one the dataset was collected with. mmap=False loads the split into memory.
    future: displacements per target (1: the one-step samples; K: windows with their K-step future).
    """
    if hasattr(source, "files"):  # the DatasetPaths `collect` returns
        root, files = source.root, source.files
        history = history if history is not None else source.history
    else:
        root = Path(source)
        manifest = shards.read_manifest(root)
        if manifest is None or not (root / shards.DONE).exists():
            raise UserError(f"{root} holds no finished dataset; run `hrmlab collect` first")
        files = {split: root / rec["file"] for split, rec in manifest["merged"].items()}
        history = history if history is not None else manifest["data_config"]["history"]
    if split not in files:
        raise UserError(f"dataset {root} has no {split!r} split; available: {', '.join(sorted(files))}")
    positions = np.load(files[split], mmap_mode="r" if mmap else None)
    return TrajectoryWindows(positions, history, future)
