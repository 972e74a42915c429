"""`hrmlab study`: equal recipes, rate selection on selection seeds that are never evaluated (grid extended at
an edge), fresh evaluated seeds, verdicts from rate differences with Holm, every outcome kept, resumption."""

import dataclasses
import json
import math
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from hrmlab.cli import main
from hrmlab.errors import UserError
from hrmlab.fileio import write_json_atomic
from hrmlab.experiments.study import StudyConfig, equal_recipes, study_command, study_document, tabulate, world_key
from hrmlab.experiments.study.config import Arm, train_field
from hrmlab.experiments.study.run import (WallLedger, choose_rate, episodes_text, extend_rate, longest_first,
                                          machine_label, next_rate, partly_timed, read_episodes, read_results,
                                          select_rates)
from hrmlab.experiments.study.summary import OUTLIER_FACTOR, outlier_ratios, summarize_world
from hrmlab.presets import resolve

ROOT = Path(__file__).resolve().parents[1]


def _study_args(tmp_path, *extra, workers="1"):
    """A smoke study of `quick` into tmp_path. One worker: toy runs train faster in process than a pool starts
    (the pool path is covered by the divergence test)."""
    return ["study", "--smoke", "--only", "quick", *extra, "--out", str(tmp_path / "study.md"),
            "--json", str(tmp_path / "study.json"), "--cache", str(tmp_path / "cache"),
            "--runs", str(tmp_path / "runs"), "--no-progress", *(["--workers", workers] if workers else [])]


def _models(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir())


# ------------------------------------------------------------------------------------------ config and recipes
def test_equal_recipes_give_every_model_the_lstm_recipe_and_no_weight_ema():
    cfg = equal_recipes(resolve("suite-mixed"), ["lstm", "hrm", "trm"])
    assert cfg.train_hrm == cfg.train_lstm == cfg.train_trm  # same optimiser, schedule, batch, epochs → same steps
    assert resolve("suite-mixed").trm.ema_decay > 0 and cfg.trm.ema_decay == 0  # trm's EMA is off, as for the rest
    assert train_field("hrm-act") == "train_hrm_act"


def test_arms_are_the_direct_models_then_the_stateful_ones_and_evaluated_seeds_follow_the_selection_seeds():
    study = StudyConfig()
    assert [(a.name, a.model, a.rollout) for a in study.arms()] == [
        ("lstm", "lstm", "direct"), ("hrm", "hrm", "direct"), ("hrm-act", "hrm-act", "direct"),
        ("trm", "trm", "direct"), ("lstm-stateful", "lstm", "stateful")]
    assert study.selection_seed_ids() == [0] and study.evaluated_seeds() == [1, 2, 3]  # never a selection run
    assert StudyConfig(selection_seeds=3, seeds=2).evaluated_seeds() == [3, 4]
    assert Arm("trm", "trm", "direct").label(2, 4.0) == "trm@s2*4"


def test_the_grid_extends_one_step_beyond_the_edge_the_choice_sits_at():
    assert extend_rate(1e-2, 3e-3) == 3e-2 and extend_rate(1e-3, 3e-3) == 3e-4
    grid = [1e-3, 3e-3, 1e-2]
    assert next_rate(grid, 1e-2) == 3e-2 and next_rate(grid, 1e-3) == 3e-4
    assert next_rate(grid, 3e-3) is None and next_rate([1e-3], 1e-3) is None  # inside; a one-point grid has no edge


class _FakeTrainer:
    """Validation loss as a function of the rate (a bowl around `best`); seeds add nothing."""

    def __init__(self, best: dict):
        self.best, self.calls = best, []

    def select(self, runs):
        self.calls.append(sorted((arm.name, lr, s) for arm, lr, s in runs))
        return {(arm, lr, s): ({"diverged": "nan", "best_val_loss": None} if lr > 0.05 else
                               {"best_val_loss": 1 + abs(math.log10(lr / self.best[arm.name]))})
                for arm, lr, s in runs}


def test_selection_extends_an_edge_choice_redoes_it_and_stops_at_the_limit():
    arms = [Arm("a", "lstm", "direct"), Arm("b", "trm", "direct"), Arm("c", "hrm", "direct")]
    study = StudyConfig(lrs=[1e-3, 3e-3, 1e-2], grid_extensions=1)
    trainer = _FakeTrainer({"a": 0.02, "b": 2e-3, "c": 1e-5})
    sel = select_rates(arms, study, trainer)
    assert sel["a"]["extended"] == [3e-2] and sel["a"]["chosen"] == 3e-2  # top edge → 3e-2 trained, chosen
    assert sel["b"]["extended"] == [] and sel["b"]["chosen"] == 3e-3      # inside: no extension
    assert sel["c"]["extended"] == [3e-4] and sel["c"]["chosen"] == 3e-4  # still at an edge: the limit is 1
    assert list(sel["a"]["val_loss"]) == ["0.001", "0.003", "0.01", "0.03"] and sel["a"]["seeds"] == [0]
    assert trainer.calls[1] == [("a", 3e-2, 0), ("c", 3e-4, 0)]  # the second round trains only the extensions
    twice = select_rates(arms, dataclasses.replace(study, grid_extensions=2), _FakeTrainer({"a": 0.02, "b": 2e-3,
                                                                                             "c": 1e-5}))
    assert twice["c"]["extended"] == [3e-4, 9e-5] and twice["c"]["chosen"] == 9e-5
    assert twice["a"]["extended"] == [3e-2, 9e-2] and twice["a"]["chosen"] == 3e-2  # 9e-2 diverged: 3e-2 stays
    assert twice["a"]["val_loss"]["0.09"] == [None]
    fixed = select_rates(arms, dataclasses.replace(study, grid_extensions=0), _FakeTrainer({"a": 0.02, "b": 2e-3,
                                                                                             "c": 1e-5}))
    assert all(s["extended"] == [] for s in fixed.values()) and fixed["a"]["chosen"] == 1e-2


