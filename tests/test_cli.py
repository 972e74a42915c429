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
