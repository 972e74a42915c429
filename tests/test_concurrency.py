"""Two hrmlab processes on one cache (issue 32): real processes started together on a fresh cache wait on the
stage locks and give what one process alone gives; a study beside a run on the same cache finishes too."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "hrmlab.cli"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _outcomes(run_dir: Path) -> dict:
    """What a run measured: every evaluation's per-episode outcomes and end steps, and the trained models'
    validation losses (timings and paths left out: they differ between processes by nature)."""
    data = json.loads((run_dir / "results.json").read_text())
    evaluations = {name: {"per_episode": ev["per_episode"], "steps": ev.get("per_episode_steps")}
                   for name, ev in data["evaluations"].items()}
    training = {kind: t["best_val_loss"] for kind, t in data["training"].items()}
    return {"evaluations": evaluations, "training": training}


def _run_args(out: Path, cache: Path) -> list[str]:
    return ["run", "--smoke", "--out", str(out), "--cache", str(cache), "--no-progress"]


def test_two_runs_at_once_on_one_fresh_cache_match_a_run_alone(tmp_path):
    shared = tmp_path / "shared-cache"
    first, second = (_start(_run_args(tmp_path / name, shared), tmp_path) for name in ("a", "b"))
    _finish(first), _finish(second)
    _finish(_start(_run_args(tmp_path / "alone", tmp_path / "own-cache"), tmp_path))
    alone = _outcomes(tmp_path / "alone")
    assert alone["evaluations"] and alone["training"]
    assert _outcomes(tmp_path / "a") == alone
    assert _outcomes(tmp_path / "b") == alone
    assert len(list((shared / "models").iterdir())) == len(alone["training"])  # each model trained once


def test_a_study_beside_a_run_on_one_cache(tmp_path):
    cache = tmp_path / "cache"
    study = _start(["study", "--smoke", "--only", "quick", "--models", "lstm", "--compute-scales", "",
                    "--out", str(tmp_path / "study.md"), "--runs", str(tmp_path / "runs"), "--cache", str(cache),
                    "--no-progress"], tmp_path)
    run = _start(_run_args(tmp_path / "run", cache), tmp_path)
    _finish(run), _finish(study)
    assert (tmp_path / "run" / "results.json").is_file()
    stored = json.loads((tmp_path / "study.json").read_text())
    assert list(stored["worlds"]) == ["quick"]
    assert "lstm" in (tmp_path / "study.md").read_text()


def test_map_unordered_hands_a_short_item_back_before_a_long_one():
    """A study's training runs are recorded as each finishes (progress.run_units): a long run submitted first must
    not hold back the short ones behind it. time.sleep: a picklable builtin that costs no CPU."""
    import time

    from hrmlab.backends import as_completed
    from hrmlab.backends.local import ProcessPoolBackend, SerialBackend

    assert [i for i, _ in ProcessPoolBackend(2).map_unordered(time.sleep, [5.0, 0.0])] == [1, 0]
    assert list(SerialBackend().map_unordered(abs, [-2, 3])) == [(0, 2), (1, 3)]
    assert list(as_completed(SerialBackend(), abs, [-2, 3])) == [(-2, 2), (3, 3)]

    class OrderedOnly:  # a backend with `map` alone (the Modal router, Slurm): results in order
        def map(self, fn, items):
            return [fn(x) for x in items]

    assert list(as_completed(OrderedOnly(), abs, [-2, 3])) == [(-2, 2), (3, 3)]