def test_choose_rate_skips_diverged_candidates_and_refuses_when_all_diverged():
    assert choose_rate("lstm", {1e-3: 2e-4, 3e-3: math.inf, 1e-2: 5e-5}) == 1e-2
    assert choose_rate("lstm", {1e-2: math.inf, 1e-3: 2e-4}) == 1e-3  # a diverged candidate never wins
    with pytest.raises(UserError, match="every candidate"):
        choose_rate("lstm", {1e-3: math.inf, 1e-2: math.inf})


def test_training_runs_are_scheduled_costliest_model_first():
    arms = [Arm(m, m, "direct") for m in ("lstm", "hrm", "hrm-act", "trm")] + [Arm("new", "new-model", "direct"),
                                                                              Arm("lstm-stateful", "lstm", "stateful")]
    runs = [(arm, lr, 0) for arm in arms for lr in (3e-4, 3e-3)]
    order = longest_first(runs)
    assert sorted(order, key=str) == sorted(runs, key=str)  # a reordering: nothing lost, nothing added
    assert [a.name for a, _, _ in order] == ["trm", "trm", "hrm-act", "hrm-act", "hrm", "hrm", "lstm", "lstm",
                                             "lstm-stateful", "lstm-stateful", "new", "new"]
    assert [lr for a, lr, _ in order if a.name == "trm"] == [3e-4, 3e-3]  # stable within a model


def test_a_seed_is_flagged_when_its_validation_loss_is_ten_times_its_siblings_median():
    ratios = outlier_ratios({"a@s1": 1e-4, "a@s2": 1.2e-4, "a@s3": 2.2e-3, "a@s4": None})
    assert list(ratios) == ["a@s3"] and ratios["a@s3"] == pytest.approx(2.2e-3 / 1.1e-4)
    assert outlier_ratios({"a@s1": 1e-4, "a@s2": OUTLIER_FACTOR * 1e-4}) == {"a@s2": OUTLIER_FACTOR}
    assert outlier_ratios({"a@s1": 1e-4}) == {}  # no sibling: nothing to compare


# ------------------------------------------------------------------------------------------ statistics
def _synthetic_world() -> tuple[dict, dict]:
    """A world record and its episodes as `run.study_world` stores them, made with numpy: the yardstick at 90%,
    an arm with exactly its rate on every seed (failing elsewhere), one 6 points above, one 6 points below."""
    rng = np.random.default_rng(7)
    n = 1000

    def outcomes(successes: int) -> str:
        hits = np.zeros(n, bool)
        hits[rng.choice(n, successes, replace=False)] = True
        return "".join("s" if h else "c" for h in hits)

    def run(seed, k, val_loss):
        return {"seed": seed, "val_loss": val_loss, "parameters": 1000, "train_seconds": 10.0, "successes": k,
                "ade": 0.5, "fde": 0.9, "forecast_ms_per_step": 0.2}

    rows, arms = {}, {}
    for name, k in (("same", 900), ("plus", 960), ("minus", 840)):
        runs = {}
        for seed in (1, 2, 3):
            rows[f"{name}@s{seed}"] = outcomes(k)
            runs[f"{name}@s{seed}"] = run(seed, k, 2e-3 if (name, seed) == ("minus", 3) else 1e-4)
        arms[name] = {"model": "lstm", "rollout": "direct", "lr": 0.01, "runs": runs,
                      "selection": {"seeds": [0], "extended": [0.03],
                                    "val_loss": {"0.001": [3e-4], "0.003": [2e-4], "0.01": [1e-4], "0.03": [None]}}}
    physics = {"bounce-aware": 900, "constant-velocity": 700, "oracle": 990}
    for name, k in physics.items():
        rows[name] = outcomes(k)
    record = {"format": 2, "key": "k", "preset": "w", "protocol": "standard", "episodes": n, "selection_seeds": 1,
              "seeds": [1, 2, 3], "arms": arms,
              "physics": {name: {"successes": k, "ade": 0.1, "fde": 0.2, "forecast_ms_per_step": 0.01}
                          for name, k in physics.items()},
              "compute_minutes": 1.0, "machine": "CPU, 2 cores", "minutes": 1.5, "calls": 1}
    episodes = {"key": "k", "indices": {"start": 0, "count": n},
                "rows": {lab: {"outcomes": text, "steps": [40] * n} for lab, text in rows.items()}}
    return record, episodes


