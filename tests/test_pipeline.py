"""The pipeline through its real entry points: every preset end to end at smoke size, the stage cache
(reuse, recompute what changed), hardware refusal, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hrmlab.evaluate.result import RunResult
from hrmlab.experiments.grid.stages import RunOptions, run_experiment
from hrmlab.presets import preset_names, resolve


def hrmlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hrmlab.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One stage cache for the module: presets that share data or models share the cached stage."""
    return tmp_path_factory.mktemp("cache")


# diffusion presets run at smoke size in tests/test_diffusion.py (every one of them)
GRID_PRESETS = [name for name in preset_names() if not name.startswith("diffusion")]


@pytest.mark.parametrize("name", GRID_PRESETS)
def test_every_grid_preset_runs_end_to_end_at_smoke_size(name, cache, tmp_path, monkeypatch):
    # the oracle stands for the physics forecasters and the report is skipped here: both are covered by
    # the CLI run below and by tests/test_report.py; this test is about every preset's own wiring
    monkeypatch.setattr("hrmlab.experiments.grid.stages._write_report", lambda run_dir, animations=0: None)
    cfg = resolve(name, ["physics_forecasters=[oracle]"], smoke=True)
    results = run_experiment(cfg, RunOptions(out=tmp_path / name, cache=cache, smoke=True, workers=1, progress=False))
    main = results.primary
    assert set(main.rows) == {"hrm", "lstm", *cfg.physics_forecasters}
    for row in main.rows.values():
        assert row.episodes == cfg.eval.episodes and sum(row.outcomes.values()) == row.episodes
    if cfg.seed_protocol:
        assert results.evaluations[cfg.seed_protocol].planner["time_index"] == "seed"
    for model in ("hrm", "lstm"):
        assert Path(results.training[model]["checkpoint"]).is_file()
        assert (tmp_path / name / "train" / model / "metrics.jsonl").is_file()
    assert (tmp_path / name / "config.yaml").is_file()
    saved = json.loads((tmp_path / name / "results.json").read_text())
    assert saved["preset"] == name and saved["smoke"] is True


