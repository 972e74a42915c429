"""`hrmlab study` on the other engines: Slurm array jobs through submitit's local executor (real job files, real
subprocesses) and Modal offline (real `modal` objects, functions run with `.local()`). Each engine's world record
is the local study's, figure for figure; a failed run is resubmitted, what fails on every attempt is named once
the rest has finished, and a rerun trains only what is missing.
"""

import json
import os
import sys
from pathlib import Path

import cloudpickle
import pytest

from hrmlab.backends.retry import RunsFailed, map_settled, reason, settle_each
from hrmlab.cli import main
from hrmlab.experiments.study import StudyConfig
from hrmlab.experiments.study.run import LocalEngine, run_study
from hrmlab.experiments.study.train_runs import TrainRun

submitit = pytest.importorskip("submitit")

from hrmlab.backends.slurm import SlurmBackend  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # array tasks unpickle this module's helpers by value

TOY = StudyConfig(worlds=["quick"], models=["lstm"], stateful_arms=[], lrs=[1e-3, 3e-3], grid_extensions=0, seeds=2,
                  compute_scales=[])
"""A smoke world: seed 0 at two rates, seeds 1-2 at the chosen one (4 runs), 12 test episodes."""
TIMING = ("minutes", "calls", "compute_minutes", "machine", "backend", "train_seconds", "forecast_ms_per_step")
"""Fields that measure the machine, not the result."""


def _figures(value):
    """A record without its timing fields: what must be equal whichever engine ran the world."""
    if isinstance(value, dict):
        return {k: _figures(v) for k, v in value.items() if k not in TIMING}
    return value


def _models(cache: Path) -> int:
    return len(list((cache / "models").iterdir()))


@pytest.fixture(scope="module")
def local_world(tmp_path_factory):
    """The toy world on the local engine (in process): the reference every engine must reproduce."""
    root = tmp_path_factory.mktemp("local")
    run_study(TOY, root / "study.md", root / "study.json", root / "cache", root / "runs", smoke=True, workers=1,
              progress=False)
    data = json.loads((root / "study.json").read_text())
    episodes = json.loads((root / "study-episodes.json").read_text())
    return data["worlds"]["quick"], episodes["worlds"]["quick"]


# ------------------------------------------------------------------------------------------ settled maps
def flaky(item):
    """Fails the first time it sees `item` (a marker file records the attempt), succeeds after."""
    marker, value = item
    if not Path(marker).exists():
        Path(marker).write_text("tried")
        raise RuntimeError(f"node lost while running {value}")
    return value * 10


def test_map_settled_resubmits_the_failed_inputs_together_and_names_what_fails_every_time(tmp_path):
    calls = []

    def mapper(batch):
        calls.append([v for _, v in batch])
        return settle_each(flaky, batch)

    items = [(str(tmp_path / f"m{i}"), i) for i in range(3)]
    (tmp_path / "m1").write_text("tried")  # input 1 succeeds at once; 0 and 2 fail once
    assert map_settled(mapper, items, retries=1, engine="test") == [0, 10, 20]
    assert calls == [[0, 1, 2], [0, 2]]

    def always(batch):
        return [ValueError(f"bad {v}") if v else v for v in batch]

    with pytest.raises(RunsFailed) as err:
        map_settled(always, [0, 1, 2], retries=2, engine="modal", what="training runs", describe=lambda v: f"run {v}")
    msg = str(err.value)
    assert msg.startswith("modal: 2 training runs failed after 3 attempts (run 1: ValueError: bad 1; run 2:")
    assert "rerun the same command to resume" in msg and "\n" not in msg
    assert [name for name, _ in err.value.failures] == ["run 1", "run 2"]


def test_reason_is_the_innermost_line_of_a_remote_traceback():
    remote = RuntimeError("Job (task=0) failed during processing with trace:\n------\nTraceback (most recent call "
                          "last):\n  File \"x.py\", line 1, in f\n    f()\n    ^^^\nKeyError: 'lr'\n\n------\n"
                          "You can check full logs with: a.err")
    assert reason(remote) == "KeyError: 'lr'"
    assert reason(OSError("disk full\nmore")) == "OSError: disk full"


# ------------------------------------------------------------------------------------------ Slurm
def test_slurm_array_tasks_run_in_their_own_processes_and_a_failed_task_is_resubmitted(tmp_path):
    backend = SlurmBackend(tmp_path / "jobs", cluster="local", retries=1)
    assert backend.map(os.getpid, []) == []
    pids = backend.map(lambda _: os.getpid(), [0, 1])
    assert os.getpid() not in pids  # real subprocesses, not this one
    items = [(str(tmp_path / f"m{i}"), i) for i in range(2)]
    assert backend.map(flaky, items) == [0, 10]  # both failed in their first array, both resubmitted
    with pytest.raises(RunsFailed, match=r"slurm: 1 flaky tasks failed after 1 attempt \(\(.*, 'x'\): RuntimeError: node lost"):
        SlurmBackend(tmp_path / "jobs", cluster="local", retries=0).map(flaky, [(str(tmp_path / "new"), "x")])