def test_verdicts_on_a_synthetic_world_and_tabulation_survives_a_json_round_trip(tmp_path):
    record, episodes = _synthetic_world()
    s = summarize_world(record, episodes)
    assert s["yardstick"] == "bounce-aware"  # the best rule other than the oracle
    verdicts = {a: m["vs_yardstick"]["verdict"] for a, m in s["arms"].items()}
    assert verdicts == {"same": "no significant difference", "plus": "better", "minus": "worse"}
    plus = s["arms"]["plus"]["vs_yardstick"]
    assert plus["estimate"] == pytest.approx(0.06) and 0 < plus["low"] < 0.06 < plus["high"]
    assert plus["p_adjusted"] >= plus["p_value"] and plus["replicates"] == 10_000
    assert [m["seed"] for m in s["arms"]["same"]["mcnemar"]] == [1, 2, 3]
    assert {(t["a"], t["b"]): t["verdict"] for t in s["between"]} == {
        ("same", "plus"): "worse", ("same", "minus"): "better", ("plus", "minus"): "better"}
    assert s["arms"]["minus"]["outliers"] == ["minus@s3"] and s["arms"]["same"]["outliers"] == []
    plus_arm = s["arms"]["plus"]
    assert plus_arm["selection"]["0.03"] is None and plus_arm["extended"] == [0.03]
    assert not plus_arm["at_edge"]  # the extension beyond 0.01 diverged: 0.01 is no longer the grid's edge

    study = StudyConfig(worlds=["w"], models=["same", "plus", "minus"], stateful_arms=[])
    doc = tabulate(study, {"w": record}, {"w": episodes})
    assert "| `w` | 90.0 ± 0.0 | 96.0 ± 0.0 | 84.0 ± 0.0 | bounce-aware 90.0 | 99.0 | plus +6.0 [" in doc
    assert "| plus | minus |" in doc  # better / worse than the best physics rule
    assert "minus@s3 (×20.0)" in doc and "0.03 (extension) → diverged" in doc
    assert "sign test" not in doc
    # the files as run.py writes them, read back: the same document, figure for figure
    (tmp_path / "s.json").write_text(json.dumps({"format": 2, "worlds": {"w": record}}, indent=2))
    (tmp_path / "s-episodes.json").write_text(episodes_text({"w": episodes}))
    back = read_results(tmp_path / "s.json")["worlds"]["w"]
    assert tabulate(study, {"w": back}, read_episodes(tmp_path / "s-episodes.json")) == doc


# ------------------------------------------------------------------------------------------ the command
def test_study_smoke_runs_end_to_end_keeps_every_outcome_and_resumes(tmp_path):
    args = _study_args(tmp_path, "--models", "lstm,trm")  # + lstm-stateful (default), compute scale ×2 (smoke)
    cache = tmp_path / "cache"
    assert main(args) == 0
    data = json.loads((tmp_path / "study.json").read_text())
    assert data["format"] == 2 and data["episodes_file"] == "study-episodes.json"
    world = data["worlds"]["quick"]
    assert list(world["arms"]) == ["lstm", "trm", "lstm-stateful"]
    assert world["arms"]["lstm-stateful"]["rollout"] == "stateful" and world["arms"]["trm"]["rollout"] == "direct"
    for arm in world["arms"].values():
        assert [r["seed"] for r in arm["runs"].values()] == [1, 2]  # fresh seeds: seed 0 only selects
        sel = arm["selection"]
        assert sel["seeds"] == [0] and len(sel["extended"]) == 1  # two rates: the choice is always at an edge
        means = {float(lr): v[0] for lr, v in sel["val_loss"].items()}
        assert arm["lr"] == min(means, key=means.get)  # chosen on validation loss, never on test
    assert world["machine"].endswith(" cores")
    assert len(_models(cache)) == 3 * (2 + 1 + 2)  # per arm: 2 rates + 1 extension (seed 0), 2 evaluated seeds
    episodes = json.loads((tmp_path / "study-episodes.json").read_text())
    rows = episodes["worlds"]["quick"]["rows"]
    assert episodes["worlds"]["quick"]["key"] == world["key"]
    assert {"lstm@s1", "lstm-stateful@s2", "trm@s1*2", "bounce-aware", "oracle"} <= set(rows)
    assert all(len(r["outcomes"]) == world["episodes"] == len(r["steps"]) for r in rows.values())
    assert sorted(world["test_time_compute"]["trm"]["2"]) == ["trm@s1*2", "trm@s2*2"]
    doc = (tmp_path / "study.md").read_text()
    assert "hrmlab study --smoke --only quick --models lstm,trm" in doc and "Best arm" in doc
    assert "| **lstm-stateful** | stateful |" in doc and "Test-time compute" in doc
    assert f"wall time on {world['machine']}" in doc and "| `quick` |" in doc
    assert main(args) == 0  # the stored record is reused: nothing new trained
    assert len(_models(cache)) == 15
    # interrupted before the world's record was written: the cached stages resume it, nothing retrains
    (tmp_path / "study.json").unlink()
    assert main(args) == 0
    assert len(_models(cache)) == 15
    resumed = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]
    assert resumed["arms"] == world["arms"] and resumed["key"] == world["key"]
    assert (resumed["minutes"], resumed["calls"]) == (world["minutes"], 1)  # the closed wall ledger's time
    doc = (tmp_path / "study.md").read_text()
    # another world, tabulated only: nothing runs, the stored quick world stays in the results file
    other = [a if a != "quick" else "suite-rush" for a in args] + ["--tabulate-only"]
    assert main(other) == 0
    assert "Not yet run: `suite-rush`" in (tmp_path / "study.md").read_text()
    assert json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"] == resumed
    # the document from the results and episodes files alone: no cache at all
    shutil.rmtree(cache)
    assert main(args + ["--tabulate-only"]) == 0
    assert (tmp_path / "study.md").read_text() == doc and not cache.exists()
    (tmp_path / "study-episodes.json").unlink()
    assert main(args + ["--tabulate-only"]) == 2  # the outcomes are gone: no figure is made up


