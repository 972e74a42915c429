"""Stacked study runs (hrmlab.experiments.study.stacked): a group of one arm's runs trained as one ensemble leaves
in the stage cache what separate `stage_train` calls would, so that each run's stage is a cache hit after.

Tolerances (CPU, float32; the LSTM arm of a smoke `quick` world, two epochs of four steps at batch 1,024, three
members: seeds 1 and 2 at lr 1e-3, seed 1 at 3e-3). The ensemble runs the trainer's arithmetic with other kernels
(train/ensemble.py, "WHAT IS EXACT": LinearLSTM instead of oneDNN's LSTM, batched matmuls, a row norm for
clipping, an element-wise AdamW instead of the fused one), so the members equal separate runs to float32 rounding,
not bit for bit, and the differences grow with the steps at the model's own rate:
* best.pt weights: measured max |stacked − separate| ≤ 6e-8 after these 8 steps (≤ 1.1e-7 after 24 steps in a
  longer probe; weights are O(0.2), one float32 ulp there is 1.5e-8): asserted ≤ 1e-6, over 10× the measured;
* best validation loss: measured relative difference ≤ 3e-8 (float32 forwards, float64 sums): asserted ≤ 1e-6.
Everything that is not arithmetic — steps, epochs, the checkpoint's progress record, optimiser hyper-parameters,
scheduler state, the metrics rows' steps — is asserted equal.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from hrmlab.experiments.grid.stages import RunOptions, compiled_training, stage_data, stage_train
from hrmlab.experiments.study import stacked
from hrmlab.experiments.study.config import StudyConfig, arm_configs, with_recipe
from hrmlab.experiments.study.train_runs import TrainRun
from hrmlab.experiments.study.stacked import can_stack, groups, train_stacked, why_separate

RECIPE = {"batch_size": 1024, "epochs": 2, "max_steps": 0, "checkpoint_every_steps": 3}
"""Two epochs of 4,464 // 1,024 = 4 steps: epoch ends, best.pt updates and a mid-epoch last.pt (step 3) all occur."""
MEMBERS = [(1e-3, 1), (1e-3, 2), (3e-3, 1)]
WEIGHT_ATOL = 1e-6
VAL_RTOL = 1e-6


class InProcess:
    def map(self, fn, items):
        return [fn(item) for item in items]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # CPU SDPA's per-member vmap fallback: slower, exact
        warnings.filterwarnings("ignore", message="There is a performance drop")
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacked")
    cfgs = arm_configs("quick", StudyConfig(models=["lstm", "trm"], stateful_arms=["lstm"]), smoke=True)
    cfgs = {r: dataclasses.replace(c, device="cpu") for r, c in cfgs.items()}  # forced onto CPU
    opts = RunOptions(out=root / "out", cache=root / "stacked", smoke=True, workers=1, progress=False)
    data_paths = stage_data(cfgs["direct"], opts, InProcess())
    return root, cfgs, data_paths


def make_run(world, cache: str, lr: float, seed: int, model: str = "lstm", rollout: str = "direct", cfg=None,
             **recipe) -> TrainRun:
    root, cfgs, data_paths = world
    cfg = with_recipe(cfg or cfgs[rollout], model, lr=lr, seed=seed, cpu_threads=1, **{**RECIPE, **recipe})
    name = f"{model}-{rollout}-lr{lr:g}-s{seed}"
    opts = RunOptions(out=root / "out" / cache / name, cache=root / cache, smoke=True, workers=1, progress=False)
    return TrainRun(cfg, model, data_paths, opts, name)


def _models(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir()) if (cache / "models").is_dir() else []


@pytest.fixture(scope="module")
def trained(world):
    """The three members trained stacked (cache `stacked`) and separately (cache `separate`)."""
    runs = [make_run(world, "stacked", lr, s) for lr, s in MEMBERS]
    assert [len(g) for g in groups(runs)] == [3]
    together = train_stacked(runs)
    apart = [stage_train(r.cfg, r.model, r.data_paths, r.opts)
             for r in (make_run(world, "separate", lr, s) for lr, s in MEMBERS)]
    return runs, together, apart


