"""hrmlab_bench: the measurements behind docs/benchmarks.md, kept out of the runtime package.

`hrmlab bench` (registry.py) runs them; one module per concern: closed_loop.py (closed loop, planner),
data.py (collection, loader), train.py (HRM training throughput), forecast.py (roll-out modes),
diffusion.py (expert A*), diffusion_st.py (space-time diffusion planner), gym.py (Gymnasium envs).
`reference/` holds independent implementations used only as test oracles and speed baselines:
reference/hrm_formulation.py (the original scripts' HRM formulation) and reference/expert_astar.py
(pure-Python space-time A*). No module of `hrmlab` imports this package except `hrmlab.cli`'s
`cmd_bench`, lazily (tests/test_layout.py checks it).
"""
