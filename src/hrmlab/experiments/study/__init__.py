"""`hrmlab study`: every learned model against the best physics rule at equal recipes, the learning rate chosen
on validation by selection seeds that are never evaluated, fresh training seeds, verdicts from rate differences
with seed and episode uncertainty (Holm-corrected), every per-episode outcome kept.

`config.py` the settings, arms and recipes; `run.py` selection, training, evaluation and the results and
episodes files; `summary.py` every statistic from the stored outcomes; `document.py` the markdown.
"""

from hrmlab.experiments.study.config import (Arm, StudyConfig, equal_recipes, smoke_study_defaults, study_worlds,
                                             train_field, with_recipe)
from hrmlab.experiments.study.document import study_command, study_document, tabulate
from hrmlab.experiments.study.run import STUDY_FORMAT, run_study, study_paths, world_key

__all__ = ["Arm", "StudyConfig", "STUDY_FORMAT", "equal_recipes", "run_study", "smoke_study_defaults",
           "study_command", "study_document", "study_paths", "study_worlds", "tabulate", "train_field",
           "with_recipe", "world_key"]