def _checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# ------------------------------------------------------------------------------------------ (1) cache hits
def test_stacked_runs_are_stage_cache_hits_with_the_separate_runs_summary_fields(world, trained, monkeypatch):
    root = world[0]
    runs, together, apart = trained
    for got, want in zip(together, apart):
        assert list(got) == list(want)  # the same fields, in stage_train's order
        assert list(got["forecast_metrics"]) == list(want["forecast_metrics"])
        assert got["key"] == want["key"] and Path(got["checkpoint"]).parent.name == f"lstm-{got['key']}"
        assert (got["steps"], got["epochs_completed"], got["stopped_early"]) == (8, 2, False)
        assert got["parameters"] == want["parameters"] and got["seconds"] > 0
    assert len({s["key"] for s in together}) == 3

    def no_training(**kwargs):
        raise AssertionError("stage_train retrained a stacked run")

    monkeypatch.setattr("hrmlab.experiments.grid.training.train_forecaster", no_training)
    before = _models(root / "stacked")
    for run, summary in zip(runs, together):
        assert stage_train(run.cfg, run.model, run.data_paths, run.opts) == summary
        assert (run.opts.out / "train" / "lstm").resolve() == Path(summary["checkpoint"]).parent.resolve()
    assert train_stacked(runs) == together  # cached: nothing is stacked again
    assert _models(root / "stacked") == before


# ------------------------------------------------------------------------------------------ (2) equal weights
def test_each_member_equals_its_separately_trained_run_to_float32_rounding(trained):
    from hrmlab.forecast.loading import load_forecaster
    from hrmlab.forecast.models import build_model
    from hrmlab.train.checkpoint import load_checkpoint
    from hrmlab.train.optim import make_optimizer, make_scheduler
    from hrmlab.train.trainer import read_metrics

    runs, together, apart = trained
    for run, got, want in zip(runs, together, apart):
        a, b = _checkpoint(got["checkpoint"]), _checkpoint(want["checkpoint"])
        assert a["model"].keys() == b["model"].keys()
        diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
        assert diff <= WEIGHT_ATOL, f"{run.name}: best.pt weights differ by {diff:.3g}"
        assert got["best_val_loss"] == pytest.approx(want["best_val_loss"], rel=VAL_RTOL, abs=0)
        assert got["final_val_loss"] == pytest.approx(want["final_val_loss"], rel=VAL_RTOL, abs=0)
        # the trainer's checkpoint, field for field: config, progress (but for time and losses), optimiser, schedule
        assert set(a) == set(b) and a["config"] == b["config"] and (a["step"], a["epoch"]) == (b["step"], b["epoch"])
        pa, pb = ({k: v for k, v in c["extra"]["progress"].items() if k not in ("seconds", "best_val_loss",
                                                                              "final_val_loss")} for c in (a, b))
        assert pa == pb and {k: v for k, v in a["extra"].items() if k != "progress"} == \
            {k: v for k, v in b["extra"].items() if k != "progress"}
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"] and a["scheduler"] == b["scheduler"]
        for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
            assert float(state_a["step"]) == float(state_b["step"])
        # the same rows in metrics.jsonl (values to rounding, not compared here)
        rows = [read_metrics(Path(s["checkpoint"]).parent) for s in (got, want)]
        assert [(r["kind"], r["step"], r["epoch"]) for r in rows[0]] == [(r["kind"], r["step"], r["epoch"])
                                                                         for r in rows[1]]
        # last.pt resumes in an ordinary run: model, AdamW and schedule load; the evaluator loads best.pt
        model = build_model(run.cfg.model_config("lstm"))
        optimizer = make_optimizer("adamw", model.parameters(), 1e-3, 0.01, torch.device("cpu"))
        scheduler = make_scheduler("onecycle", optimizer, 8, 1e-3, 0.0)
        meta = load_checkpoint(got["last_checkpoint_path"], model=model, optimizer=optimizer, scheduler=scheduler,
                               restore_rng=False)
        assert meta["step"] == 8 and meta["extra"]["progress"]["epoch"] == 2
        assert load_forecaster(got["checkpoint"], name="m") is not None


