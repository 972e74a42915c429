"""`hrmlab study`: equal budgets, recipe selection on validation, seeds, paired statistics, resumption."""

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from hrmlab.cli import main
from hrmlab.evaluate.result import summarize
from hrmlab.errors import UserError
from hrmlab.presets import resolve
from hrmlab.study import (StudyConfig, WallLedger, beyond_seed_noise, choose_rate, equal_budget, grid_edge_models, longest_first,
                          sign_test, study_command, study_document, summarize_world, train_field, world_key,
                          partly_timed, seed_stability_lines, world_section)


def test_equal_budget_gives_every_model_the_same_recipe():
    cfg = equal_budget(resolve("suite-mixed"), ["lstm", "hrm"])
    assert cfg.train_hrm == cfg.train_lstm  # same optimiser, schedule, batch, epochs → same optimiser steps
    assert train_field("hrm-act") == "train_hrm_act"


def test_sign_test_counts_and_p_value():
    a = np.array([1, 1, 1, 0.5, 0, 1])
    b = np.array([0, 0, 0, 0.5, 0, 1])
    out = sign_test(a, b)
    assert (out["a_better"], out["b_better"]) == (3, 0)
    assert out["p_value"] == pytest.approx(0.25)  # exact: 2 · 0.5³


def _evaluation(outcomes: dict[str, list[str]]):
    evaluation = summarize(outcomes, protocol="standard", indices=range(len(next(iter(outcomes.values())))),
                           vocabulary=("success", "crash", "timeout"))
    for row in evaluation.rows.values():
        row.forecast_ms_per_step = 1.0
    return evaluation


def test_summary_picks_the_strongest_physics_yardstick_and_seed_noise():
    S, C = "success", "crash"
    ev = _evaluation({
        "m@s0": [S] * 8 + [C] * 2, "m@s1": [S] * 6 + [C] * 4,
        "k@s0": [S] * 5 + [C] * 5, "k@s1": [S] * 5 + [C] * 5,
        "constant-velocity": [S] * 4 + [C] * 6, "bounce-aware": [S] * 7 + [C] * 3, "oracle": [S] * 10,
    })
    s = summarize_world(ev, ["m", "k"], 2, {}, {})
    assert s["best_physics"] == "bounce-aware"  # the best rule other than the oracle, not constant velocity
    m = s["models"]["m"]
    assert m["mean"] == pytest.approx(0.7) and m["sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert m["vs_best_physics"]["per_seed"]["m@s0"] == {"a_only": 1, "b_only": 0, "p_value": 1.0}
    (between,) = s["between"]
    assert between["margin"] == pytest.approx(0.2)
    assert between["beyond_seed_noise"] == (0.2 > 2 * np.std([0.8, 0.6], ddof=1))  # 0.2 < 0.283: within noise
    assert between["beyond_seed_noise"] is False


def test_grid_edge_models_flag_learning_rates_at_the_ends_of_the_grid():
    sel = {"0.0003": 3.0, "0.001": 2.0, "0.003": 1.0}
    s = {"models": {"a": {"lr": 0.003, "selection": sel}, "b": {"lr": 0.001, "selection": sel},
                    "c": {"lr": 0.0003, "selection": sel}, "d": {"lr": 0.003, "selection": {"0.003": 1.0}}}}
    assert grid_edge_models(s) == [("a", 0.003), ("c", 0.0003)]  # a one-point grid has no edge to speak of


def test_training_runs_are_scheduled_costliest_model_first():
    runs = [(m, lr, 0) for m in ("lstm", "hrm", "hrm-act", "trm", "new-model") for lr in (3e-4, 3e-3)]
    order = longest_first(runs)
    assert sorted(order) == sorted(runs)  # a reordering: nothing lost, nothing added
    assert [m for m, _, _ in order] == ["trm", "trm", "hrm-act", "hrm-act", "hrm", "hrm", "lstm", "lstm",
                                        "new-model", "new-model"]
    assert [lr for m, lr, _ in order if m == "trm"] == [3e-4, 3e-3]  # stable within a model


def test_study_smoke_runs_selects_on_validation_and_resumes(tmp_path, capsys):
    args = ["study", "--smoke", "--only", "quick", "--models", "lstm,hrm", "--out", str(tmp_path / "study.md"), "--json",
            str(tmp_path / "study.json"), "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs"),
            "--no-progress"]
    assert main(args) == 0
    data = json.loads((tmp_path / "study.json").read_text())
    world = data["worlds"]["quick"]
    for model in ("lstm", "hrm"):
        m = world["models"][model]
        assert len(m["seeds"]) == 2  # --smoke: two training seeds
        losses = {float(lr): v for lr, v in m["selection"].items()}
        assert m["lr"] == min(losses, key=losses.get)  # chosen on validation loss, never on test
        assert all(r["episodes"] == world["episodes"] for r in m["seeds"].values())
    assert world["best_physics"] != "oracle"
    assert world["machine"].endswith(" cores")  # wall times are per machine: each world says where it ran
    doc = (tmp_path / "study.md").read_text()
    assert f"wall time on {world['machine']}" in doc
    assert "hrmlab study --smoke" in doc and "Best learned model" in doc
    trained = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert len(trained) == 2 * (2 + 1)  # per model: 2 selection runs + 1 extra seed
    assert "## Overview" in doc and "| `quick` |" in doc  # the one-row-per-world table README copies
    assert main(args) == 0  # the stored summary is reused: nothing new trained
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == trained
    # interrupted before the world's summary was written: the cached stages resume it, nothing retrains
    (tmp_path / "study.json").unlink()
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == trained
    resumed = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]
    assert resumed["models"] == world["models"] and resumed["key"] == world["key"]
    # the world was finished by the first call: its closed wall ledger, not the re-summarising call, gives the time
    assert (resumed["minutes"], resumed["calls"]) == (world["minutes"], 1)
    world = resumed
    doc = (tmp_path / "study.md").read_text()
    assert json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]["key"] == world["key"]
    # another world, tabulated only: nothing runs, the stored quick world stays in the results file
    other = [a if a != "quick" else "suite-rush" for a in args] + ["--tabulate-only"]
    assert main(other) == 0
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == trained
    assert "Not yet run: `suite-rush`" in (tmp_path / "study.md").read_text()
    assert json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"] == world
    assert main(args + ["--tabulate-only"]) == 0  # the document again from the results file alone
    assert (tmp_path / "study.md").read_text() == doc


