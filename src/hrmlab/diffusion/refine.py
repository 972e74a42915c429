"""Path refinement and scoring on a distance field of the t = 0 occupancy grid (SPEC §8), vectorised.

The field is the seed's `distance_transform_edt(1 − grid)`: for a free cell, the Euclidean distance to the
nearest occupied cell; 0 on occupied cells (so it is a clearance field, signed only in name). Each of
`steps` refinement iterations does, for all paths and interior points at once:

1. push-away: a point whose truncated cell is on the map with field value < margin moves by
   step_size × the central difference of the field at that cell (border-clamped, not halved);
2. smoothing: interior points become ¼·previous + ½·self + ¼·next (from the values before smoothing).

Endpoints never move. The score of a path is Σ (margin − d)² over its points with d < margin (cells
clipped onto the map), lower is better. Exactly the seed's per-point loops, so the line + refinement
baseline reproduces its number.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt


def distance_field(occupancy: np.ndarray) -> np.ndarray:
    """(B, G, G) bool occupancy → (B, G, G) float64 distance to the nearest occupied cell."""
    occupancy = np.asarray(occupancy, dtype=bool)
    out = np.empty(occupancy.shape, dtype=np.float64)
    for b in range(occupancy.shape[0]):
        out[b] = distance_transform_edt(~occupancy[b])
    return out


def refine_paths(paths: np.ndarray, field: np.ndarray, steps: int, step_size: float = 0.5,
                 margin: float = 3.0, which: np.ndarray | None = None) -> np.ndarray:
    """Refine paths (P, L, 2) in cell units against `field` (B, G, G); `which` (P,) picks each path's
    field (default: path p uses field p). Returns a new array."""
    traj = np.array(paths, dtype=np.float64, copy=True)
    p_count, length, _ = traj.shape
    which = np.arange(p_count) if which is None else np.asarray(which)
    g = field.shape[-1]
    maps = which[:, None]
    for _ in range(steps):
        inner = traj[:, 1:-1]
        cells = np.trunc(inner).astype(np.int64)  # int(): truncation toward zero, as the seed
        on_map = ((cells >= 0) & (cells < g)).all(axis=-1)
        r = np.clip(cells[..., 0], 0, g - 1)
        c = np.clip(cells[..., 1], 0, g - 1)
        d = field[maps, r, c]
        push = on_map & (d < margin)
        if push.any():
            grad_r = field[maps, np.minimum(r + 1, g - 1), c] - field[maps, np.maximum(r - 1, 0), c]
            grad_c = field[maps, r, np.minimum(c + 1, g - 1)] - field[maps, r, np.maximum(c - 1, 0)]
            inner[..., 0] += np.where(push, grad_r * step_size, 0.0)
            inner[..., 1] += np.where(push, grad_c * step_size, 0.0)
        if length > 2:
            traj[:, 1:-1] = 0.5 * traj[:, 1:-1] + 0.25 * traj[:, :-2] + 0.25 * traj[:, 2:]
    return traj


def path_penalty(paths: np.ndarray, field: np.ndarray, margin: float = 3.0,
                 which: np.ndarray | None = None) -> np.ndarray:
    """(P,) Σ (margin − d)² over points with d < margin; cells are clipped onto the map then truncated."""
    paths = np.asarray(paths, dtype=np.float64)
    which = np.arange(len(paths)) if which is None else np.asarray(which)
    g = field.shape[-1]
    cells = np.clip(paths, 0, g - 1).astype(np.int64)
    d = field[which[:, None], cells[..., 0], cells[..., 1]]
    return np.where(d < margin, (margin - d) ** 2, 0.0).sum(axis=1)
