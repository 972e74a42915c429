"""Reproducible figures (issue 13): the same command on the same machine gives the same numbers. Here the
pipeline's data and training stages run twice from scratch, each into its own cache, at toy size: the
stored trajectories, every trained weight (HRM with dropout, so torch's RNG is exercised, and LSTM) and the
validation figures must be equal bit for bit."""

import numpy as np
import pytest
import torch

from hrmlab.backends.local import make_backend
from hrmlab.data.collect import DataConfig, collect
from hrmlab.forecast.hrm import HRMConfig
from hrmlab.forecast.models import build_model
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.experiments.grid.training import train_forecaster
from hrmlab.train.trainer import TrainConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

WORLD = BounceGridConfig()
DATA = DataConfig(train_episodes=16, val_episodes=4, steps_per_episode=24, history=10, reset_batch=8,
                  episodes_per_shard=8, workers=1)
TRAIN = TrainConfig(epochs=1, max_steps=4, batch_size=32, lr=3e-3, schedule="onecycle", grad_clip=1.0,
                    checkpoint_every_steps=2, log_every_steps=1, precision="fp32", device="cpu", seed=3)
MODELS = {
    "hrm": HRMConfig(variant="sapient", d_model=16, heads=2, block="gated", init_std=0.02, dropout=0.1),
    "lstm": LSTMConfig(hidden=16, dropout=0.1),
}


def _run(root, kind):
    paths = collect(WORLD, DATA, root / "cache", backend=make_backend(1), progress=False)
    summary = train_forecaster(kind=kind, model_cfg=MODELS[kind], train_cfg=TRAIN, world=WORLD, data=DATA,
                               data_paths=paths, run_dir=root / "run", device="cpu", progress=False)
    arrays = {name: np.load(path) for name, path in paths.files.items()}
    weights = torch.load(summary["checkpoint"], map_location="cpu", weights_only=False)["model"]
    return arrays, weights, summary


@pytest.mark.parametrize("kind", ["hrm", "lstm"])
def test_data_and_training_are_bit_for_bit_reproducible(tmp_path, kind):
    arrays_a, weights_a, summary_a = _run(tmp_path / "a", kind)
    arrays_b, weights_b, summary_b = _run(tmp_path / "b", kind)
    assert arrays_a.keys() == arrays_b.keys() == {"train", "val"}
    for split in arrays_a:
        assert np.array_equal(arrays_a[split], arrays_b[split]), split
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    assert summary_a["steps"] == summary_b["steps"] == TRAIN.max_steps
    assert summary_a["best_val_loss"] == summary_b["best_val_loss"]
    assert summary_a["forecast_metrics"] == summary_b["forecast_metrics"]
    initial = build_model(MODELS[kind], seed=TRAIN.seed).state_dict()  # what training started from
    assert any(not torch.equal(initial[n], weights_a[n]) for n in initial)  # the weights did train