def test_seed_noise_verdict_needs_two_seeds_per_model():
    a = {"mean": 0.95, "sd": 0.01, "seeds": {"a@s0": {}, "a@s1": {}, "a@s2": {}}}
    b = {"mean": 0.90, "sd": 0.02, "seeds": {"b@s0": {}, "b@s1": {}, "b@s2": {}}}
    assert beyond_seed_noise(a, b) is True  # 5 points > 2 × 2
    assert beyond_seed_noise(a, {**b, "mean": 0.92}) is False  # 3 points < 4
    one = {"mean": 0.80, "sd": 0.0, "seeds": {"c@s0": {}}}  # sd 0 of one seed is not "no noise"
    assert beyond_seed_noise(a, one) is None


def test_the_document_names_the_command_that_regenerates_it():
    assert study_command(StudyConfig()) == "hrmlab study"
    side = dataclasses.replace(StudyConfig(), worlds=["quick"], lrs=[3e-4, 1e-3], seeds=1, compute_scales=[])
    command = study_command(side, Path("docs/side.md"), Path("docs/side.json"))
    assert command == ("hrmlab study --only quick --lrs 0.0003,0.001 --seeds 1 --compute-scales '' "
                       "--out docs/side.md --json docs/side.json")
    doc = study_document(side, {}, out_md=Path("docs/side.md"), out_json=Path("docs/side.json"))
    assert f"`{command}`" in doc and "**A side study**" in doc and "`docs/side.json` holds" in doc
    assert "side study" not in study_document(StudyConfig(), {})
    # --only and --compute-worlds select worlds; they do not change a world's figures
    picked = dataclasses.replace(StudyConfig(), worlds=["quick"], compute_worlds=[])
    assert "side study" not in study_document(picked, {})
    robust = dataclasses.replace(StudyConfig(), selection_seeds=3)  # a different selection: a side study
    assert study_command(robust) == "hrmlab study --selection-seeds 3"
    doc = study_document(robust, {})
    assert "**A side study** (--selection-seeds differ" in doc and "mean over training seeds 0–2" in doc


