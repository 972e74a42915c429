"""Closed-loop evaluation: protocols, batched episodes, statistics."""
