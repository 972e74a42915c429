"""Original checkpoints inside hrmlab's evaluator: the seed-v3 loop's per-episode outcomes with the original
hrm_cloudv3 weights (tests/fixtures/seed_models/seed_v3_outcomes.json), and `hrmlab evaluate` on a file
saved the way the original scripts saved theirs (a DataParallel/DDP `module.` prefix included)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hrmlab.evaluate.runner import EvalConfig, evaluate
from hrmlab.forecast.seed_import import load_seed_forecaster
from hrmlab.planning.spacetime_astar import PlannerConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "seed_models"
OUTCOMES = json.loads((FIXTURES / "seed_v3_outcomes.json").read_text())
SCRIPT = "hrm_cloudv3"


def _weights(kind):
    z = np.load(FIXTURES / f"{SCRIPT}.npz")
    return {k[len(kind) + 1:]: torch.from_numpy(z[k]) for k in z.files if k.startswith(kind + ".")}


def _save_original_checkpoint(path, kind):
    """As `torch.save(model.state_dict())` of a DataParallel/DDP-wrapped original model."""
    torch.save({f"module.{k}": v for k, v in _weights(kind).items()}, path)
    return path


def _expected(kind, first, count):
    rows = OUTCOMES["models"][f"{SCRIPT}:{kind}"][first:first + count]
    assert [r["episode"] for r in rows] == list(range(first, first + count))
    return [r["outcome"] for r in rows], [r["steps"] for r in rows]


def test_fixture_is_the_seed_v3_protocol():
    assert OUTCOMES["protocol"] == "seed-v3" and OUTCOMES["time_index"] == "seed"
    assert OUTCOMES["first_episode"] == 0 and OUTCOMES["count"] == 10


def test_seed_v3_evaluation_with_the_original_weights_reproduces_every_episode(tmp_path):
    """hrmlab's seed-v3 evaluation (seed time index) with the golden hrm_cloudv3 HRM and LSTM, loaded through
    load_seed_model, ends every episode of the original loop with the same outcome at the same step."""
    from hrmlab.backends.local import make_backend
    from hrmlab.forecast.registry import ForecasterSpec

    specs = [ForecasterSpec(kind, str(_save_original_checkpoint(tmp_path / f"{kind}.pt", kind)), seed_script=SCRIPT)
             for kind in ("hrm", "lstm")]
    cfg = EvalConfig(protocol="seed-v3", episodes=OUTCOMES["count"], chunk_size=OUTCOMES["count"],
                     forecast_error=False)
    results = evaluate(cfg, BounceGridConfig(), PlannerConfig(time_index="seed"), specs, make_backend(1))
    for kind in ("hrm", "lstm"):
        outcomes, steps = _expected(kind, 0, OUTCOMES["count"])
        assert results.rows[kind].per_episode == outcomes, kind
        assert results.rows[kind].steps == steps, kind


def test_original_checkpoints_evaluate_through_the_cli(tmp_path):
    hrm = _save_original_checkpoint(tmp_path / "best_hrm.pt", "hrm")
    lstm = _save_original_checkpoint(tmp_path / "lstm.pt", "lstm")
    out = tmp_path / "results.json"
    episodes = 3
    proc = subprocess.run(
        [sys.executable, "-m", "hrmlab.cli", "evaluate", "--protocol", "seed-v3", "--episodes", str(episodes),
         "--forecasters", f"hrm=seed:{SCRIPT}:{hrm},lstm=seed:{SCRIPT}:{lstm}", "--set", "planner.time_index=seed",
         "--set", "eval.forecast_error=false", "--json", str(out)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for kind in ("hrm", "lstm"):
        outcomes, steps = _expected(kind, 0, episodes)
        assert data["per_episode"][kind] == outcomes
        assert data["per_episode_steps"][kind] == steps


@pytest.mark.parametrize("spec,needle", [
    ("x=seed:hrm_cloud_v9:{hrm}", "unknown original script"),
    ("x=seed:hrm_cloudv3:{missing}", "does not exist"),
    ("x=seed:hrm_cloudv3", "expected seed:SCRIPT:PATH"),
    ("x=seed:hrm_cloud_8gpu_v2:{hrm}", "do not fit hrm_cloud_8gpu_v2"),
    ("x=seed:hrm_cloudv3:{junk}", "not a PyTorch checkpoint"),
])
def test_bad_seed_forecasters_are_one_line_errors(tmp_path, capsys, spec, needle):
    """The CLI's own entry point, in this process (test_cli.py runs the subprocess path for other errors)."""
    from hrmlab.cli import main

    hrm = _save_original_checkpoint(tmp_path / "hrm.pt", "hrm")
    (tmp_path / "junk.pt").write_text("junk")
    text = spec.format(hrm=hrm, missing=tmp_path / "missing.pt", junk=tmp_path / "junk.pt")
    assert main(["evaluate", "--protocol", "seed-v3", "--episodes", "1", "--forecasters", text]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("hrmlab: error")]
    assert len(lines) == 1 and needle in lines[0]


def test_v1_forecaster_feeds_raw_cell_coordinates(tmp_path):
    """hrm_cloud (v1) trained and planned on raw cell coordinates; every later script on positions / 20."""
    z = np.load(FIXTURES / "hrm_cloud.npz")
    path = tmp_path / "v1.pt"
    torch.save({k[len("hrm."):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("hrm.")}, path)
    forecaster = load_seed_forecaster("hrm_cloud", path, name="v1")
    assert forecaster.grid_size == 1.0 and forecaster.history == 10
    assert load_seed_forecaster("hrm_cloudv2", path, name="v2").grid_size == 20.0
