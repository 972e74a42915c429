"""One training run of `hrmlab study` as the engines send it out: `TrainRun` (picklable) and `train_run`, the
function a process pool, a Slurm array task, a Modal container or a stacked group (stacked.py) calls. A run
that carries an evaluation evaluates its rows in the same task once trained (evaluation.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("hrmlab.study")


@dataclass
class TrainRun:
    """One training stage of the study (picklable: it runs in a worker process)."""

    cfg: object
    model: str
    data_paths: object
    opts: object
    name: str = ""
    """`<arm>-lr<rate>-s<seed>`: how a failed run is named (its run folder's name)."""
    evaluation: object = None
    """A `RunEvaluation`: the rows this task evaluates once the run is trained (None: training only)."""

    def describe(self) -> str:
        return self.name or self.model


def train_run(run: TrainRun) -> dict:
    """One training stage (and its evaluation); a run that diverges is returned as a result ({"diverged": why}),
    so that a learning-rate candidate that blows up loses the selection instead of ending the study."""
    from hrmlab.errors import TrainingDiverged
    from hrmlab.experiments.grid.stages import stage_train

    from hrmlab.experiments.study.evaluation import with_evaluation

    try:
        return with_evaluation(stage_train(run.cfg, run.model, run.data_paths, run.opts), run.evaluation, run.opts)
    except TrainingDiverged as exc:
        recipe = run.cfg.train_config(run.model)
        log.warning("%s at lr %g, seed %d: %s", run.model, recipe.lr, recipe.seed, exc)
        return {"diverged": str(exc), "best_val_loss": None}
