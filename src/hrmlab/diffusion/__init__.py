"""Diffusion path planner on BlobWorld (SPEC §8): expert space-time A* (numba) and its data, the 1-D U-Net
denoisers, noise formulations and samplers, SDF refinement, training, evaluation and the experiment."""
