"""The grid family: forecasters (physics rules, learned models) + space-time A* on BounceGrid.

`config.py` the experiment's config tree, `stages.py` its cached stages (data → train → evaluate → report)
and `hrmlab run`, `training.py` the training stage (data → model → the one trainer, in process or under
torchrun), `torchrun_entry.py` what each torchrun rank runs.
"""