# ------------------------------------------------------------------------------------------ (3) grouping
def test_groups_split_mismatched_runs_and_keep_cached_ones_out(world, trained):
    root, cfgs, _ = world
    runs = trained[0]
    wide = dataclasses.replace(cfgs["direct"], lstm=dataclasses.replace(cfgs["direct"].lstm, hidden=48))
    fresh = [make_run(world, "plan", 1e-3, 1), make_run(world, "plan", 3e-3, 2),  # one arm: stack
             make_run(world, "plan", 1e-3, 1, cfg=wide), make_run(world, "plan", 1e-2, 1, cfg=wide),  # other width
             make_run(world, "plan", 1e-3, 1, rollout="stateful"), make_run(world, "plan", 3e-3, 1, rollout="stateful"),
             make_run(world, "plan", 1e-3, 1, model="trm", batch_size=128),  # below the batch that compiles
             make_run(world, "plan", 3e-3, 1, model="trm", batch_size=128),
             make_run(world, "plan", 1e-3, 2, batch_size=512),  # another batch size: alone
             make_run(world, "plan", 1e-3, 1)]  # the first run again: one stage, trained once
    mixed = [runs[0], *fresh, runs[1]]  # runs[0], runs[1]: trained by the fixture, in the cache
    plan = groups(mixed)
    names = [[r.name + ("-wide" if r.cfg.lstm.hidden == 48 else "") for r in g] for g in plan]
    assert names == [["lstm-direct-lr0.001-s1"],  # cached
                     ["lstm-direct-lr0.001-s1", "lstm-direct-lr0.003-s2"],
                     ["lstm-direct-lr0.001-s1-wide", "lstm-direct-lr0.01-s1-wide"],
                     ["lstm-stateful-lr0.001-s1", "lstm-stateful-lr0.003-s1"],
                     ["trm-direct-lr0.001-s1", "trm-direct-lr0.003-s1"],
                     ["lstm-direct-lr0.001-s2"],  # batch 512
                     ["lstm-direct-lr0.001-s1"],  # a duplicate stage
                     ["lstm-direct-lr0.001-s2"]]  # cached
    assert plan[0][0] is runs[0] and plan[-1][0] is runs[1] and plan[6][0] is fresh[-1]
    assert sorted(map(id, (r for g in plan for r in g))) == sorted(map(id, mixed))  # a partition
    assert [len(g) for g in groups([*fresh[:2], make_run(world, "plan", 1e-2, 3)], max_members=2)] == [2, 1]
    compiled = make_run(world, "plan", 1e-3, 1, model="trm")  # batch 1,024: trm compiles on CPU (with a compiler)
    assert ("compiled" in (why_separate(compiled) or "")) == compiled_training(compiled.cfg, "trm")
    assert not (root / "plan").exists()  # planning trains nothing


def test_stacking_is_for_cuda_by_default():
    assert can_stack("cuda") and can_stack("cuda:1") and not can_stack("cpu")
    assert can_stack("cpu", "on") and not can_stack("cuda", "off")
    with pytest.raises(Exception, match="stacking setting"):
        can_stack("cpu", "sometimes")


# ------------------------------------------------------------------------------------------ (4) fallbacks
@pytest.mark.parametrize("change, reason", [
    (lambda cfg: dataclasses.replace(cfg, lstm=dataclasses.replace(cfg.lstm, dropout=0.1)), "dropout"),
    (lambda cfg: with_recipe(cfg, "lstm", optimizer="lamb"), "adamw only"),
    (lambda cfg: with_recipe(cfg, "lstm", precision="bf16"), "fp32 only"),
    (lambda cfg: with_recipe(cfg, "lstm", snapshot_steps=[2]), "snapshots"),
    (lambda cfg: dataclasses.replace(cfg, hardware=dataclasses.replace(cfg.hardware, gpus=2)), "accumulation"),
])
def test_unsupported_runs_are_not_stacked(world, change, reason):
    cfg = change(world[1]["direct"])
    runs = [make_run(world, "refused", lr, 1, cfg=cfg) for lr in (1e-3, 3e-3)]
    assert reason in why_separate(runs[0])
    assert [len(g) for g in groups(runs)] == [1, 1]
    assert why_separate(make_run(world, "refused", 1e-3, 1)) is None