def test_study_a_diverging_candidate_rate_loses_the_selection_instead_of_ending_the_study(tmp_path):
    # lr 1e30: Adam moves every weight by ~1e30 on the first step, so the next loss overflows float32;
    # with max_consecutive_nonfinite=1 the trainer gives up at once (the real TrainingDiverged path)
    args = _study_args(tmp_path, "--models", "lstm", "--stateful-arms", "", "--lrs", "1e30,1e-3", "--seeds", "1",
                       "--grid-extensions", "0", "--compute-scales", "",
                       "--set", "train_lstm.max_consecutive_nonfinite=1",
                       workers=None)  # the process pool: a diverged run comes back from a worker as a result
    assert main(args) == 0
    lstm = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]["arms"]["lstm"]
    assert lstm["lr"] == 1e-3
    assert lstm["selection"]["val_loss"]["1e+30"] == [None] and lstm["selection"]["val_loss"]["0.001"][0] > 0
    assert "1e+30 → diverged" in (tmp_path / "study.md").read_text()
    # every candidate diverging is one clear error (exit 2), not a traceback (--force: other --lrs, same file)
    assert main([a if a != "1e30,1e-3" else "1e30" for a in args] + ["--force"]) == 2


def test_selection_seeds_are_never_evaluated_and_reuse_their_cached_runs(tmp_path, capsys):
    args = _study_args(tmp_path, "--models", "lstm", "--stateful-arms", "", "--grid-extensions", "0",
                       "--compute-scales", "")
    cache = tmp_path / "cache"
    assert main(args) == 0
    assert len(_models(cache)) == 2 + 2  # seed 0 at both rates, seeds 1-2 at the chosen one
    one = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]
    assert main(args + ["--selection-seeds", "2"]) == 2  # another study's settings: the results file is kept
    assert "holds another study's results (--selection-seeds 2 here, 1 there)" in capsys.readouterr().err
    assert main(args + ["--selection-seeds", "2", "--force"]) == 0
    world = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]
    m = world["arms"]["lstm"]
    assert world["key"] != one["key"] and world["selection_seeds"] == 2 and m["selection"]["seeds"] == [0, 1]
    assert all(len(v) == 2 for v in m["selection"]["val_loss"].values())
    means = {float(lr): sum(v) / 2 for lr, v in m["selection"]["val_loss"].items()}
    assert m["lr"] == min(means, key=means.get)
    assert sorted(m["runs"]) == ["lstm@s2", "lstm@s3"]  # fresh: the selection seeds 0-1 are not among them
    # new: seed 1 at the rates it did not train at, seeds 2-3 at the chosen rate where not trained before
    assert len(_models(cache)) == 4 + (2 if one["arms"]["lstm"]["lr"] == m["lr"] else 3)
    doc = (tmp_path / "study.md").read_text()
    assert "--selection-seeds 2" in doc and "mean over training seeds 0–1" in doc and "seeds 2–3" in doc


