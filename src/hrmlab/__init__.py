"""hrmlab: learned world models (HRM, LSTM, physics) for space-time A* planning among moving obstacles."""

__version__ = "0.1.0"