def test_study_help_states_the_default_grid(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    grid = ",".join(f"{lr:g}" for lr in StudyConfig().lrs)
    assert f"(default {grid})" in " ".join(capsys.readouterr().out.split())


def test_choose_rate_skips_diverged_candidates_and_refuses_when_all_diverged():
    assert choose_rate("lstm", {1e-3: 2e-4, 3e-3: math.inf, 1e-2: 5e-5}) == 1e-2
    assert choose_rate("lstm", {1e-2: math.inf, 1e-3: 2e-4}) == 1e-3  # a diverged first candidate never wins
    with pytest.raises(UserError, match="every candidate"):
        choose_rate("lstm", {1e-3: math.inf, 1e-2: math.inf})


def test_study_a_diverging_candidate_rate_loses_the_selection_instead_of_ending_the_study(tmp_path):
    # lr 1e30: Adam moves every weight by ~1e30 on the first step, so the next loss overflows float32;
    # with max_consecutive_nonfinite=1 the trainer gives up at once (the real TrainingDiverged path)
    args = ["study", "--smoke", "--only", "quick", "--models", "lstm", "--lrs", "1e30,1e-3", "--seeds", "1",
            "--compute-scales", "", "--set", "train_lstm.max_consecutive_nonfinite=1",
            "--out", str(tmp_path / "study.md"), "--json", str(tmp_path / "study.json"),
            "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs"), "--no-progress"]
    assert main(args) == 0
    lstm = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]["models"]["lstm"]
    assert lstm["lr"] == 1e-3
    assert lstm["selection"]["1e+30"] is None and lstm["selection"]["0.001"] > 0
    assert "1e+30 → diverged" in (tmp_path / "study.md").read_text()
    # every candidate diverging is one clear error (exit 2), not a traceback (--force: other --lrs, same file)
    assert main([a if a != "1e30,1e-3" else "1e30" for a in args] + ["--force"]) == 2


def test_study_rejects_unknown_worlds_and_models(tmp_path, capsys):
    base = ["study", "--smoke", "--out", str(tmp_path / "s.md"), "--json", str(tmp_path / "s.json"),
            "--cache", str(tmp_path / "c"), "--runs", str(tmp_path / "r")]
    assert main(base + ["--only", "nowhere"]) == 2
    assert "valid choices" in capsys.readouterr().err
    assert main(base + ["--only", "quick", "--models", "gpt"]) == 2
    assert "gpt" in capsys.readouterr().err


def test_study_selects_on_the_mean_validation_loss_of_several_seeds_and_reuses_the_seed_0_runs(tmp_path, capsys):
    args = ["study", "--smoke", "--only", "quick", "--models", "lstm", "--compute-scales", "", "--out",
            str(tmp_path / "study.md"), "--json", str(tmp_path / "study.json"), "--cache", str(tmp_path / "cache"),
            "--runs", str(tmp_path / "runs"), "--no-progress"]
    models = lambda: sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())  # noqa: E731
    assert main(args) == 0
    one_seed = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]
    assert len(models()) == 3  # two selection runs (seed 0) + the chosen rate's seed 1
    assert "selection_per_seed" not in one_seed["models"]["lstm"] and "selection_seeds" not in one_seed
    assert main(args + ["--selection-seeds", "2"]) == 2  # another study's settings: the results file is kept
    assert "holds another study's results (--selection-seeds 2 here, 1 there)" in capsys.readouterr().err
    assert main(args + ["--selection-seeds", "2", "--force"]) == 0
    assert len(models()) == 4  # only the unchosen rate's seed 1 is new: every other run is a cached stage
    world = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]
    assert world["key"] != one_seed["key"] and world["selection_seeds"] == 2
    m = world["models"]["lstm"]
    for lr, per_seed in m["selection_per_seed"].items():
        assert len(per_seed) == 2 and m["selection"][lr] == pytest.approx(sum(per_seed) / 2, rel=1e-12)
    assert m["lr"] == min((float(lr) for lr in m["selection"]), key=lambda lr: m["selection"][f"{lr:g}"])
    assert sorted(m["seeds"]) == ["lstm@s0", "lstm@s1"]  # the selection runs at the chosen rate are the seeds
    doc = (tmp_path / "study.md").read_text()
    assert "hrmlab study --smoke --only quick --models lstm --selection-seeds 2" in doc  # the command that made it
    assert "mean over training seeds 0–1" in doc and "(validation loss per candidate lr, mean over seeds 0–1)" in doc
    capsys.readouterr()
    assert main(args + ["--selection-seeds", "3"]) == 2  # more than the study's 2 training seeds
    assert "--selection-seeds must be between 1 and --seeds (2)" in capsys.readouterr().err
    assert main(args + ["--selection-seeds", "0"]) == 2
    assert len(models()) == 4