def test_slurm_study_world_equals_the_local_one(local_world, tmp_path):
    record, episodes = local_world
    code = main(["study", "--smoke", "--only", "quick", "--models", "lstm", "--stateful-arms", "", "--lrs",
                 "0.001,0.003", "--grid-extensions", "0", "--seeds", "2", "--compute-scales", "",
                 "--out", str(tmp_path / "study.md"), "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs"),
                 "--no-progress", "--backend", "slurm", "--slurm-cluster", "local", "--slurm-option", "timeout_min=30"])
    assert code == 0
    slurm = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]
    assert _figures(slurm) == _figures(record)  # every figure, seed and selection loss
    assert json.loads((tmp_path / "study-episodes.json").read_text())["worlds"]["quick"] == episodes
    assert slurm["backend"] == "slurm array jobs, submitit's local executor, CPU per task"
    assert "(slurm array jobs, submitit's local executor, CPU per task)" in (tmp_path / "study.md").read_text()
    assert any((tmp_path / "cache" / "slurm").iterdir())  # the job files live beside the cache


def test_slurm_settings_are_checked_before_anything_is_submitted(tmp_path, capsys):
    base = ["study", "--smoke", "--only", "quick", "--out", str(tmp_path / "s.md"), "--cache", str(tmp_path / "c"),
            "--backend", "slurm", "--slurm-cluster", "local"]
    assert main(base + ["--slurm-option", "gpus_per_nodes=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hrmlab: error: --slurm-option:") and "gpus_per_nodes" in err and "\n" not in err
    assert main(base + ["--slurm-option", "partition"]) == 2
    assert "--slurm-option takes KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "c" / "slurm").exists() or not any((tmp_path / "c" / "slurm").iterdir())


# ------------------------------------------------------------------------------------------ Modal, offline
modal = pytest.importorskip("modal")

from hrmlab.cloud import launcher, modal_app, orchestrate  # noqa: E402


class Flaky:
    """A settled train map through the real Modal function (`.local()`), failing chosen runs: `once` on their
    first attempt (a lost container), `always` on every attempt. Records what was submitted."""

    def __init__(self, once=(), always=()):
        self.once, self.always, self.submitted = set(once), set(always), []

    def train(self, run):
        self.submitted.append(run.describe())
        if run.describe() in self.always:
            raise RuntimeError(f"container for {run.describe()} was preempted")
        if run.describe() in self.once:
            self.once.discard(run.describe())
            raise RuntimeError(f"container for {run.describe()} was lost")
        return modal_app.train_study_run.local(run)

    def __call__(self, items, resources):
        assert resources["gpu"] is None  # a CPU world preset trains in CPU containers
        return settle_each(self.train, items)


def _modal_world(cache: Path, train_map):
    local = modal_app.fan_out(modal_app.collect_shard), modal_app.fan_out(modal_app.evaluate_chunk)
    return orchestrate.study_world_with("quick", TOY, [], True, *local, map_train=train_map, cache_root=cache,
                                        retries=1)


pytestmark_modal = pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning")


@pytestmark_modal
def test_modal_world_resubmits_a_lost_run_and_equals_the_local_world(local_world, tmp_path):
    record, episodes = local_world
    lost = "lstm-lr0.001-s0"  # a selection run: submitted whichever rate wins
    train = Flaky(once=[lost])
    modal_record, modal_episodes = _modal_world(tmp_path, train)
    assert train.submitted.count(lost) == 2 and len(train.submitted) == 5  # 4 runs, the lost one again
    assert _figures(modal_record) == _figures({k: v for k, v in record.items() if k != "key"})
    assert {k: v for k, v in modal_episodes.items()} == {k: v for k, v in episodes.items() if k != "key"}
    assert modal_record["backend"] == "modal: training in CPU containers"
    assert (tmp_path / "runs" / "study-quick" / "smoke" / "train").is_dir()  # run folders on the Volume's side


@pytestmark_modal
def test_modal_world_names_runs_that_fail_every_attempt_and_a_rerun_trains_only_those(tmp_path):
    first = Flaky(always=["lstm-lr0.001-s0"])  # a selection run: the other run of that map still finishes
    with pytest.raises(RunsFailed) as err:
        _modal_world(tmp_path, first)
    assert str(err.value).startswith("modal: 1 training runs failed after 2 attempts (lstm-lr0.001-s0: "
                                     "RuntimeError: container for lstm-lr0.001-s0 was preempted)")
    assert first.submitted == ["lstm-lr0.001-s0", "lstm-lr0.003-s0", "lstm-lr0.001-s0"]
    assert _models(tmp_path) == 1  # lstm-lr0.003-s0 finished and is cached
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "models").rglob("*") if p.is_file()}
    second = Flaky()
    _modal_world(tmp_path, second)
    assert len(second.submitted) == 4 and _models(tmp_path) == 4  # 2 selection runs + 2 evaluated seeds
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # the cached run was not trained again


