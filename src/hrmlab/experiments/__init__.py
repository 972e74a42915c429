"""The workspace layer: one module (or package) per kind of experiment, wiring the runtime packages below
into cached stages, plus the family registry (`families.py`) that the CLI, presets and Modal ask.

* `grid/` — forecasters + space-time A* on BounceGrid: config, stages, the training stage, the torchrun entry.
* `diffusion.py` — a diffusion denoiser planning paths on BlobWorld.
* `diffusion_st.py` — the space-time diffusion planner beside A* and the same forecasters.
* `suites.py` — `hrmlab suites`: every scenario-suite preset through the grid stages.
* `study/` — `hrmlab study`: models against physics at equal budget.
"""