def test_an_interrupted_world_resumes_on_a_fresh_cache_from_its_progress_file(tmp_path, monkeypatch):
    """A world cut off on one machine resumes on another (an empty stage cache) from the progress file beside the
    results: the physics rows, the selection runs and each evaluated run (trained and evaluated in its task) are
    kept there as each finishes, so only the run that was cut off trains again; the file goes once the world's
    record is written, and the world is the uninterrupted one."""
    from hrmlab.experiments.study import run as study_run

    extra = ("--models", "lstm", "--stateful-arms", "", "--grid-extensions", "0", "--compute-scales", "")
    assert main(_study_args(tmp_path / "whole", *extra)) == 0
    whole = json.loads((tmp_path / "whole" / "study.json").read_text())["worlds"]["quick"]
    real = study_run.train_run

    def cut_off(job):  # the session ends while the second evaluated seed trains
        if job.name.endswith("-s2"):
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(study_run, "train_run", cut_off)
    assert main(_study_args(tmp_path / "moved", *extra)) == 130
    monkeypatch.setattr(study_run, "train_run", real)
    units = json.loads((tmp_path / "moved" / "study-progress" / "quick.json").read_text())["units"]
    chosen = f"{whole['arms']['lstm']['lr']:g}"
    assert list(units) == ["physics", "lstm-lr0.001-s0", "lstm-lr0.003-s0", f"lstm-lr{chosen}-s1-evaluated"]
    assert "/" not in json.dumps(units)  # nothing of this machine travels
    shutil.rmtree(tmp_path / "moved" / "cache")  # another machine
    assert main(_study_args(tmp_path / "moved", *extra)) == 0
    fresh = tmp_path / "moved" / "cache"
    assert len(_models(fresh)) == 1 and set(_models(fresh)) <= set(_models(tmp_path / "whole" / "cache"))  # seed 2
    assert len(list((fresh / "evals").glob("*.json"))) == 1  # its row; the physics rows travelled
    assert not (tmp_path / "moved" / "study-progress").exists()
    moved = json.loads((tmp_path / "moved" / "study.json").read_text())["worlds"]["quick"]
    timing = ("train_seconds", "forecast_ms_per_step")  # measured, not computed
    runs = [{k: {f: v for f, v in r.items() if f not in timing} for k, r in w["arms"]["lstm"]["runs"].items()}
            for w in (moved, whole)]
    assert runs[0] == runs[1] and moved["arms"]["lstm"]["selection"] == whole["arms"]["lstm"]["selection"]
    assert (json.loads((tmp_path / "moved" / "study-episodes.json").read_text())["worlds"]["quick"]["rows"]
            == json.loads((tmp_path / "whole" / "study-episodes.json").read_text())["worlds"]["quick"]["rows"])
    assert moved["calls"] == 2  # the open wall ledger travelled too