def test_cli_run_reuses_every_stage_and_recomputes_only_what_changed(tmp_path):
    args = ["run", "--smoke", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--workers", "1",
            "--no-progress"]
    first = hrmlab(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "HRM:" in first.stdout and "LSTM:" in first.stdout and "oracle" in first.stdout
    second = hrmlab(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    for stage in ("data", "train/hrm", "train/lstm", "evaluate/seed-v3", "evaluate/standard"):
        assert f"stage {stage}: " in second.stderr
    assert "stage train/hrm: cached" in second.stderr and "stage evaluate/standard: cached" in second.stderr
    assert "generating" not in second.stderr
    changed = hrmlab(*args, "--set", "eval.episodes=6")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "stage train/lstm: cached" in changed.stderr and "stage evaluate/standard: done" in changed.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["evaluations"]["standard"]["episodes"]["count"] == 6


def test_corrupt_cached_evaluation_and_checkpoint_are_redone(tmp_path):
    cfg = resolve("quick", ["physics_forecasters=[oracle]"], smoke=True)
    opts = RunOptions(out=tmp_path / "run", cache=tmp_path / "cache", smoke=True, workers=1, progress=False)
    first = run_experiment(cfg, opts)
    for path in (tmp_path / "cache" / "evals").glob("standard-*.json"):
        path.write_text("{ truncated")
    again = run_experiment(cfg, opts)
    assert _outcomes(again) == _outcomes(first)
    # a checkpoint that no longer matches the checksum in its stage's done marker: retrained, not an error
    Path(first.training["hrm"]["checkpoint"]).write_bytes(b"not a checkpoint")
    proc = hrmlab("run", "--smoke", "--set", "physics_forecasters=[oracle]", "--out", str(tmp_path / "run"),
                  "--cache", str(tmp_path / "cache"), "--workers", "1", "--no-progress")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "stage train/hrm: cached output is corrupt or unreadable" in proc.stderr
    assert "sha256 mismatch" in proc.stderr or "truncated" in proc.stderr
    assert "stage train/lstm: cached" in proc.stderr and "stage data: ready" in proc.stderr  # nothing else lost
    redone = RunResult.from_json(json.loads((tmp_path / "run" / "results.json").read_text()))
    assert Path(first.training["hrm"]["checkpoint"]).read_bytes() != b"not a checkpoint"  # retrained in place
    assert _outcomes(redone) == _outcomes(first)


def _outcomes(run) -> dict:
    return {(p, n): r.per_episode for p, e in run.evaluations.items() for n, r in e.rows.items()}


@pytest.mark.parametrize("args,needle", [
    (["run", "hrm-cloud-8gpu"], "expects 8× H100"),
    (["run", "no-such-preset"], "valid choices: diffusion-cpu"),
    (["run", "--set", "train_hrm.speed=3"], "valid keys in train_hrm"),
    (["train", "quick", "--model", "transformer"], "valid choices: hrm, lstm"),
])
def test_run_user_errors(args, needle, tmp_path):
    proc = hrmlab(*args, "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert needle in proc.stderr.strip().splitlines()[-1]


def test_presets_command_lists_exact_counts():
    proc = hrmlab("presets")
    assert proc.returncode == 0
    assert "28,969,474" in proc.stdout and "1,550,082" in proc.stdout and "diffusion-v2" in proc.stdout


def test_suites_command_tabulates_every_suite(cache, tmp_path):
    from hrmlab.experiments.suites import gap_closed, run_suites

    text = run_suites(tmp_path / "suites.md", tmp_path / "runs", cache, smoke=True, workers=1)
    assert (tmp_path / "suites.md").read_text() == text
    for suite in ("suite-patrol", "suite-rush", "suite-mixed", "suite-turning"):
        assert f"| `{suite}` | 12 |" in text
        assert f"`{suite}` LSTM-only " in text  # the paired LSTM-vs-HRM line
        assert f"- `{suite}`: 24 training episodes; " in text  # its training recipe (smoke size)
        assert f"- `{suite}`: HRM training " in text and "evaluation " in text  # its measured stage times
    assert "suites meet the bar" in text
    best, share = gap_closed({"oracle": _row(0.99), "constant-velocity": _row(0.69), "lstm": _row(0.90),
                              "hrm": _row(0.80)})
    assert best == "lstm" and share == pytest.approx(0.7)
    from hrmlab.experiments.suites import meets_bar

    rows = {"oracle": _row(0.99, (0.98, 0.995)), "constant-velocity": _row(0.69, (0.66, 0.72)),
            "lstm": _row(0.90, (0.88, 0.92))}
    assert meets_bar(rows)
    # the yardstick is the best physics rule: a bounce-aware rule at 0.95 leaves no 15-point gap
    assert not meets_bar({**rows, "bounce-aware": _row(0.95, (0.93, 0.96))})
    assert not meets_bar({**rows, "lstm": _row(0.80, (0.77, 0.83))})  # closes < half
    assert not meets_bar({**rows, "lstm": _row(0.85, (0.71, 0.95))})  # CIs overlap
    assert not meets_bar({**rows, "oracle": _row(0.96, (0.95, 0.97))})  # oracle < 97 %


def _row(rate: float, ci=(0.0, 1.0)):
    from hrmlab.evaluate.result import Row

    return Row(successes=round(100 * rate), episodes=100, success_rate=rate, ci95=ci, outcomes={})


def test_without_progress_bars_evaluation_progress_goes_to_the_log(caplog):
    from hrmlab.progress import LogProgress

    progress = LogProgress(10, "evaluate standard", every_s=0.0)
    with caplog.at_level("INFO", logger="hrmlab.progress"):
        for _ in range(4):
            progress.update(2)
        progress.update(2)  # the last update: the stage's own "done" line follows, no progress line
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [f"evaluate standard: {n}/10 episodes" for n in (2, 4, 6, 8)]
    assert all(line.endswith(" s left") for line in lines)


def test_suites_only_runs_the_named_suites_and_refuses_unknown_ones(cache, tmp_path):
    from hrmlab.errors import UserError
    from hrmlab.experiments.suites import run_suites

    with pytest.raises(UserError, match="unknown suite 'suite-nope'; valid choices: suite-clockwork, suite-mixed"):
        run_suites(tmp_path / "x.md", tmp_path / "runs", cache, smoke=True, only=["suite-nope"])
    text = run_suites(tmp_path / "suites.md", tmp_path / "runs", cache, smoke=True, workers=1, only=["suite-rush"])
    assert "| `suite-rush` | 12 |" in text and "| `suite-patrol` | 12 |" not in text
    assert "1 of 1 suites meet the bar" in text or "0 of 1 suites meet the bar" in text
    assert "is a control" not in text  # suite-turning was not run


def test_an_fp16_lstm_recipe_trains_in_fp32_on_cpu(cache, tmp_path, monkeypatch, caplog):
    # the 8gpu presets train their LSTM in fp16; CPU has no fp16 LSTM kernel, so the recipe falls back
    monkeypatch.setattr("hrmlab.experiments.grid.stages._write_report", lambda run_dir, animations=0: None)
    cfg = resolve("quick", ["physics_forecasters=[oracle]", "train_lstm.precision=fp16", "eval.episodes=2",
                            "seed_protocol="], smoke=True)
    with caplog.at_level("WARNING", logger="hrmlab.train"):
        results = run_experiment(cfg, RunOptions(out=tmp_path / "run", cache=cache, smoke=True, workers=1,
                                                 progress=False))
    assert "precision fp16 for the LSTM is not available on CPU; training it in fp32" in caplog.text
    assert Path(results.training["lstm"]["checkpoint"]).is_file()
