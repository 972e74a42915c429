"""Closed-loop evaluation: protocols, the closed loop of each world, paired runs, the one result type, statistics."""
