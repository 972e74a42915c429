"""The CLI's user-error paths: one line, exit code 2, no traceback; and a real evaluate run."""

import json
import subprocess
import sys

import pytest


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def hrmlab(*args):
    return subprocess.run([sys.executable, "-m", "hrmlab.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args,needle", [
    (["evaluate", "--protocol", "nope"], "valid choices: seed-v1"),
    (["evaluate", "--forecasters", "crystal-ball"], "valid choices: ignore"),
    (["evaluate", "--set", "planner.speed=3"], "valid keys in planner"),
    (["evaluate", "--set", "planner.time_index=sideways"], "valid choices: aligned, seed"),
    (["evaluate", "--set", "nosuchsection.x=1"], "unknown config"),
    (["bench", "--only", "warp"], "valid choices"),
    *([(["bench", "--only", "gpu"], "needs a CUDA device")] if not _has_cuda() else []),
])
def test_user_errors_are_one_line_with_exit_code_2(args, needle):
    proc = hrmlab(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hrmlab: error")]
    assert len(lines) == 1 and needle in lines[0]


def test_evaluate_writes_json(tmp_path):
    out = tmp_path / "r.json"
    proc = hrmlab("evaluate", "--protocol", "seed-v3", "--episodes", "10", "--forecasters", "oracle,ignore",
                  "--set", "planner.time_index=seed", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["protocol"] == "seed-v3"
    r = data["results"]["oracle"]
    assert set(r) >= {"successes", "episodes", "success_rate", "ci95", "outcomes"}
    assert r["episodes"] == 10 and set(r["outcomes"]) == {"success", "crash", "timeout"}
    assert data["pairwise"][0]["a"] == "oracle"
    assert "oracle" in proc.stdout


# ------------------------------------------------------------------ issue 32: one clear line for every bad input
from pathlib import Path  # noqa: E402

from hrmlab.cli import main  # noqa: E402


def one_error_line(capsys) -> str:
    """The single `hrmlab: error:` line a user error prints (and nothing else on stderr)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hrmlab: error: "), err
    return lines[0]


@pytest.mark.parametrize("args,needles", [
    (["evaluate", "--episodes", "0"], ["eval.episodes must be >= 1, got 0"]),
    (["evaluate", "--episodes", "-3"], ["eval.episodes must be >= 1, got -3"]),
    (["evaluate", "--start", "-1"], ["eval.start must be >= 0"]),
    (["evaluate", "--set", "world.num_obstacles=-1"], ["world.num_obstacles must be >= 0, got -1"]),
    (["evaluate", "--set", "world.speed=fast"], ["world.speed", "must be a number", "'fast'"]),
    (["evaluate", "--workers", "0"], ["--workers", "must be >= 1, got 0"]),
    (["run", "--backend", "nosuch"], ["--backend", "invalid choice: 'nosuch'", "local", "modal"]),
    (["run", "--workers", "0"], ["--workers", "must be >= 1, got 0"]),
    (["run", "--workers", "-2"], ["--workers", "must be >= 1, got -2"]),
    (["run", "--gpus", "-1"], ["--gpus", "must be >= 0, got -1"]),
    (["study", "--workers", "0"], ["--workers", "must be >= 1"]),
    (["nosuchcommand"], ["invalid choice: 'nosuchcommand'"]),
])
def test_bad_options_are_one_line_exit_2(args, needles, capsys):
    assert main(args) == 2
    line = one_error_line(capsys)
    assert all(n in line for n in needles), line
    assert capsys.readouterr().out == ""  # nothing ran


@pytest.mark.parametrize("override,needle", [
    ("eval.episodes=0", "eval.episodes must be >= 1, got 0"),
    ("eval.episodes=-5", "eval.episodes must be >= 1, got -5"),
    ("train_hrm.epochs=0", "train_hrm.epochs must be >= 1, got 0"),
    ("train_lstm.epochs=-1", "train_lstm.epochs must be >= 1, got -1"),
    ("train_hrm.max_steps=-1", "train_hrm.max_steps must be >= 0, got -1"),
    ("world.num_obstacles=-1", "world.num_obstacles must be >= 0, got -1"),
    ("seed_episodes=0", "seed_episodes must be >= 1, got 0"),
])
def test_bad_config_values_are_refused_when_the_config_is_resolved(override, needle, tmp_path, capsys):
    """Checked before any stage: no data, no training, nothing written (the run folder and cache not even made)."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["run", "--smoke", "--set", override, "--out", str(out), "--cache", str(cache)]) == 2
    assert needle in one_error_line(capsys)
    assert not out.exists() and not cache.exists()


def test_max_steps_0_still_means_no_cap():
    from hrmlab.presets import resolve

    assert resolve("quick", ["train_hrm.max_steps=0"]).train_hrm.max_steps == 0


def test_every_rule_names_a_config_dataclass_and_its_fields():
    """validate.RULES is keyed by class path (no imports): a renamed class or field must not silently lose its
    checks."""
    import dataclasses
    import importlib

    from hrmlab.validate import RULES

    for path, rules in RULES.items():
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        assert dataclasses.is_dataclass(cls), path
        assert list(rules(cls())) == [], f"{path}: its defaults must pass its own checks"


@pytest.mark.parametrize("option,make,needle", [
    ("--out", lambda d: "/proc/hrmlab-x", "is not writable"),
    ("--out", lambda d: d / "a-file", "is a file, not a folder"),
    ("--out", lambda d: d / "a-file" / "run", "a-file is a file, not a folder"),
    ("--cache", lambda d: d / "a-file", "is a file, not a folder"),
    ("--cache", lambda d: "/proc/hrmlab-x/cache", "is not writable"),
])
def test_unwritable_run_paths_are_refused_before_any_stage(option, make, needle, tmp_path, capsys):
    (tmp_path / "a-file").write_text("keep me")
    path = str(make(tmp_path))
    other = "--cache" if option == "--out" else "--out"
    assert main(["run", "--smoke", option, path, other, str(tmp_path / "other")]) == 2
    line = one_error_line(capsys)
    assert f"{option} {path}" in line and needle in line
    assert (tmp_path / "a-file").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing else was made


@pytest.mark.parametrize("make,needle", [(lambda d: "/proc/hrmlab-x/r.json", "is not writable"),
                                         (lambda d: d / "a-file" / "r.json", "a-file is a file, not a folder"),
                                         (lambda d: d, "is a folder, not a file")])
def test_evaluate_json_is_checked_before_the_evaluation(make, needle, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    path = str(make(tmp_path))
    assert main(["evaluate", "--forecasters", "oracle", "--episodes", "5", "--json", path]) == 2
    line = one_error_line(capsys)
    assert f"--json {path}" in line and needle in line
    assert capsys.readouterr().out == ""  # no table: nothing was evaluated


@pytest.mark.parametrize("args,needle", [
    (["--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["--episodes", "0", "--smoke"], "--episodes must be >= 1, got 0"),  # no longer ignored under --smoke
    (["--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--only", ",,"], "--only names nothing"),
    (["--models", ","], "--models names nothing"),
    (["--only", "quick,nowhere"], "unknown world preset 'nowhere'"),
    (["--compute-worlds", "nowhere"], "unknown world preset 'nowhere'"),
    (["--lrs", "0.001,-1"], "--lrs must be positive"),
    (["--only", ""], "--only names nothing"),
    (["--compute-scales", "0,2"], "--compute-scales must be positive"),
])
def test_study_settings_are_checked_before_any_work(args, needle, tmp_path, capsys):
    paths = ["--out", str(tmp_path / "s.md"), "--cache", str(tmp_path / "c"), "--runs", str(tmp_path / "r")]
    assert main(["study", *args, *paths]) == 2
    assert needle in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,needle", [("not json at all", "not JSON"), ("[1, 2]", "not a study results file"),
                                            (None, "does not exist")])
def test_study_tabulate_only_needs_a_results_file(content, needle, tmp_path, capsys):
    results = tmp_path / "notes.json"
    if content is not None:
        results.write_text(content)
    assert main(["study", "--tabulate-only", "--json", str(results), "--out", str(tmp_path / "s.md")]) == 2
    line = one_error_line(capsys)
    assert f"--json {results}" in line and needle in line
    assert not (tmp_path / "s.md").exists()
    assert content is None or results.read_text() == content


def test_a_study_never_overwrites_a_file_that_is_not_its_results(tmp_path, capsys):
    results = tmp_path / "s.json"
    results.write_text("{ half a file")
    assert main(["study", "--smoke", "--only", "quick", "--json", str(results), "--out", str(tmp_path / "s.md"),
                 "--cache", str(tmp_path / "c"), "--runs", str(tmp_path / "r")]) == 2
    assert f"--json {results} is not a study results file" in one_error_line(capsys)
    assert results.read_text() == "{ half a file" and not (tmp_path / "c").exists()


def test_a_failed_run_leaves_the_previous_run_folder_untouched(tmp_path, monkeypatch, capsys):
    """config.yaml, results.json, the report and the checkpoint links are written when a run succeeds, together:
    a later run that fails midway (here after training a different LSTM) changes nothing in the folder."""
    import hrmlab.experiments.grid.stages
    from hrmlab.errors import UserError

    out = tmp_path / "run"
    base = ["run", "--smoke", "--set", "models=[lstm]", "--set", "physics_forecasters=[oracle]", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--workers", "1", "--no-progress"]
    assert main(base) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.is_symlink()}
    link = (out / "train" / "lstm").readlink()
    assert {out / "config.yaml", out / "results.json", out / "report.md"} <= set(files)

    def fail(*args, **kwargs):
        raise UserError("evaluation failed (test)")

    monkeypatch.setattr(hrmlab.experiments.grid.stages, "stage_evaluate", fail)
    capsys.readouterr()
    assert main(base + ["--set", "train_lstm.lr=0.002", "--set", "eval.episodes=6"]) == 2
    assert "evaluation failed (test)" in one_error_line(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.is_symlink()} == files
    assert (out / "train" / "lstm").readlink() == link  # still the model results.json names
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 2  # the new model was trained (and is kept)


def test_suites_only_naming_nothing_is_refused_not_every_suite(tmp_path, capsys):
    assert main(["suites", "--only", ",,", "--out", str(tmp_path / "s.md"), "--runs", str(tmp_path / "r"),
                 "--cache", str(tmp_path / "c")]) == 2
    assert "--only names no suite" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
