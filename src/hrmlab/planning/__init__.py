"""Planners: compiled space-time A* and its receding-horizon use."""
