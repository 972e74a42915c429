"""Threads on shared machines (issue 32): the CLI makes OpenMP wait passively before torch loads, the user's
own variables win, and the CPU training thread count is part of the training stage's cache key, so a shared
cache never hands out a model trained under another thread count."""

import os
import subprocess
import sys

import pytest
import torch

from hrmlab.errors import UserError
from hrmlab.experiments.grid.stages import cpu_training_threads, train_key
from hrmlab.presets import resolve
from hrmlab.threads import available_cpus, configure_process, resolve_cpu_threads, use_cpu_threads


def test_configure_process_sets_passive_waiting_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert configure_process() == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert configure_process() == {}
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def _child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(extra)
    return env


CHILD = ("import os, sys\n"
         "import hrmlab.cli\n"
         "assert 'torch' not in sys.modules, 'torch loaded before the CLI could set OpenMP up'\n"
         "hrmlab.cli.main(['presets'])\n"
         "print('POLICY', os.environ.get('OMP_WAIT_POLICY'))\n")


@pytest.mark.parametrize("user, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_configures_openmp_before_torch_loads(user, expected):
    env = _child_env(**({"OMP_WAIT_POLICY": user} if user else {}))
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"POLICY {expected}" in out.stdout


def test_resolve_cpu_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_cpu_threads(0) == available_cpus()
    assert resolve_cpu_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_cpu_threads(0) == 1  # the user's cap
    with pytest.raises(ValueError, match="cpu_threads"):
        resolve_cpu_threads(-1)


def test_the_thread_count_is_part_of_the_training_key(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    keys = {n: train_key(resolve("quick", [f"train_lstm.cpu_threads={n}", "device=cpu"], smoke=True), "lstm")
            for n in (1, 2)}
    assert keys[1] != keys[2]
    assert cpu_training_threads(resolve("quick", ["device=cpu"], smoke=True), "lstm") == 1  # the default
    auto = resolve("quick", ["train_lstm.cpu_threads=0", "device=cpu"], smoke=True)
    assert cpu_training_threads(auto, "lstm") == available_cpus()
    explicit = resolve("quick", [f"train_lstm.cpu_threads={available_cpus()}", "device=cpu"], smoke=True)
    assert train_key(auto, "lstm") == train_key(explicit, "lstm")  # the key holds the resolved number
    with pytest.raises(UserError, match="train_lstm.cpu_threads"):
        resolve("quick", ["train_lstm.cpu_threads=-2", "device=cpu"], smoke=True)


def test_a_gpu_run_does_not_depend_on_the_cpu_thread_count():
    cfg = resolve("quick", ["device=cuda"], smoke=True)
    assert cpu_training_threads(cfg, "lstm") is None


def test_use_cpu_threads_sets_torch():
    before = torch.get_num_threads()
    try:
        assert use_cpu_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_two_thread_settings_train_two_models_in_one_cache(tmp_path):
    """Real training stages at toy size on one cache: different thread counts never share a checkpoint."""
    from hrmlab.cli import main

    cache = tmp_path / "cache"
    dirs = []
    for n in (1, 2):
        out = tmp_path / f"run{n}"
        assert main(["train", "quick", "--smoke", "--model", "lstm", "--set", f"train_lstm.cpu_threads={n}",
                     "--set", "device=cpu", "--cache", str(cache), "--out", str(out), "--no-progress"]) == 0
        dirs.append((out / "train" / "lstm").resolve())
    assert dirs[0] != dirs[1]
    assert {p.name for p in (cache / "models").iterdir()} == {d.name for d in dirs}


def test_the_contention_bench_children_and_busy_processes_are_real():
    """The bench's parts at toy length: a child process trains the quick LSTM for real with hrmlab's
    threading, and the busy processes it starts are running while the context lasts and gone after."""
    from hrmlab_bench.contention import BusyCores, _child

    env = _child_env(OMP_WAIT_POLICY="PASSIVE")
    quiet = _child("lstm", 0.2, env, threads_setting=1)
    assert quiet["threads"] == 1 and quiet["steps"] >= 4 and quiet["median_ms"] > 0
    assert quiet["wait_policy"] == "PASSIVE"
    with BusyCores(2) as busy:
        assert all(p.poll() is None for p in busy.procs)
    assert all(p.poll() is not None for p in busy.procs)


SUBNORMAL_PROBE = """
import numpy as np, torch
from hrmlab.data.base import ArraySource
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.forecast.models import build_model
from hrmlab.train.trainer import TrainConfig, train

def product():  # 1e-20 * 1e-20 = 1e-40 is subnormal in float32; flushed, it is 0
    return (torch.tensor([1e-20]) * torch.tensor([1e-20])).item()

before = product()
rng = np.random.default_rng(0)
x, y = rng.random((256, 10, 2), dtype=np.float32), rng.random((256, 2), dtype=np.float32)
train(build_model(LSTMConfig(hidden=8), seed=0), ArraySource(x, y), None,
      TrainConfig(epochs=1, batch_size=128, checkpoint_every_steps=0, seed=0), run_dir={run_dir!r}, progress=False)
print(before, product())
"""


def test_a_cpu_training_run_flushes_subnormals(tmp_path):
    """Subnormal Adam moments made a long LSTM run 16-20x slower per step; a CPU training run flushes them to zero
    (in a fresh process: the setting is per process and this one must not depend on test order)."""
    if os.uname().machine != "x86_64":
        pytest.skip("FTZ/DAZ are x86 bits")
    out = subprocess.run([sys.executable, "-c", SUBNORMAL_PROBE.format(run_dir=str(tmp_path / "run"))],
                         capture_output=True, text=True, timeout=300, check=True).stdout.split()
    before, after = float(out[-2]), float(out[-1])
    assert before > 0.0  # a fresh process keeps subnormals (1e-40 is representable, barely)
    assert after == 0.0