def test_study_smoke_tabulates_test_time_compute_of_recursive_models(tmp_path):
    args = ["study", "--smoke", "--only", "quick", "--models", "lstm,trm", "--compute-scales", "0.5,2",
            "--out", str(tmp_path / "study.md"), "--json", str(tmp_path / "study.json"),
            "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs"), "--no-progress"]
    assert main(args) == 0
    world = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]
    ttc = world["test_time_compute"]
    assert list(ttc) == ["trm"]  # the LSTM has no recursion to scale
    assert sorted(ttc["trm"], key=float) == ["0.5", "1", "2"]
    assert ttc["trm"]["1"]["mean"] == world["models"]["trm"]["mean"]  # ×1 is the main evaluation itself
    for scale in ("0.5", "2"):
        entry = ttc["trm"][scale]
        assert 0.0 <= entry["mean"] <= 1.0 and math.isfinite(entry["ade"])
        test = entry["vs_trained"]
        assert test["a_better"] + test["b_better"] <= world["episodes"] and 0.0 <= test["p_value"] <= 1.0
    assert "Test-time compute" in (tmp_path / "study.md").read_text()


def test_world_key_ignores_settings_at_their_defaults_and_prose():
    """A stored world survives a new setting added with a behaviour-keeping default (and prose edits),
    but any changed result-relevant value rekeys it."""
    import dataclasses as dc

    from hrmlab.config import changed_dict, config_hash

    @dc.dataclass
    class Old:
        a: int = 1
        b: float = 0.5

    @dc.dataclass
    class New(Old):
        c: str = "added later"

    assert changed_dict(Old(a=2)) == changed_dict(New(a=2)) == {"a": 2}
    assert config_hash(changed_dict(New(a=2, c="other"))) != config_hash(changed_dict(Old(a=2)))
    base = resolve("quick")
    prose = dc.replace(base, description="reworded", provenance="reworded")
    assert changed_dict(prose) == changed_dict(base)
    assert changed_dict(dc.replace(base, data=dc.replace(base.data, train_episodes=7))) != changed_dict(base)


def test_test_time_compute_runs_only_in_its_worlds_and_keys_only_them():
    from hrmlab.study import StudyConfig, world_key

    study = StudyConfig()
    assert study.scales_for("quick") == study.compute_scales and study.scales_for("suite-rush") == []
    assert StudyConfig(compute_worlds=["suite-clockwork"]).scales_for("suite-clockwork") == study.compute_scales
    # the compute scales key the worlds that evaluate them, and no others
    fewer = StudyConfig(compute_scales=[2.0])
    assert world_key("quick", study, [], False) != world_key("quick", fewer, [], False)
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
    closed = json.loads(path.read_text())
    assert closed["finished"] is True and len(closed["calls"]) == 2
    with WallLedger(path, "k1") as again:  # re-summarising a finished world adds nothing
        time.sleep(0.02)
        again.finish()
    assert (again.calls, again.seconds) == (2, wall.seconds)
    with WallLedger(path, "k2") as other:  # other settings: a new ledger, the old calls are not carried over
        assert other.calls == 1 and other.earlier == [] and not other.finished


def test_wall_ledger_heartbeat_keeps_a_killed_call_s_time(tmp_path):
    path = tmp_path / "wall.json"
    wall = WallLedger(path, "k", every=0.01).__enter__()  # never exited: as if the process were killed
    deadline = time.perf_counter() + 10
    while json.loads(path.read_text())["calls"][0] < 0.05 and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert json.loads(path.read_text())["calls"][0] >= 0.05  # rewritten while the call runs
    wall._stop_heartbeat()


