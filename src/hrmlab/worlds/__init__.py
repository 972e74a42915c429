"""Worlds with moving obstacles, batched numpy cores on the ground floor: BounceGrid (the forecaster + A*
family's) and BlobWorld (the diffusion families', with its rules)."""

OBSERVED_HISTORY = 20
"""Obstacle positions (oldest first) an observer of a world is shown before each move: the forecasters'
input window in every preset but the v1/v2 replicas (`data.history` 10), the Gymnasium observation, an
outside policy's view. The closed loop keeps at least what its forecaster reads (`run_closed_loop`)."""
