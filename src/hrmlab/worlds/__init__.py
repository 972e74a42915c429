"""Worlds with moving obstacles: BounceGrid (forecaster + A* family) and BlobWorld (diffusion family)."""
