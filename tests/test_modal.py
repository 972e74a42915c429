"""The Modal backend, offline (no network, no token): the app builds, each Modal function runs with
`.local()`, the orchestration completes a whole smoke pipeline through injected local maps (with a 2-process
torchrun DDP launch inside the training function), `modal run --help` works, and the core never imports modal.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

modal = pytest.importorskip("modal")

from hrmlab.backends.routed import RoutedBackend  # noqa: E402
from hrmlab.cloud import launcher, orchestrate  # noqa: E402
from hrmlab.cloud import modal_app  # noqa: E402
from hrmlab.data import shards  # noqa: E402
from hrmlab.data.collect import make_shard, plan_shards  # noqa: E402
from hrmlab.errors import UserError  # noqa: E402
from hrmlab.evaluate.runner import make_chunks  # noqa: E402
from hrmlab.experiments.grid.config import smoke  # noqa: E402
from hrmlab.forecast.registry import ForecasterSpec  # noqa: E402
from hrmlab.presets import PRESET_DIR, load_preset  # noqa: E402

# `.local()` is the point here: no Volume, no containers
pytestmark = pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning")

MODAL_FUNCTIONS = ("collect_shard", "evaluate_chunk", "train", "run_task", "run_pipeline")


class CountingSync(orchestrate.VolumeSync):
    def __init__(self):
        self.calls = []

    def commit(self):
        self.calls.append("commit")

    def reload(self):
        self.calls.append("reload")


def _no_token_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_TOKEN")}
    return {**env, "HOME": str(tmp_path), "MODAL_CONFIG_PATH": str(tmp_path / "absent.toml")}


# ----------------------------------------------------------------------------------------- the app
def test_app_builds_and_sizes_come_from_the_preset():
    assert modal_app.app.name == "hrmlab"
    for name in MODAL_FUNCTIONS:
        assert isinstance(getattr(modal_app, name), modal.Function), name
    # decorators carry no GPU: every size comes from the preset through with_options
    assert modal_app.train._spec_.gpus is None
    assert set(modal_app.train._spec_.volumes) == {"/cache"}
    assert not modal_app.collect_shard._spec_.volumes  # collectors return shards; the orchestrator stores them

    cfg = load_preset("hrm-cloud-8gpu")
    res = orchestrate.resources_for(cfg)
    assert res["train"] == {"gpu": "H100:8", "memory": cfg.cloud.train_memory_mb, "timeout": cfg.cloud.train_timeout_s}
    assert res["collect"] == {"cpu": cfg.cloud.collect_cpu, "memory": cfg.cloud.collect_memory_mb,
                              "timeout": cfg.cloud.collect_timeout_s}
    assert res["eval"] == {"cpu": cfg.cloud.eval_cpu, "gpu": None, "timeout": cfg.cloud.eval_timeout_s}
    assert orchestrate.gpu_count(res["train"]["gpu"]) == 8

    custom = orchestrate.resources_for(load_preset("hrm-cloud-8gpu", ["cloud.train_gpu=A100-80GB:4",
                                                                      "cloud.train_timeout_s=600",
                                                                      "cloud.eval_gpu=L4"]))
    assert custom["train"]["gpu"] == "A100-80GB:4" and custom["train"]["timeout"] == 600
    assert custom["eval"]["gpu"] == "L4"
    assert orchestrate.resources_for(load_preset("quick"))["train"]["gpu"] is None  # CPU preset: CPU container
    for stage, fn in (("collect", modal_app.collect_shard), ("train", modal_app.train),
                      ("eval", modal_app.evaluate_chunk)):
        fn.with_options(**res[stage])  # every key is a valid with_options argument


def test_image_ships_the_package_sources_and_presets():
    package = PRESET_DIR.parent
    shipped = {p.relative_to(package) for p in package.rglob("*") if p.is_file()
               and modal_app.is_shipped_source(p.relative_to(package))}
    assert Path("cloud/modal_app.py") in shipped and Path("presets/hrm-cloud-8gpu.yaml") in shipped
    assert not any("__pycache__" in p.parts for p in shipped)
    assert modal_app.PYPROJECT.is_file()


# ------------------------------------------------------------------------------- functions, .local()
def test_collect_shard_and_evaluate_chunk_run_locally(tmp_path):
    cfg = smoke(load_preset("quick"))
    spec = plan_shards(cfg.world, cfg.data, tmp_path / "data", "train")[0]
    record, array = modal_app.collect_shard.local(spec)
    assert not Path(spec.path).exists()  # the worker wrote nothing where the cache lives
    assert orchestrate.store_shard(spec, (record, array)) == record
    assert shards.file_matches(Path(spec.path), record)[0]
    assert make_shard(dataclasses.replace(spec, path=str(tmp_path / "ref.npy")))["sha256"] == record["sha256"]
    with pytest.raises(RuntimeError, match="changed in transit"):
        orchestrate.store_shard(spec, (record, np.zeros_like(array)))

    eval_cfg = dataclasses.replace(cfg.eval, episodes=2, chunk_size=2)
    chunk = make_chunks(eval_cfg, cfg.world, cfg.planner, [ForecasterSpec("constant-velocity")])[0]
    result = modal_app.evaluate_chunk.local(chunk)
    assert result.indices == [0, 1] and len(result.per_forecaster["constant-velocity"]["outcome"]) == 2


def test_generic_task_worker_runs_a_top_level_function():
    task = (orchestrate.function_ref(orchestrate.gpu_count), "H100:4")
    assert modal_app.run_task.local(task) == 4


def test_backend_routes_each_core_function_and_refuses_unknown_ones():
    sync = CountingSync()
    backend = RoutedBackend({len: lambda items: [len(i) for i in items]}, before_map=sync.commit)
    assert list(backend.map(len, ["ab", "c"])) == [2, 1]
    assert sync.calls == ["commit"]
    assert list(backend.map(len, [])) == [] and sync.calls == ["commit"]
    with pytest.raises(ValueError, match="no route"):
        list(backend.map(sorted, [[2, 1]]))


def test_training_commits_periodically_and_at_the_end():
    commits = []

    def slow_runner(job):
        time.sleep(0.35)
        return {"job": job}

    assert orchestrate.train_with_commits("job", lambda: commits.append(time.monotonic()), 0.1,
                                          runner=slow_runner) == {"job": "job"}
    assert len(commits) >= 3  # periodic ones, then the final one

    def preempted(job):
        raise RuntimeError("preempted")

    commits.clear()
    with pytest.raises(RuntimeError, match="preempted"):
        orchestrate.train_with_commits("job", lambda: commits.append(1), 0, runner=preempted)
    assert commits == [1]  # a failed attempt still commits its last checkpoint


# ------------------------------------------------------------------------------- the whole pipeline
@pytest.fixture(scope="module")
def ddp_pipeline(tmp_path_factory):
    """quick --smoke through the entrypoint logic with local maps; HRM trains with 2-process torchrun."""
    cache = tmp_path_factory.mktemp("modal-cache")
    seen = {"collect": [], "eval": [], "train": []}
    sync = CountingSync()

    def map_collect(specs, resources):
        seen["collect"].append(resources)
        return map(modal_app.collect_shard.local, specs)

    def map_eval(chunks, resources):
        seen["eval"].append(resources)
        return map(modal_app.evaluate_chunk.local, chunks)

    def train_remote(job, resources, commit_every_s):
        seen["train"].append((job.kind, job.gpus, resources, commit_every_s))
        if job.kind == "hrm":
            job = dataclasses.replace(job, gpus=2)  # as in an "H100:2" container: torchrun inside the function
        return modal_app.train.local(job, commit_every_s)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("hrmlab.experiments.grid.stages._write_report", _skip_report)
        # device cpu: two gloo ranks on any machine (device auto would want two GPUs for the two ranks)
        results = orchestrate.run_pipeline_with("quick", ["device=cpu"], True, map_collect, map_eval, train_remote,
                                                cache_root=cache, sync=sync)
    return cache, results, seen, sync


def _skip_report(run_dir, animations=0):
    """The report (plots, animations) is tested with the report; here it would only double the runtime."""


def test_whole_smoke_pipeline_with_ddp_inside_the_training_function(ddp_pipeline):
    cache, results, seen, sync = ddp_pipeline
    cfg = smoke(load_preset("quick"))
    res = orchestrate.resources_for(cfg)
    assert seen["collect"] == [res["collect"]]
    assert seen["eval"] == [res["eval"], res["eval"]]  # seed protocol and standard
    assert [(kind, gpus) for kind, gpus, _, _ in seen["train"]] == [("hrm", 0), ("lstm", 0)]
    assert all(r == res["train"] and every == cfg.cloud.checkpoint_commit_s for _, _, r, every in seen["train"])
    assert sync.calls.count("reload") == 2 and sync.calls[-1] == "commit"

    assert len(results.training["hrm"]["rank_param_digests"]) == 2  # two DDP ranks, identical parameters
    assert len(results.training["lstm"]["rank_param_digests"]) == 1
    run_dir = cache / "runs" / "quick-smoke"
    assert json.loads((run_dir / "results.json").read_text())["preset"] == "quick"
    standard = results.evaluations["standard"].rows
    assert {"hrm", "lstm", "oracle"} <= set(standard)
    assert Path(results.training["hrm"]["checkpoint"]).is_file()


def test_entrypoint_runs_the_orchestrator_function_and_reuses_the_cache(ddp_pipeline, monkeypatch, capsys):
    cache, first, _, _ = ddp_pipeline
    monkeypatch.setenv("HRMLAB_CACHE", str(cache))  # where functions run under .local()
    monkeypatch.setattr("hrmlab.experiments.grid.stages._write_report", _skip_report)
    returned = []

    class LocalOrchestrator:  # stands in for modal_app.run_pipeline inside a running app
        @staticmethod
        def remote(*args):
            returned.append(modal_app.run_pipeline.local(*args))
            return returned[-1]

    assert launcher.run_in_app(LocalOrchestrator, "quick", [], smoke=True) == 0
    for model in ("hrm", "lstm"):  # the same summary: training was skipped, not redone
        assert returned[0].training[model] == first.training[model]
    assert returned[0].evaluations["standard"] == first.evaluations["standard"]
    printed = capsys.readouterr().out
    assert "HRM: " in printed and "modal volume get hrmlab-cache runs/quick-smoke runs/quick-smoke" in printed
    assert launcher.run_in_app(LocalOrchestrator, "no-such-preset") == 2 and len(returned) == 1


def test_diffusion_preset_on_modal_trains_in_the_gpu_container(tmp_path, monkeypatch):
    """diffusion-cpu --smoke through the orchestrator: expert shards fan out through the generic task
    function with the collect resources, the denoiser trains in one task with the train resources."""
    monkeypatch.setattr("hrmlab.report.report.write_report", _skip_report)
    tasks = []

    def map_task(items, resources):
        tasks.append(([item[0] for item in items], resources))
        return map(modal_app.run_task.local, items)

    def unused(*args):
        raise AssertionError("grid-pipeline route used by a diffusion preset")

    sync = CountingSync()
    results = orchestrate.run_pipeline_with("diffusion-cpu", ["cloud.train_gpu=A10G"], True, unused, unused,
                                            unused, cache_root=tmp_path, sync=sync, map_task=map_task)
    trained = [(refs, res) for refs, res in tasks if refs == ["hrmlab.experiments.diffusion:run_train_task"]]
    assert len(trained) == 1 and trained[0][1]["gpu"] == "A10G"
    assert any(res["cpu"] == 2.0 and "gpu" not in res for refs, res in tasks if refs != trained[0][0])
    assert Path(results.details["model"]["checkpoint"]).is_file() and results.family == "diffusion"
    assert set(results.evaluations) == {"seed", "standard"}
    assert (tmp_path / "runs" / "diffusion-cpu-smoke" / "results.json").is_file()


# ------------------------------------------------------------------------------- launching, errors
def test_modal_run_help_works_without_a_token(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "modal", "run", "-m", "hrmlab.cloud.modal_app", "--help"],
                          env=_no_token_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--preset" in proc.stdout and "--smoke" in proc.stdout and "--set" in proc.stdout


def test_core_and_cli_do_not_import_modal():
    code = ("import sys, hrmlab.experiments.grid.stages, hrmlab.cli, hrmlab.cloud, hrmlab.cloud.orchestrate, hrmlab.cloud.launcher; "
            "assert 'modal' not in sys.modules, 'modal imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_a_token_or_without_modal_the_message_says_what_to_do(tmp_path, monkeypatch, capsys):
    for key, value in _no_token_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("MODAL_TOKEN")]:
        monkeypatch.delenv(key)
    assert not launcher.has_modal_token()
    with pytest.raises(UserError, match=r"run `modal setup` \(or set MODAL_TOKEN_ID/MODAL_TOKEN_SECRET\)"):
        launcher.run_on_modal("quick", [], smoke=True)

    from hrmlab.cli import main

    assert main(["run", "quick", "--smoke", "--backend", "modal"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "modal setup" in err

    (tmp_path / "absent.toml").write_text('[default]\ntoken_id = "ak-x"\ntoken_secret = "as-x"\n')
    assert launcher.has_modal_token()

    monkeypatch.setitem(sys.modules, "modal", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"pip install 'hrmlab\[modal\]'"):
        launcher.run_on_modal("quick", [], smoke=True)
