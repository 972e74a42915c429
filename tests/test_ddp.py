"""A real 2-process torchrun (gloo on CPU) through the training entry point."""

import json

import numpy as np
import pytest

from hrmlab.experiments.grid.torchrun_entry import RESULT_FILE, launch_torchrun, run_spec
from hrmlab.train.trainer import read_metrics



def _write_spec(tmp_path, run_dir, train_overrides=None) -> dict:
    rng = np.random.default_rng(0)
    start = rng.uniform(0.2, 0.8, (768, 1, 2))
    vel = rng.normal(0.0, 0.05, (768, 1, 2))
    x = (start + np.arange(10)[None, :, None] * vel).astype(np.float32)
    y = vel[:, 0].astype(np.float32)
    for name, arr in (("tx", x[:640]), ("ty", y[:640]), ("vx", x[640:]), ("vy", y[640:])):
        np.save(tmp_path / f"{name}.npy", arr)
    return {
        "run_dir": str(run_dir),
        "model": {"kind": "hrm", "variant": "deep", "d_model": 16, "heads": 2, "block": "gated", "init_std": 0.02},
        "train": {"epochs": 2, "batch_size": 128, "lr": 3e-3, "max_steps": 6, "log_every_steps": 1,
                  "checkpoint_every_steps": 3, "schedule": "onecycle",
                  "device": "cpu", **(train_overrides or {})},  # the gloo path, also on a GPU machine
        "data": {"kind": "npy", "train_x": str(tmp_path / "tx.npy"), "train_y": str(tmp_path / "ty.npy"),
                 "val_x": str(tmp_path / "vx.npy"), "val_y": str(tmp_path / "vy.npy")},
        "progress": False,
    }


def test_two_process_gloo_ddp_keeps_ranks_identical_and_matches_one_process(tmp_path):
    spec = _write_spec(tmp_path, tmp_path / "ddp")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    launch_torchrun(spec_path, nproc=2, timeout=120, capture=True)

    result = json.loads((tmp_path / "ddp" / RESULT_FILE).read_text())
    assert result["world_size"] == 2 and result["steps"] == 6
    digests = result["rank_param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # parameters identical on both ranks
    assert (tmp_path / "ddp" / "last.pt").exists()

    # the global batches do not depend on the world size: one process gives the same loss curve
    single = run_spec({**spec, "run_dir": str(tmp_path / "single")})
    assert single["world_size"] == 1
    ddp_losses = [r["loss"] for r in read_metrics(tmp_path / "ddp") if r["kind"] == "train"]
    one_losses = [r["loss"] for r in read_metrics(tmp_path / "single") if r["kind"] == "train"]
    assert len(ddp_losses) == 6
    np.testing.assert_allclose(ddp_losses, one_losses, rtol=1e-4)
    assert result["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=1e-4)
