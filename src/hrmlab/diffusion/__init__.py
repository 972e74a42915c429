"""Diffusion path planners on BlobWorld (SPEC §8): expert data (its search is `planning/blob_astar.py`), the
1-D U-Net denoisers, noise formulations and samplers, SDF refinement, training and the open-loop evaluation;
`spacetime/` the space-time planner. The experiments that run them: `experiments/diffusion.py`,
`experiments/diffusion_st.py`."""