def test_committed_study_document_is_rendered_from_its_results_and_readme_copies_its_overview():
    """docs/study.md must be exactly what this code tabulates from docs/study.json (every figure from the final
    code, every stored world still matching this code's world key), and README's study table its overview."""
    root = Path(__file__).resolve().parents[1]
    study = StudyConfig()
    stored = json.loads((root / "docs" / "study.json").read_text())["worlds"]
    current = {w: stored[w] for w in study.worlds if w in stored and stored[w]["key"] == world_key(w, study, [], False)}
    assert list(current) == [w for w in study.worlds if w in stored]  # no stored world went stale
    doc = (root / "docs" / "study.md").read_text()
    assert doc == study_document(study, current)
    overview = doc.split("## Overview", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in overview.splitlines() if line.startswith("| `")]
    assert len(rows) == len(current) >= 1
    readme = (root / "README.md").read_text()
    section = readme.split("### The fair comparison", 1)[1].split("\n### ", 1)[0]
    assert [line for line in section.splitlines() if line.startswith("| `")] == rows


def test_committed_selection_side_study_is_rendered_from_its_results_by_its_own_command():
    """docs/study-selection.md (the three-seed selection in suite-patrol) is this code's tabulation of its
    results file under the settings its command names, and its world is current under those settings."""
    root = Path(__file__).resolve().parents[1]
    out_md, out_json = Path("docs/study-selection.md"), Path("docs/study-selection.json")
    study = dataclasses.replace(StudyConfig(), worlds=["suite-patrol"], models=["lstm", "hrm", "hrm-act"],
                                selection_seeds=3)
    stored = json.loads((root / out_json).read_text())["worlds"]
    assert stored["suite-patrol"]["key"] == world_key("suite-patrol", study, [], False)
    assert stored["suite-patrol"]["selection_seeds"] == 3
    doc = (root / out_md).read_text()
    assert doc == study_document(study, stored, out_md=out_md, out_json=out_json)
    assert f"`{study_command(study, out_md, out_json)}`" in doc


def test_seed_stability_counts_failed_seeds_per_chosen_rate_without_the_selection_seeds():
    def model(lr, *rates):
        return {"lr": lr, "seeds": {f"m@s{i}": {"rate": x} for i, x in enumerate(rates)}}
    worlds = {"a": {"models": {"x": model(0.01, 0.95, 0.70, 0.94),    # seed 1 failed: 25 points below seed 0
                               "y": model(0.003, 0.60, 0.95, 0.95),   # seed 0 is the selection run: not counted
                               "z": model(0.003, 0.90)}},              # one seed: nothing to compare
              "b": {"selection_seeds": 2, "models": {"x": model(0.01, 0.99, 0.98, 0.86)}}}  # 13 points: kept
    text = "\n".join(seed_stability_lines(worlds))
    assert "| 0.003 | 2 | 0 |" in text and "| 0.01 | 3 | 1 |" in text
    assert "Failed: `a` x@s1 at 0.01 (-25.0 points)." in text
    assert "Largest gap of a seed that did not fail: 13.0 points (`b` x@s2 at 0.01)" in text
    assert text.endswith("between the two rates: p = 1.\n")  # Fisher exact on [[1, 2], [0, 2]]
    assert seed_stability_lines({"a": {"models": {"z": model(0.003, 0.9)}}}) == []


