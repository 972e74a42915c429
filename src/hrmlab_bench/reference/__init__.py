"""Independent reference implementations: test oracles and the baselines `hrmlab bench` times against.

* hrm_formulation.py: the original scripts' formulation of the recurrent HRMs (`reference_from`).
* expert_astar.py: pure-Python space-time A* (`plan_reference`, `plan_seed_style`).
"""
