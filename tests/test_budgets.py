"""`hrmlab study --budgets` (learning curves, issue 30): snapshots of one long run at a constant rate are exactly the
shorter-budget runs (checked parameter for parameter, also across a resume), the snapshots' weight average, the
cache keys of existing configs, bad input, the plan, and the whole command at toy size."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from hrmlab.cli import main
from hrmlab.config import config_hash, key_dict
from hrmlab.data.base import ArraySource
from hrmlab.errors import UserError
from hrmlab.experiments.study import StudyConfig
from hrmlab.experiments.study import budgets
from hrmlab.experiments.study.budgets import (CurveConfig, CurveRun, base_steps, curve_key, curve_recipe, curve_run,
                                              curve_study_defaults, parse_budgets, plan, run_curves)
from hrmlab.experiments.study.config import Arm, arm_configs, smoke_study_defaults
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.forecast.models import build_model
from hrmlab.train.trainer import TrainConfig, TrainHooks, read_metrics, snapshot_name, train

ROOT = Path(__file__).resolve().parents[1]
HISTORY = 10


def _sources():
    g = torch.Generator().manual_seed(0)
    start = torch.rand(1280, 1, 2, generator=g) * 0.6 + 0.2
    vel = torch.randn(1280, 1, 2, generator=g) * 0.05
    x = (start + torch.arange(HISTORY)[None, :, None] * vel).numpy().astype("float32")
    y = vel[:, 0].numpy().astype("float32")
    return ArraySource(x[:1024], y[:1024]), ArraySource(x[1024:], y[1024:])


def _cfg(epochs: int, snapshots, ema: float = 0.9, **kw) -> TrainConfig:
    """8 steps per epoch (1024 samples, batch 128): budget 1 is one epoch, S = 8."""
    base = dict(epochs=epochs, batch_size=128, lr=1e-2, schedule="constant", log_every_steps=1,
                checkpoint_every_steps=0, seed=0, snapshot_steps=list(snapshots), snapshot_ema=ema)
    return TrainConfig(**{**base, **kw})


def _weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run(cfg, run_dir, hooks=None):
    return train(build_model(LSTMConfig(hidden=16), seed=0), *_sources(), cfg, run_dir, progress=False, hooks=hooks)


# ------------------------------------------------------------------------------------------ the trainer
def test_a_long_constant_rate_run_s_snapshots_are_the_shorter_runs_exactly(tmp_path):
    """Budget b of the long run (4 epochs, snapshots at 8, 16, 32) is bit for bit a run trained to budget b alone:
    same batches (each epoch's order is seeded by its index), same constant rate, same weight average."""
    long = _run(_cfg(4, [8, 16, 32]), tmp_path / "long")
    assert [s["step"] for s in long.snapshots] == [8, 16, 32] and long.steps == 32
    assert all(s["weights"] == "ema" and s["val_loss"] > 0 for s in long.snapshots)
    for epochs, step in ((1, 8), (2, 16)):
        short = _run(_cfg(epochs, [step]), tmp_path / f"b{epochs}")
        assert _same(_weights(short.snapshots[0]["checkpoint"]), _weights(tmp_path / "long" / snapshot_name(step)))
        assert short.snapshots[0]["val_loss"] == long.snapshots[[8, 16].index(step)]["val_loss"]
    rows = [r for r in read_metrics(tmp_path / "long") if r["kind"] == "snapshot"]
    assert [r["step"] for r in rows] == [8, 16, 32] and "val_loss" not in rows[0]  # the loss chart reads val_loss


def test_snapshots_hold_the_weight_average_or_with_no_average_the_live_weights(tmp_path):
    live = _run(_cfg(1, [8], ema=0.0), tmp_path / "live")
    assert live.snapshots[0]["weights"] == "live"
    assert _same(_weights(live.snapshots[0]["checkpoint"]), _weights(live.last_checkpoint_path))
    avg = _run(_cfg(1, [8], ema=0.9), tmp_path / "avg")
    assert _same(_weights(avg.last_checkpoint_path), _weights(live.last_checkpoint_path))  # training is unchanged
    assert not _same(_weights(avg.snapshots[0]["checkpoint"]), _weights(avg.last_checkpoint_path))


class _Stop(Exception):
    pass


class _StopAt(TrainHooks):
    def __init__(self, step):
        self.step = step

    def after_step(self, model, step):
        if step == self.step:
            raise _Stop


def test_a_resumed_long_run_keeps_its_snapshots_and_writes_the_later_ones_exactly(tmp_path):
    _run(_cfg(4, [8, 16, 32]), tmp_path / "whole")
    cfg = _cfg(4, [8, 16, 32], checkpoint_every_steps=3)  # last.pt at step 18: a resume mid-epoch
    with pytest.raises(_Stop):
        _run(cfg, tmp_path / "cut", hooks=_StopAt(20))
    kept = {s: (tmp_path / "cut" / snapshot_name(s)).stat().st_mtime_ns for s in (8, 16)}
    assert not (tmp_path / "cut" / snapshot_name(32)).exists()
    resumed = _run(cfg, tmp_path / "cut")
    assert resumed.resumed_from_step == 18 and [s["step"] for s in resumed.snapshots] == [8, 16, 32]
    assert {s: (tmp_path / "cut" / snapshot_name(s)).stat().st_mtime_ns for s in (8, 16)} == kept
    for step in (8, 16, 32):
        cut, whole = tmp_path / "cut" / snapshot_name(step), tmp_path / "whole" / snapshot_name(step)
        assert _same(_weights(cut), _weights(whole))
    assert [r["step"] for r in read_metrics(tmp_path / "cut") if r["kind"] == "snapshot"] == [8, 16, 32]


def test_snapshot_settings_leave_training_keys_alone_and_bad_ones_are_refused(tmp_path):
    assert key_dict(TrainConfig(snapshot_steps=[3], snapshot_ema=0.9)) == key_dict(TrainConfig())
    assert config_hash(TrainConfig(snapshot_steps=[3])) == config_hash(TrainConfig())
    for steps, ema in (([0], 0.0), ([9], 0.0), ([4, 2], 0.0), ([8], 1.0)):
        with pytest.raises(UserError, match="snapshot"):
            _run(_cfg(1, steps, ema=ema), tmp_path / "bad")


def test_the_long_run_s_stage_key_follows_its_snapshots():
    cfg = arm_configs("suite-clockwork", dataclasses.replace(StudyConfig(), **curve_study_defaults()), smoke=True)
    direct = cfg["direct"]
    a = curve_key(curve_recipe(direct, "trm", 3, [1, 2], 1e-3, 1, 0.995), "trm")
    assert a == curve_key(curve_recipe(direct, "trm", 3, [1, 2], 1e-3, 1, 0.995), "trm")
    assert a != curve_key(curve_recipe(direct, "trm", 3, [1, 2], 1e-3, 1, 0.99), "trm")
    assert a != curve_key(curve_recipe(direct, "trm", 3, [2], 1e-3, 1, 0.995), "trm")
    recipe = curve_recipe(direct, "trm", 3, [1, 2, 4], 1e-3, 1, 0.995).train_trm
    assert (recipe.schedule, recipe.snapshot_steps, recipe.epochs, recipe.max_steps) == ("constant", [3, 6, 12], 4, 12)


# ------------------------------------------------------------------------------------------ input and plan
@pytest.mark.parametrize("text,needle", [("0", "positive"), ("1,x", "whole numbers"), ("1.5", "whole numbers"),
                                         ("2,1", "increasing"), ("1,1", "increasing"), ("", "positive")])
def test_bad_budgets_are_one_line_exit_2_before_any_work(text, needle, tmp_path, capsys):
    assert main(["study", "--budgets", text, "--smoke", "--out", str(tmp_path / "c.md"),
                 "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hrmlab: error: --budgets") and needle in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError):
        parse_budgets(text)


def test_a_capacity_budget_off_the_curve_is_refused(tmp_path, capsys):
    assert main(["study", "--budgets", "1,4", "--capacity-budget", "2", "--smoke", "--out", str(tmp_path / "c.md"),
                 "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]) == 2
    assert "--capacity-budget 2 is not one of --budgets 1,4" in capsys.readouterr().err


def test_the_plan_counts_runs_and_steps():
    study = dataclasses.replace(StudyConfig(), **curve_study_defaults())
    arms = study.arms()
    steps = {"hrm-act": 2421, "trm": 2421, "lstm-stateful": 3906}
    p = plan(arms, steps, study, CurveConfig([1, 2, 4, 8], capacity_budget=2))
    assert (p["selection_runs"], p["long_runs"], p["capacity_runs"]) == (9, 9, 6)
    assert p["steps"] == sum(s * (3 + 8 * 3) for s in steps.values()) + 3906 * (3 + 2 * 3)


# ------------------------------------------------------------------------------------------ the command
def test_budgets_smoke_runs_the_cli_and_budget_1_of_the_long_run_is_the_budget_1_run(tmp_path):
    committed = {p.name: p.stat().st_mtime_ns for p in (ROOT / "docs").glob("scaling*")}
    out = tmp_path / "curves.md"
    args = ["study", "--budgets", "1,2", "--smoke", "--capacity-budget", "2", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs"), "--no-progress", "--workers", "1"]
    assert main(args) == 0
    data = json.loads((tmp_path / "curves.json").read_text())
    assert data["kind"] == "learning-curves" and data["smoke"] is True
    world = data["worlds"]["suite-clockwork"]
    assert list(world["arms"]) == ["hrm-act", "trm", "lstm-stateful", world["capacity"]["arm"]]
    for arm in ("hrm-act", "trm", "lstm-stateful"):  # rates chosen at budget 1 by seed 0, which is not evaluated
        sel = world["arms"][arm]["selection"]
        means = {float(lr): v[0] for lr, v in sel["val_loss"].items()}
        assert sel["seeds"] == [0] and world["arms"][arm]["lr"] == min(means, key=means.get)
        assert [r["seed"] for r in world["arms"][arm]["runs"].values()] == [1, 2]
    assert world["capacity"]["arm"].endswith("-w2") and world["arms"][world["capacity"]["arm"]]["width"] == 2
    trm = world["arms"]["trm"]
    S = trm["steps_per_budget"]
    assert S == 3 and trm["flops_per_step"] > 0  # smoke: max_steps 3
    for run in trm["runs"].values():
        assert [(b, p["step"]) for b, p in run["points"].items()] == [("1", S), ("2", 2 * S)]
    rows = json.loads((tmp_path / "curves-episodes.json").read_text())["worlds"]["suite-clockwork"]["rows"]
    assert {"trm@s1@b1", "trm@s2@b2", "lstm-stateful@s1@b2", "bounce-aware", "oracle"} <= set(rows)
    doc = out.read_text()
    assert "Produced by `hrmlab study --budgets 1,2 --smoke --capacity-budget 2`." in doc
    assert all((tmp_path / f"curves-suite-clockwork{s}.png").is_file() for s in ("", "-wall"))
    assert {p.name: p.stat().st_mtime_ns for p in (ROOT / "docs").glob("scaling*")} == committed

    # budget 1 of the long run is what a run trained to budget 1 alone evaluates: train that run and compare
    study = dataclasses.replace(StudyConfig(), **{**curve_study_defaults(), **smoke_study_defaults()})
    from hrmlab.experiments.grid.stages import RunOptions, model_dir, stage_data

    opts = RunOptions(out=tmp_path / "check", cache=tmp_path / "cache", smoke=True, workers=1, progress=False)
    cfgs = arm_configs("suite-clockwork", study, smoke=True)
    data_paths = stage_data(cfgs["direct"], opts, None)
    arm = Arm("trm", "trm", "direct")
    assert base_steps(cfgs["direct"], "trm", data_paths) == S

    seed = trm["runs"]["trm@s1"]["seed"]
    alone = curve_run(CurveRun(curve_recipe(cfgs["direct"], arm.model, S, [1], trm["lr"], seed, world["snapshot_ema"]),
                               arm.model, data_paths, opts, "alone"))
    long_dir = model_dir(tmp_path / "cache", "trm", trm["runs"]["trm@s1"]["key"])
    assert Path(alone["checkpoint"]).parent != long_dir  # two trainings, not one cached stage
    assert _same(_weights(alone["snapshots"][0]["checkpoint"]), _weights(long_dir / snapshot_name(S)))

    # a rerun reuses the stored world; the document and plots come back from the results files alone
    models = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == models
    assert main(args + ["--tabulate-only"]) == 0 and out.read_text() == doc


# ------------------------------------------------------------------------------------------ a move to a fresh machine
def _lean(record: dict) -> dict:
    """A world record without what differs between calls (times, machine, keys of the cache)."""
    drop = {"seconds", "train_seconds", "eval_seconds", "minutes", "calls", "compute_minutes", "machine",
            "forecast_ms_per_step", "backend"}
    if isinstance(record, dict):
        return {k: _lean(v) for k, v in record.items() if k not in drop}
    return [_lean(v) for v in record] if isinstance(record, list) else record


def test_an_interrupted_world_resumes_on_a_fresh_cache_from_its_progress_file(tmp_path, monkeypatch):
    """The curves of a world take hours: the finished units (physics rows, selection runs, evaluated long runs)
    travel in the progress file beside the results, so a rerun with an empty stage cache (another machine) trains
    and evaluates only the unit that was cut off, and the world comes out as an uninterrupted run's."""
    study = dataclasses.replace(StudyConfig(), **{**curve_study_defaults(), **smoke_study_defaults(),
                                                  "models": ["lstm"], "stateful_arms": []})
    curves = CurveConfig([1, 2])

    def run(name, cache):
        return run_curves(study, curves, tmp_path / name / "c.md", tmp_path / name / "c.json", tmp_path / cache,
                          tmp_path / name / "runs", smoke=True, workers=1, progress=False)

    run("whole", "cache-whole")
    whole = json.loads((tmp_path / "whole" / "c.json").read_text())["worlds"]["suite-clockwork"]
    whole_rows = json.loads((tmp_path / "whole" / "c-episodes.json").read_text())["worlds"]["suite-clockwork"]

    real = budgets.curve_run

    def cut_off(job):  # the session ends while seed 2's long run trains
        if job.evaluation is not None and "-s2-" in job.name:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(budgets, "curve_run", cut_off)
    with pytest.raises(KeyboardInterrupt):
        run("moved", "cache-here")
    monkeypatch.setattr(budgets, "curve_run", real)
    units = json.loads((tmp_path / "moved" / "c-progress" / "suite-clockwork.json").read_text())["units"]
    tried = whole["arms"]["lstm"]["selection"]["val_loss"]  # the grid and the extension the choice asked for
    assert len(tried) == 3 and set(units) == {"physics", *(f"lstm-lr{lr}-s0-b1" for lr in tried),
                                              f"lstm-lr{whole['arms']['lstm']['lr']:g}-s1-b2-evaluated"}
    assert "/" not in json.dumps(units)  # no path of this machine travels
    assert (tmp_path / "moved" / "c-progress" / "suite-clockwork.wall.json").is_file()

    run("moved", "cache-fresh")  # another machine: the progress file, no stage cache
    fresh = tmp_path / "cache-fresh"
    assert [p.name.split("-")[0] for p in (fresh / "models").iterdir()] == ["lstm"]  # seed 2's long run alone
    assert len(list((fresh / "evals").glob("*.json"))) == 1  # its snapshots; physics came from the progress file
    assert not (tmp_path / "moved" / "c-progress").exists()
    moved = json.loads((tmp_path / "moved" / "c.json").read_text())["worlds"]["suite-clockwork"]
    moved_rows = json.loads((tmp_path / "moved" / "c-episodes.json").read_text())["worlds"]["suite-clockwork"]
    assert _lean(moved["arms"]) == _lean(whole["arms"]) and _lean(moved["physics"]) == _lean(whole["physics"])
    assert moved_rows == whole_rows and moved["calls"] == 2
