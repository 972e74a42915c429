"""Train one forecaster (HRM or LSTM) on a collected dataset: the grid family's training stage.

Wires data → model → trainer and stores, in every checkpoint, what a later evaluation needs to rebuild
the forecaster (model kind and config, grid size, history length, roll-out). With several GPUs the same
work is launched under torchrun; one process otherwise. Afterwards the model is scored on validation
episodes against the zero-motion and constant-velocity baselines, so a user sees at once whether it
learned more than physics.

The roll-out mode (forecast/learned.py) picks the samples: `window` and `stateful` train the one-step
model on one-step samples (the seed's training; a stateful forecast runs that model), `direct` trains
its K-step head on windows with their K-step future (K = the planner's horizon). The loss is always the
trainer's default MSE of the predicted displacements: one step, or every step of the K.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from hrmlab.config import to_dict
from hrmlab.errors import UserError
from hrmlab.evaluate.forecast_metrics import format_forecast_table
from hrmlab.data.collect import DataConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

log = logging.getLogger("hrmlab.train")


def open_sources(dataset: str, history: int, has_val: bool, future: int = 1):
    """(train, val) sample sources of a collected dataset; the torchrun spec's data callable.
    future: target displacements per sample (1, or K for the direct roll-out)."""
    from hrmlab.data.dataset import open_dataset

    val = open_dataset(Path(dataset), "val", history=history, future=future) if has_val else None
    return open_dataset(Path(dataset), "train", history=history, future=future), val


def train_forecaster(*, kind: str, model_cfg, train_cfg, world: BounceGridConfig, data: DataConfig, data_paths,
                     run_dir: Path, gpus: int = 0, preset_gpus: int = 0, device: str = "auto",
                     progress: bool = True, rollout: str = "window", horizon: int = 20) -> dict:
    """Train `kind` ('hrm' | 'lstm'); resumes from run_dir/last.pt if a previous attempt was interrupted.

    gpus > 1 launches torchrun with that many ranks; otherwise training runs in this process. Either way
    the global batch of the preset (designed for `preset_gpus`) is kept through gradient accumulation.
    rollout: the roll-out mode to train for; horizon: direct's K (model_cfg.out_steps must equal it)."""
    from hrmlab.forecast.learned import TRAINED_FOR, check_rollout
    from hrmlab.forecast.models import build_model, count_parameters
    from hrmlab.forecast.loading import model_metadata
    from hrmlab.experiments.grid.torchrun_entry import RESULT_FILE, launch_torchrun, run_spec

    check_rollout(build_model(model_cfg), rollout)
    trained = TRAINED_FOR[rollout]
    future = horizon if trained == "direct" else 1
    if getattr(model_cfg, "out_steps", 1) != future:
        raise UserError(f"{rollout} roll-out: the model predicts {model_cfg.out_steps} steps per call, it needs {future}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_cfg = dataclasses.replace(train_cfg, gpus=max(1, preset_gpus), device=device)
    from hrmlab.train.distributed import pick_device

    if kind == "lstm" and train_cfg.precision == "fp16" and pick_device(device).type != "cuda":
        # oneDNN has no fp16 LSTM kernel on CPU; the recipe's fp16 applies on GPUs only
        log.warning("precision fp16 for the LSTM is not available on CPU; training it in fp32")
        train_cfg = dataclasses.replace(train_cfg, precision="fp32")
    has_val = "val" in data_paths.files
    spec = {
        "run_dir": str(run_dir), "model": {"kind": kind, **to_dict(model_cfg)}, "model_seed": train_cfg.seed,
        "train": to_dict(train_cfg), "progress": progress,
        "data": {"kind": "callable", "target": "hrmlab.experiments.grid.training:open_sources",
                 "kwargs": {"dataset": str(data_paths.root), "history": data.history, "has_val": has_val,
                            "future": future}},
        "config": {"forecaster": model_metadata(kind, model_cfg, world.position_scale, data.history, trained)},
    }
    if gpus > 1:
        spec_path = run_dir / "train_spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        launch_torchrun(spec_path, gpus)
        summary = json.loads((run_dir / RESULT_FILE).read_text())
    else:
        summary = run_spec(spec)
    summary.update(kind=kind, checkpoint=summary["checkpoint_path"],
                   parameters=count_parameters(build_model(model_cfg)))
    if has_val:
        summary["forecast_metrics"] = score_on_validation(summary["checkpoint"], world, data)
        log.info("forecast metrics on validation episodes:\n%s", format_forecast_table(summary["forecast_metrics"]))
    return summary


def score_on_validation(checkpoint: str, world: BounceGridConfig, data: DataConfig, episodes: int = 200) -> dict:
    """One-step MSE and ADE/FDE over the horizon on validation episodes, beside the physics baselines."""
    from hrmlab.evaluate.forecast_metrics import ForecastEvalConfig, forecast_metrics
    from hrmlab.forecast.loading import load_forecaster

    forecaster = load_forecaster(checkpoint, name="model")
    cfg = ForecastEvalConfig(episodes=min(episodes, max(1, data.val_episodes)), history=data.history,
                             steps=max(data.steps_per_episode, data.history + 21))
    return forecast_metrics(forecaster, world, cfg)