@pytest.mark.parametrize("extra,needle", [
    (["--only", "nowhere"], "valid choices"), (["--models", "gpt"], "gpt"),
    (["--stateful-arms", "trm"], "trm is not recurrent"), (["--grid-extensions", "-1"], "--grid-extensions must be"),
    (["--selection-seeds", "0"], "--selection-seeds must be >= 1"),
])
def test_study_rejects_bad_settings_before_any_work(extra, needle, tmp_path, capsys):
    assert main(_study_args(tmp_path, *extra)) == 2
    assert needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_smoke_study_never_writes_the_committed_results(tmp_path, monkeypatch, capsys):
    """`hrmlab study --smoke --out check.md` once rewrote docs/study.json with smoke summaries. --json defaults to
    beside --out, a smoke study's default files are under --runs, and a study with other settings than a
    results file's refuses to write into it (without --force) before any work."""
    (tmp_path / "docs").mkdir()
    committed = {p.name: p.read_bytes() for p in (ROOT / "docs").glob("study*") if p.name.startswith(("study.",
                                                                                                   "study-episodes"))}
    for name, data in committed.items():
        (tmp_path / "docs" / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)  # the default docs/study.json is now the copy
    toy = ["study", "--smoke", "--only", "quick", "--models", "lstm", "--stateful-arms", "", "--lrs", "0.001",
           "--seeds", "1", "--compute-scales", "", "--no-progress", "--workers", "1"]
    unchanged = lambda: {n: (tmp_path / "docs" / n).read_bytes() for n in committed} == committed  # noqa: E731
    assert main(toy + ["--out", str(tmp_path / "check.md")]) == 0
    assert unchanged() and (tmp_path / "check-episodes.json").is_file()
    assert json.loads((tmp_path / "check.json").read_text())["smoke"] is True  # --json beside --out
    assert len(_models(tmp_path / ".hrmlab_cache")) == 2  # it did run (selection seed 0, evaluated seed 1)
    assert main(toy) == 0  # without --out: under the runs folder (its stages are all cached now)
    assert unchanged() and (tmp_path / "runs" / "study-smoke.json").is_file()
    capsys.readouterr()
    before = (tmp_path / "check.json").read_bytes()
    assert main([a if a != "0.001" else "0.003" for a in toy] + ["--out", str(tmp_path / "check.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hrmlab: error: --json {tmp_path / 'check.json'} holds another study's results")
    assert "--lrs 0.003 here, 0.001 there" in err and "--force" in err and "\n" not in err
    assert (tmp_path / "check.json").read_bytes() == before
    assert main(toy + ["--json", "docs/study.json", "--out", "docs/study.md"]) == 2
    assert "--smoke here, not there" in capsys.readouterr().err
    assert main(["study", "--only", "quick", "--models", "lstm"]) == 2
    assert "--models lstm here, lstm,hrm,hrm-act,trm there" in capsys.readouterr().err
    assert unchanged()


def test_the_document_names_the_command_that_regenerates_it():
    assert study_command(StudyConfig()) == "hrmlab study"
    side = dataclasses.replace(StudyConfig(), worlds=["quick"], lrs=[3e-4, 1e-3], seeds=1, compute_scales=[],
                               stateful_arms=[], grid_extensions=0)
    command = study_command(side, Path("docs/side.md"), Path("docs/side.json"))
    assert command == ("hrmlab study --only quick --stateful-arms '' --lrs 0.0003,0.001 --grid-extensions 0 --seeds 1 "
                       "--compute-scales '' --out docs/side.md --json docs/side.json")
    doc = study_document(side, {}, out_md=Path("docs/side.md"), out_json=Path("docs/side.json"))
    assert f"`{command}`" in doc and "**A side study**" in doc and "`docs/side.json` holds" in doc
    assert "side study" not in study_document(StudyConfig(), {})
    picked = dataclasses.replace(StudyConfig(), worlds=["quick"], compute_worlds=[])  # selects worlds only
    assert "side study" not in study_document(picked, {})
    robust = dataclasses.replace(StudyConfig(), selection_seeds=3)
    assert study_command(robust) == "hrmlab study --selection-seeds 3"
    doc = study_document(robust, {})
    assert "**A side study** (--selection-seeds differ" in doc and "mean over training seeds 0–2" in doc
    assert "seeds 3–5" in doc  # the evaluated seeds follow the selection seeds


def test_study_help_states_the_default_grid(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    grid = ",".join(f"{lr:g}" for lr in StudyConfig().lrs)
    assert f"(default {grid})" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------------------------------ keys and ledgers
def test_world_key_ignores_settings_at_their_defaults_and_prose():
    """A stored world survives a new setting added with a behaviour-keeping default (and prose edits), but any
    changed result-relevant value rekeys it."""
    from hrmlab.config import changed_dict, config_hash

    @dataclasses.dataclass
    class Old:
        a: int = 1
        b: float = 0.5

    @dataclasses.dataclass
    class New(Old):
        c: str = "added later"

    assert changed_dict(Old(a=2)) == changed_dict(New(a=2)) == {"a": 2}
    assert config_hash(changed_dict(New(a=2, c="other"))) != config_hash(changed_dict(Old(a=2)))
    base = resolve("quick")
    prose = dataclasses.replace(base, description="reworded", provenance="reworded")
    assert changed_dict(prose) == changed_dict(base)
    fewer = dataclasses.replace(base, data=dataclasses.replace(base.data, train_episodes=7))
    assert changed_dict(fewer) != changed_dict(base)


def test_world_key_follows_the_arms_the_grid_and_the_compute_worlds():
    assert StudyConfig().scales_for("quick") == []  # test-time compute is asked for, not default
    study = StudyConfig(compute_worlds=["quick"])
    assert study.scales_for("quick") == study.compute_scales and study.scales_for("suite-rush") == []
    key = world_key("quick", study, [], False)
    for other in (StudyConfig(compute_worlds=["quick"], compute_scales=[2.0]), StudyConfig(),
                  StudyConfig(compute_worlds=["quick"], stateful_arms=[]),
                  StudyConfig(compute_worlds=["quick"], grid_extensions=0)):
        assert world_key("quick", other, [], False) != key
    # the compute scales key the worlds that evaluate them, and no others
    fewer = StudyConfig(compute_worlds=["quick"], compute_scales=[2.0])
    assert world_key("suite-rush", study, [], False) == world_key("suite-rush", fewer, [], False)


def test_wall_ledger_sums_the_calls_of_an_interrupted_world_and_closes_when_it_finishes(tmp_path):
    path = tmp_path / "wall.json"
    with pytest.raises(KeyboardInterrupt):
        with WallLedger(path, "k1"):
            time.sleep(0.05)
            raise KeyboardInterrupt  # the first call is stopped before the world finishes
    first = json.loads(path.read_text())
    assert first["finished"] is False and len(first["calls"]) == 1 and first["calls"][0] >= 0.05 - 1e-9
    with WallLedger(path, "k1") as wall:  # the resuming call finishes the world
        time.sleep(0.05)
        wall.finish()
    assert wall.calls == 2 and wall.seconds >= 0.1 - 1e-9
    assert json.loads(path.read_text())["finished"] is True
    with WallLedger(path, "k1") as again:  # re-summarising a finished world adds nothing
        time.sleep(0.02)
        again.finish()
    assert (again.calls, again.seconds) == (2, wall.seconds)
    with WallLedger(path, "k2") as other:  # other settings: a new ledger, the old calls are not carried over
        assert other.calls == 1 and other.earlier == [] and not other.finished


def test_the_wall_ledger_names_every_machine_a_world_ran_on(tmp_path):
    """A world resumed on another machine reports both machines beside its summed wall time; calls stored before
    machines were kept are counted and said to be on an unrecorded machine."""
    here = machine_label()
    path = tmp_path / "w.wall.json"
    write_json_atomic(path, {"key": "k", "calls": [60.0], "machines": ["Other CPU, 2 cores"], "finished": False})
    with WallLedger(path, "k") as wall:
        assert json.loads(path.read_text())["machines"] == ["Other CPU, 2 cores", here]  # the open call is named
        wall.finish()
    assert wall.calls == 2 and wall.machine == f"Other CPU, 2 cores; {here}"
    assert json.loads(path.read_text())["machines"] == ["Other CPU, 2 cores", here]
    old = tmp_path / "old.wall.json"
    write_json_atomic(old, {"key": "k", "calls": [60.0, 30.0], "finished": False})
    with WallLedger(old, "k") as resumed:
        resumed.finish()
    assert resumed.calls == 3
    assert resumed.machine == f"{here} (and 2 earlier calls on an unrecorded machine)"


def test_an_open_wall_ledger_travels_and_the_closed_one_stays_local(tmp_path):
    """While a world runs its ledger lives beside the results (it moves with the world to another machine); once
    the world finishes it is closed in the run folder and the travelling one is removed."""
    open_, closed = tmp_path / "docs" / "w.wall.json", tmp_path / "runs" / "wall.json"
    with pytest.raises(KeyboardInterrupt):
        with WallLedger(open_, "k", closed=closed):
            raise KeyboardInterrupt
    assert open_.is_file() and not closed.exists()
    with WallLedger(open_, "k", closed=closed) as wall:  # the next call, on any machine that has the file
        wall.finish()
    assert wall.calls == 2 and not open_.exists() and json.loads(closed.read_text())["finished"] is True
    with WallLedger(open_, "k", closed=closed) as again:  # re-summarising: the closed total, nothing reopened
        again.finish()
    assert (again.calls, again.seconds) == (2, wall.seconds) and not open_.exists()
    # an open ledger where ledgers were kept before they travelled (the run folder) is carried on, not lost
    write_json_atomic(closed, {"key": "k2", "calls": [60.0], "finished": False})
    with WallLedger(open_, "k2", closed=closed) as moved:
        moved.finish()
    assert moved.calls == 2 and moved.seconds >= 60.0 and not open_.exists()


def test_a_progress_file_of_another_version_or_damaged_is_one_clear_error_and_is_kept(tmp_path):
    from hrmlab.experiments.study.progress import Progress

    path = tmp_path / "w.json"
    for text in ("{not json", '{"format": 99, "key": "k", "units": {}}', '{"format": 1, "key": "k", "units": {"a": 3}}'):
        path.write_text(text)
        with pytest.raises(UserError, match="progress file"):
            Progress(path, "k")
        assert path.read_text() == text
    path.write_text('{"format": 1, "key": "other", "units": {"a": {"key": "x", "value": 1}}}')
    mine = Progress(path, "k")  # another world key: its units are not this world's
    assert mine.get("a", "x") is None
    mine.put("b", "y", {"v": 2})
    assert Progress(path, "k").get("b", "y") == {"v": 2} and Progress(path, "k").get("b", "z") is None


def test_run_units_skips_stored_units_records_each_result_and_logs_it(tmp_path, caplog):
    """A background world's log says which unit finished and how many are done (one line per unit)."""
    from hrmlab.experiments.study.progress import Progress, run_units

    path = tmp_path / "w.json"
    progress = Progress(path, "k")
    progress.put("a", "ka", {"seconds": 30.0})
    tasks = [("A", "a", "ka", 1), ("B", "b", "kb", 2), ("C", "c", "kc", 3)]
    ran = []

    def run(jobs):
        ran.extend(jobs)
        yield 3, {"diverged": "nan loss"}
        yield 2, {"seconds": 90.0, "eval_seconds": 30.0, "checkpoint": "/here/best.pt"}

    with caplog.at_level("INFO", logger="hrmlab.study.progress"):
        out = run_units(progress, tasks, run)
    assert ran == [2, 3]  # the stored unit is not run again
    assert out == {"A": {"seconds": 30.0}, "B": {"seconds": 90.0, "eval_seconds": 30.0},
                   "C": {"diverged": "nan loss", "best_val_loss": None}}
    assert Progress(path, "k").get("b", "kb") == {"seconds": 90.0, "eval_seconds": 30.0}  # no machine path kept
    lines = [r.getMessage() for r in caplog.records]
    assert "1 of 3 runs come from the progress file" in lines
    assert "c diverged (2 of 3 runs done)" in lines
    assert "b finished in 2.0 min (3 of 3 runs done)" in lines


def test_wall_ledger_heartbeat_keeps_a_killed_call_s_time(tmp_path):
    path = tmp_path / "wall.json"
    wall = WallLedger(path, "k", every=0.01).__enter__()  # never exited: as if the process were killed
    deadline = time.perf_counter() + 10
    while json.loads(path.read_text())["calls"][0] < 0.05 and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert json.loads(path.read_text())["calls"][0] >= 0.05  # rewritten while the call runs
    wall._stop_heartbeat()


def test_partly_timed_runs_leave_the_train_seconds_mean_and_make_compute_minutes_a_lower_bound():
    """A run resumed from a checkpoint that predates the training-time record knows only the resuming call's
    seconds: averaging it in would understate the arm's cost."""
    assert partly_timed({"resumed_from_step": 2000, "seconds": 177.0})
    assert not partly_timed({"resumed_from_step": 2000, "earlier_seconds": 700.0, "seconds": 880.0})
    assert not partly_timed({"resumed_from_step": None, "earlier_seconds": 0.0, "seconds": 880.0})
    record, episodes = _synthetic_world()
    runs = record["arms"]["same"]["runs"]
    runs["same@s1"].update(train_seconds=177.0, seconds_partial=True)
    runs["same@s2"]["train_seconds"], runs["same@s3"]["train_seconds"] = 882.0, 878.0
    record["untimed_runs"] = 1
    s = summarize_world(record, episodes)
    assert s["arms"]["same"]["train_seconds"] == pytest.approx(880.0) and s["arms"]["same"]["train_seconds_timed"] == 2
    assert "train_seconds_timed" not in s["arms"]["plus"]
    doc = tabulate(StudyConfig(worlds=["w"], models=["same"], stateful_arms=[]), {"w": record}, {"w": episodes})
    assert "| 880 (2 of 3 seeds) |" in doc and "≥ 1.0 compute-minutes" in doc and "1 training run of this" in doc


# ------------------------------------------------------------------------------------------ committed documents
def _committed(out_md: str, out_json: str, study: StudyConfig, tmp_path, monkeypatch) -> tuple[str, str]:
    """(committed document, what its own command with --tabulate-only writes from copies of the committed results
    and episodes files alone, in a folder with no cache: a fresh clone)."""
    from hrmlab.experiments.study.run import episodes_path
    from hrmlab.experiments.study.summary import is_format_1

    stored = read_results(ROOT / out_json)["worlds"]
    episodes = read_episodes(episodes_path(ROOT / out_json))
    for w in study.worlds:  # no stored world went stale, and its outcomes are in the repository
        if w in stored and not is_format_1(stored[w]):
            assert stored[w]["key"] == world_key(w, study, [], False) == episodes[w]["key"]
    (tmp_path / "docs").mkdir()
    for path in (Path(out_json), episodes_path(Path(out_json))):
        if (ROOT / path).exists():
            shutil.copy(ROOT / path, tmp_path / path)
    monkeypatch.chdir(tmp_path)
    command = study_command(study, Path(out_md), Path(out_json))
    assert main(shlex.split(command)[1:] + ["--tabulate-only"]) == 0
    assert not (tmp_path / ".hrmlab_cache").exists()
    return (ROOT / out_md).read_text(), (tmp_path / out_md).read_text()


def test_committed_study_document_is_the_tabulation_of_its_results_and_readme_copies_its_overview(tmp_path,
                                                                                                  monkeypatch):
    """docs/study.md is exactly what `hrmlab study --tabulate-only` makes of docs/study.json (and its episodes file):
    every figure and verdict from the final code; README's answer holds its overview table verbatim."""
    doc, text = _committed("docs/study.md", "docs/study.json", StudyConfig(), tmp_path, monkeypatch)
    assert doc == text
    assert "sign test" not in doc.split("## Measured under the previous design", 1)[0]  # no verdict from it
    overview = doc.split("## Overview", 1)[1].split("\n## ", 1)[0]
    table = [line for line in overview.splitlines() if line.startswith("|")]
    assert table[0].startswith("| world |") and len(table) == 2 + len(StudyConfig().worlds)
    answer = (ROOT / "README.md").read_text().split("## The answer", 1)[1].split("\n## ", 1)[0]
    assert "\n".join(table) in answer


@pytest.mark.parametrize("out_md,out_json,changes", [
    ("docs/study-selection.md", "docs/study-selection.json",
     dict(worlds=["suite-patrol"], models=["lstm", "hrm", "hrm-act"], selection_seeds=3)),
    ("docs/study-lowgrid.md", "docs/study-lowgrid.json",
     dict(worlds=["quick", "suite-clockwork", "suite-patrol"], lrs=[3e-4, 1e-3, 3e-3])),
    ("docs/study-lr-check.md", "docs/study-lr-check.json",
     dict(worlds=["quick"], lrs=[3e-3, 1e-2], seeds=1, compute_scales=[])),
])
def test_committed_side_studies_are_the_tabulation_of_their_results_by_their_own_command(out_md, out_json, changes,
                                                                                         tmp_path, monkeypatch):
    """The side studies (three-seed selection in suite-patrol; the lower grid; the 1e-2 check) are this code's
    tabulation of their results files under the settings their command names."""
    study = dataclasses.replace(StudyConfig(), **changes)
    doc, text = _committed(out_md, out_json, study, tmp_path, monkeypatch)
    assert doc == text
    assert f"`{study_command(study, Path(out_md), Path(out_json))}`" in doc
