"""Training: one loop for every model (trainer.py), optimisers and schedules, precision modes,
checkpoints that a killed run resumes from, and torchrun/DDP helpers."""
