"""Planners, compiled with numba, one space-time A* per world: `spacetime_astar.py` (BounceGrid: 4 moves +
wait, receding horizon among forecast obstacles) and `blob_astar.py` (BlobWorld: 8 moves + wait, Euclidean
costs, clearance; the diffusion families' expert and oracle). Ground floor: they import only `worlds/`."""