def test_unsupported_runs_train_separately_and_a_refusing_ensemble_falls_back(world, monkeypatch):
    from hrmlab.train.ensemble import EnsembleUnsupported

    quick = {"batch_size": 32, "epochs": 1, "max_steps": 2}  # smoke-sized: these only go through train_run
    cfg = world[1]["direct"]
    dropout = dataclasses.replace(cfg, lstm=dataclasses.replace(cfg.lstm, dropout=0.1))
    runs = [make_run(world, "fallback", lr, 1, cfg=dropout, **quick) for lr in (1e-3, 3e-3)]
    built = []
    monkeypatch.setattr(stacked._StackedRun, "run", lambda self: built.append(self) or [])
    out = train_stacked(runs)
    assert not built and [s["steps"] for s in out] == [2, 2]  # trained by train_run, not stacked
    assert [stage_train(r.cfg, r.model, r.data_paths, r.opts) for r in runs] == out

    def refuse(self):
        raise EnsembleUnsupported("the forward does not vmap")

    monkeypatch.setattr(stacked._StackedRun, "run", refuse)
    plain = [make_run(world, "fallback", lr, 2, **quick) for lr in (1e-3, 3e-3)]
    assert [len(g) for g in groups(plain)] == [2]
    out = train_stacked(plain)  # the ensemble refused once built: each run trains separately
    assert [s["steps"] for s in out] == [2, 2] and all("diverged" not in s for s in out)
    assert [stage_train(r.cfg, r.model, r.data_paths, r.opts) for r in plain] == out


# ------------------------------------------------------------------------------------------ per-member endings
def test_members_stop_early_and_diverge_alone_as_their_separate_runs_do(world):
    """lr 1e-30 leaves the weights as built (to float32 resolution), so the second epoch's validation loss equals
    the first one's and patience 1 stops that member after two of three epochs; lr 1e30 overflows the loss from
    step 2, so with max_consecutive_nonfinite 2 that member diverges at step 3. The third trains on, unaffected."""
    from hrmlab.experiments.study.train_runs import train_run

    recipe = {"epochs": 3}
    specs = [(1e-30, 1, {"early_stopping_patience": 1}), (1e30, 1, {"max_consecutive_nonfinite": 2}), (1e-3, 3, {})]
    runs = [make_run(world, "endings", lr, s, **recipe, **extra) for lr, s, extra in specs]
    assert [len(g) for g in groups(runs)] == [3]
    together = train_stacked(runs)
    apart = [train_run(make_run(world, "endings-apart", lr, s, **recipe, **extra)) for lr, s, extra in specs]
    stopped, diverged, normal = together
    assert (stopped["stopped_early"], stopped["steps"], stopped["epochs_completed"]) == (True, 8, 2)
    assert diverged == apart[1] == {"diverged": diverged["diverged"], "best_val_loss": None}
    assert "up to step 3" in diverged["diverged"]
    assert (normal["stopped_early"], normal["steps"], normal["epochs_completed"]) == (False, 12, 3)
    for got, want in ((stopped, apart[0]), (normal, apart[2])):
        assert list(got) == list(want)
        assert {k: got[k] for k in ("steps", "epochs_completed", "stopped_early")} == \
            {k: want[k] for k in ("steps", "epochs_completed", "stopped_early")}
        a, b = _checkpoint(got["checkpoint"])["model"], _checkpoint(want["checkpoint"])["model"]
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= WEIGHT_ATOL
        assert got["best_val_loss"] == pytest.approx(want["best_val_loss"], rel=VAL_RTOL, abs=0)
    from hrmlab.experiments.grid.stages import model_dir, train_key

    folder = model_dir(runs[1].opts.cache, "lstm", train_key(runs[1].cfg, "lstm"))
    assert not (folder / "summary.json.done").exists()  # a diverged run is not a finished stage
    assert stage_train(runs[0].cfg, "lstm", runs[0].data_paths, runs[0].opts) == stopped  # cached