@pytestmark_modal
def test_study_on_modal_writes_the_same_documents_as_a_local_study(local_world, tmp_path, monkeypatch):
    record, episodes = local_world
    monkeypatch.setenv("HRMLAB_CACHE", str(tmp_path / "volume"))  # the Volume, as functions see it under .local()

    class LocalOrchestrator:  # modal_app.run_study_world inside a running app
        calls = []

        @classmethod
        def remote(cls, *args):
            cls.calls.append(args)
            return modal_app.run_study_world.local(*args)

    engine = launcher.ModalStudyEngine(LocalOrchestrator, retries=2)
    run_study(TOY, tmp_path / "study.md", tmp_path / "study.json", tmp_path / "cache", tmp_path / "runs", smoke=True,
              progress=False, engine=engine)
    assert LocalOrchestrator.calls == [("quick", TOY, [], True, 2)]
    data = json.loads((tmp_path / "study.json").read_text())
    assert _figures(data["worlds"]["quick"]) == _figures(record)  # the key too: the same study's world
    assert json.loads((tmp_path / "study-episodes.json").read_text())["worlds"]["quick"] == episodes
    assert "(modal: training in CPU containers)" in (tmp_path / "study.md").read_text()
    assert not (tmp_path / "cache").exists() and _models(tmp_path / "volume") == 4  # all work in the "Volume"
    run_study(TOY, tmp_path / "study.md", tmp_path / "study.json", tmp_path / "cache", tmp_path / "runs", smoke=True,
              progress=False, engine=engine)
    assert len(LocalOrchestrator.calls) == 1  # the stored world is reused: Modal is not called again


def test_the_app_has_the_study_functions_on_the_cache_volume_sized_by_the_preset():
    for name in ("run_study_world", "train_study_run"):
        fn = getattr(modal_app, name)
        assert isinstance(fn, modal.Function) and set(fn._spec_.volumes) == {"/cache"}
    assert modal_app.train_study_run._spec_.gpus is None  # the GPU comes from cloud.train_gpu via with_options


def test_study_backend_modal_without_a_token_says_what_to_do(tmp_path, monkeypatch, capsys):
    for var in [v for v in os.environ if v.startswith("MODAL_TOKEN")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "absent.toml"))
    args = ["study", "--smoke", "--only", "quick", "--out", str(tmp_path / "s.md"), "--backend", "modal"]
    assert main(args) == 2
    assert "no Modal token found; run `modal setup`" in capsys.readouterr().err
    assert main(args[:3] + ["nowhere"] + args[4:]) == 2  # a bad world is named before Modal is asked
    assert "unknown world preset 'nowhere'" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_engines_and_runs_name_themselves_for_documents_and_failure_messages():
    assert LocalEngine(1).label == "local, in process" and LocalEngine(2).label == "local process pool, 2 workers"
    assert TrainRun(None, "trm", None, None, "trm-lr0.01-s2").describe() == "trm-lr0.01-s2"
    assert TrainRun(None, "trm", None, None).describe() == "trm"


def test_learning_curves_run_locally_or_on_slurm_and_say_so_for_modal(tmp_path, capsys):
    args = ["study", "--budgets", "1,2", "--smoke", "--out", str(tmp_path / "s.md"), "--cache", str(tmp_path / "c")]
    assert main(args + ["--backend", "modal"]) == 2
    assert "not on Modal" in capsys.readouterr().err
    assert main(args + ["--backend", "slurm", "--slurm-cluster", "local", "--slurm-option", "nope=1"]) == 2
    assert "--slurm-option:" in capsys.readouterr().err  # the Slurm settings are checked before any work
    assert not (tmp_path / "s.json").exists()


def test_stack_on_trains_each_arm_s_runs_as_one_ensemble_with_the_separate_runs_figures(local_world, tmp_path,
                                                                                         caplog):
    """`--stack on` (the GPU default, forced on this CPU): the two selection runs train as one stacked group, then
    the two evaluated seeds; validation losses equal the separate runs' to float32 rounding (stacked.py's
    tolerance, ≤ 1e-6 relative on these LSTM runs; 1e-5 here leaves margin for other CPUs' kernels)."""
    record, _ = local_world
    caplog.set_level("INFO", logger="hrmlab.study")
    run_study(TOY, tmp_path / "study.md", tmp_path / "study.json", tmp_path / "cache", tmp_path / "runs", smoke=True,
              progress=False, engine=LocalEngine(1, "on"))
    assert [r.getMessage() for r in caplog.records if "stacked groups" in r.getMessage()] == [
        "training 2 runs as 1 stacked groups", "training 2 runs as 1 stacked groups"]
    stacked = json.loads((tmp_path / "study.json").read_text())["worlds"]["quick"]["arms"]["lstm"]
    local = record["arms"]["lstm"]
    assert stacked["lr"] == local["lr"]
    for lr, losses in local["selection"]["val_loss"].items():
        assert stacked["selection"]["val_loss"][lr] == pytest.approx(losses, rel=1e-5)
    assert [r["val_loss"] for r in stacked["runs"].values()] == pytest.approx(
        [r["val_loss"] for r in local["runs"].values()], rel=1e-5)