def test_partly_timed_runs_leave_the_train_seconds_mean_and_make_compute_minutes_a_lower_bound():
    """A run resumed from a checkpoint that predates the training-time record knows only the resuming call's
    seconds (suite-rush's first trm seeds: 177 s of ~880): averaging it in would understate the model's cost."""
    assert partly_timed({"resumed_from_step": 2000, "seconds": 177.0})  # cached before earlier_seconds existed
    assert partly_timed({"resumed_from_step": 2000, "earlier_seconds": None, "seconds": 177.0})
    assert not partly_timed({"resumed_from_step": 2000, "earlier_seconds": 700.0, "seconds": 880.0})
    assert not partly_timed({"resumed_from_step": None, "earlier_seconds": 0.0, "seconds": 880.0})
    S, C = "success", "crash"
    ev = _evaluation({"m@s0": [S] * 8 + [C] * 2, "m@s1": [S] * 7 + [C] * 3, "m@s2": [S] * 9 + [C],
                      "bounce-aware": [S] * 7 + [C] * 3, "oracle": [S] * 10})
    labels, selection = ("m@s0", "m@s1", "m@s2"), {"m": {"chosen": 0.003, "val_loss": {"0.003": 1e-4}}}
    training = {"m@s0": {"parameters": 10, "seconds": 177.0, "seconds_partial": True},
                "m@s1": {"parameters": 10, "seconds": 882.0}, "m@s2": {"parameters": 10, "seconds": 878.0}}
    s = summarize_world(ev, ["m"], 3, training, selection)
    assert s["models"]["m"]["train_seconds"] == pytest.approx(880.0) and s["models"]["m"]["train_seconds_timed"] == 2
    s.update(protocol="p", minutes=83.8, calls=2, compute_minutes=130.5, untimed_runs=2, machine="CPU, 2 cores")
    text = world_section("w", s)
    assert "| 880 (2 of 3 seeds) |" in text and "≥ 130.5 compute-minutes" in text
    assert "2 training runs of this world resumed" in text
    whole = summarize_world(ev, ["m"], 3, {lab: {"parameters": 10, "seconds": 880.0} for lab in labels}, selection)
    assert "train_seconds_timed" not in whole["models"]["m"]  # worlds trained without interruption keep their shape
    whole.update(protocol="p", minutes=83.8, calls=1, compute_minutes=150.0, machine="CPU, 2 cores")
    assert "| 880 |" in world_section("w", whole) and "Timing:" not in world_section("w", whole)
    none = summarize_world(ev, ["m"], 3, {lab: {"parameters": 10, "seconds": 177.0, "seconds_partial": True}
                                          for lab in labels}, selection)
    assert none["models"]["m"]["train_seconds_timed"] == 0
    none.update(protocol="p", minutes=83.8, calls=2, compute_minutes=30.0, untimed_runs=3, machine="CPU, 2 cores")
    assert "| ≥ 177 |" in world_section("w", none)


def test_a_smoke_study_never_writes_the_committed_results(tmp_path, monkeypatch, capsys):
    """The lost-results bug: `hrmlab study --smoke --out check.md` rewrote docs/study.json with smoke summaries.
    --json now defaults to beside --out, a smoke study's default files are under --runs, and a study with other
    settings than a results file's refuses to write into it (without --force) before any work."""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "docs").mkdir()
    committed = {}
    for name in ("study.json", "study.md"):
        committed[name] = (root / "docs" / name).read_bytes()
        (tmp_path / "docs" / name).write_bytes(committed[name])
    monkeypatch.chdir(tmp_path)  # the default docs/study.json is now the copy
    toy = ["study", "--smoke", "--only", "quick", "--models", "lstm", "--lrs", "0.001", "--seeds", "1",
           "--compute-scales", "", "--no-progress"]
    unchanged = lambda: {n: (tmp_path / "docs" / n).read_bytes() for n in committed} == committed  # noqa: E731
    assert main(toy + ["--out", str(tmp_path / "check.md")]) == 0
    assert unchanged()
    assert json.loads((tmp_path / "check.json").read_text())["smoke"] is True  # --json beside --out
    assert len(list((tmp_path / ".hrmlab_cache" / "models").iterdir())) == 1  # it did run (one toy model)
    # the same toy study without --out: its files go under the runs folder (its stages are all cached now)
    assert main(toy) == 0
    assert unchanged() and (tmp_path / "runs" / "study-smoke.json").is_file() and (tmp_path / "runs" / "study-smoke.md").is_file()
    capsys.readouterr()
    # other settings than the stored ones: refused up front, naming the difference; nothing is written
    before = (tmp_path / "check.json").read_bytes()
    assert main([a if a != "0.001" else "0.003" for a in toy] + ["--out", str(tmp_path / "check.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hrmlab: error: --json {tmp_path / 'check.json'} holds another study's results")
    assert "--lrs 0.003 here, 0.001 there" in err and "--force" in err and "\n" not in err
    assert (tmp_path / "check.json").read_bytes() == before
    # pointed at the committed file, a smoke study or a side study is refused too
    assert main(toy + ["--json", "docs/study.json", "--out", "docs/study.md"]) == 2
    assert "--smoke here, not there" in capsys.readouterr().err
    assert main(["study", "--only", "quick", "--models", "lstm"]) == 2
    assert "--models lstm here, lstm,hrm,hrm-act,trm there" in capsys.readouterr().err
    assert unchanged()
