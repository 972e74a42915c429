"""Diffusion planner: expert A* (fixture, reference), model sizes, sampler, refinement, evaluation
protocols, expert shards, training resume and a smoke run of every preset."""

import json

import numpy as np
import pytest
import torch

from hrmlab.backends.local import SerialBackend
from hrmlab.config import from_dict, to_dict
from hrmlab.diffusion import evaluate as evaluation
from hrmlab.diffusion import expert as expert_mod
from hrmlab.diffusion import train as train_mod
from hrmlab.diffusion.expert import ExpertDataConfig
from hrmlab.planning import blob_astar
from hrmlab.planning.blob_astar import ExpertConfig
from hrmlab.presets import load_preset
from hrmlab.experiments.diffusion import (DIFFUSION_PRESETS, DiffusionExperimentConfig,
                                         run_diffusion, smoke_config)
from hrmlab.diffusion.noise import NoiseConfig, PathDiffusion
from hrmlab.diffusion.refine import distance_field, path_penalty, refine_paths
from hrmlab.diffusion.sample import SamplingConfig, line_paths, plan_with_diffusion
from hrmlab.diffusion.unet1d import ModelConfig, build_denoiser, count_parameters
from hrmlab.errors import UserError
from hrmlab.evaluate.result import RunResult
from hrmlab.worlds import blob_world
from hrmlab.worlds.blob_world import BlobWorldConfig
from hrmlab_bench.reference.expert_astar import plan_reference

WORLD = BlobWorldConfig()


# ---------------------------------------------------------------------------------------- expert


@pytest.mark.parametrize("forecast_clip", [False, True])
def test_expert_reproduces_the_fixture_oracle(fixture_path, forecast_clip):
    data = json.loads(fixture_path("blob_world_seed_episodes.json").read_text())
    state = blob_world.reset_seed_exact(WORLD, [ep["seed"] for ep in data["episodes"]])
    paths = blob_astar.plan_episodes(WORLD, state, ExpertConfig(forecast_clip=forecast_clip))
    for ep, path in zip(data["episodes"], paths):
        assert (path is not None) == ep["oracle_plan_exists"], ep["seed"]
        if path is not None:
            assert len(path) == ep["oracle_path_len"], ep["seed"]


def _assert_valid_plan(path, static, traj, start, goal, cfg):
    assert tuple(path[0]) == tuple(start)
    assert np.abs(np.diff(path, axis=0)).max() <= 1
    assert not static[path[:, 0], path[:, 1]].any()
    for t in range(1, len(path)):
        assert np.linalg.norm(traj[t] - path[t], axis=-1).min() >= cfg.clearance
    assert np.linalg.norm(path[-1] - goal) < cfg.goal_tolerance
    assert len(path) <= cfg.max_steps


@pytest.mark.parametrize("wait_cost", [0.0, 0.5])
def test_numba_expert_equals_the_python_reference(wait_cost):
    cfg = ExpertConfig(wait_cost=wait_cost)
    state = blob_world.reset_split(WORLD, "val", np.arange(6))
    traj = blob_world.trajectory(WORLD, state, cfg.max_steps)
    for e in range(state.batch):
        fast = blob_astar.plan(state.static[e], traj[e], state.start[e], state.goal[e], cfg)
        slow = plan_reference(state.static[e], traj[e], state.start[e], state.goal[e], cfg.max_steps, wait_cost,
                              cfg.clearance, cfg.goal_tolerance)
        assert (fast is None) == (slow is None)
        if fast is not None:
            assert np.array_equal(fast, slow)
            _assert_valid_plan(fast, state.static[e], traj[e], state.start[e], state.goal[e], cfg)


def test_expert_data_shards_manifest_and_resume(tmp_path):
    data_cfg = ExpertDataConfig(num_paths=12, paths_per_shard=5)
    manifest = expert_mod.generate_expert_data(WORLD, ExpertConfig(), data_cfg, tmp_path, SerialBackend(),
                                               progress=False)
    info = json.loads(manifest.read_text())
    assert (tmp_path / "DONE").exists() and info["rows"] == 12 and len(info["shards"]) == 3  # data/shards.py's store
    first = expert_mod.load_expert_data(manifest)
    assert first["paths"].shape == (12, 64, 2) and first["grids"].shape == (12, 64, 64)
    assert (first["path_cells"] >= data_cfg.min_path_cells).all()
    assert np.allclose(first["paths"][:, 0], first["start_goal"][:, :2])
    shard = tmp_path / "shards"
    (shard / info["shards"]["1"]["paths"]["file"]).unlink()  # a lost shard is regenerated, the rest reused
    kept = (shard / info["shards"]["0"]["paths"]["file"]).stat().st_mtime_ns
    (shard / info["shards"]["2"]["grids"]["file"]).write_bytes(b"corrupt")
    with pytest.raises(UserError, match="missing"):  # never loaded silently
        expert_mod.load_expert_data(manifest)
    expert_mod.generate_expert_data(WORLD, ExpertConfig(), data_cfg, tmp_path, SerialBackend(), progress=False)
    assert (shard / info["shards"]["0"]["paths"]["file"]).stat().st_mtime_ns == kept
    again = expert_mod.load_expert_data(manifest)
    for key in first:
        assert np.array_equal(first[key], again[key])


def test_seed_protocol_baselines_and_oracle():
    """Done-when numbers: oracle 49/50 (1001 has no plan); line + refinement 33/50 (the seed's 66 %)."""
    result = evaluation.evaluate_protocol("seed", WORLD, ExpertConfig(forecast_clip=False), SamplingConfig(),
                                          evaluation.DiffusionEvalConfig())
    r = result.rows
    assert r["oracle"].successes == 49 and r["oracle"].per_episode[1] == "no_plan" and result.indices[1] == 1001
    assert r["line+refine"].successes == 33
    assert r["line"].successes == 23
    lo, hi = r["oracle"].ci95
    assert lo < 0.98 < hi
    assert {(p.a, p.b) for p in result.pairwise} >= {("line", "oracle"), ("line+refine", "oracle")}


def test_standard_execution_outcomes():
    state = blob_world.reset_split(WORLD, "test", np.arange(3))
    cfg = ExpertConfig()
    oracle = blob_astar.plan_episodes(WORLD, state, cfg)
    outcome, steps = blob_world.execute_standard(oracle, WORLD, state, 2.0, cfg.goal_tolerance)
    assert [o for o, p in zip(outcome, oracle) if p is not None] == ["success"] * sum(p is not None for p in oracle)
    jumpy = line_paths(state.start, state.goal, 64)
    jumpy[:, 10:] += 3.0  # a teleport at point 10 (and a wrong end)
    jumpy[:, -1] = state.goal
    outcome, _ = blob_world.execute_standard(list(jumpy), WORLD, state, 2.0, cfg.goal_tolerance)
    assert set(outcome) <= {"infeasible", "static", "collision", "off_map"}
    outcome, _ = blob_world.execute_standard([None] * 3, WORLD, state, 2.0, cfg.goal_tolerance)
    assert list(outcome) == ["no_plan"] * 3


# ---------------------------------------------------------------------------------------- model


def test_parameter_counts():
    assert count_parameters(build_denoiser(ModelConfig(conditioning="seed"))) == 4_128_258
    full = count_parameters(build_denoiser(ModelConfig(conditioning="full")))
    assert full == 4_128_258 + 512 * 128 + 128
    assert count_parameters(build_denoiser(ModelConfig(architecture="conv-v1"))) == 528_706


def test_seed_conditioning_ignores_start_goal_and_full_uses_it():
    torch.manual_seed(0)
    grid = torch.rand(2, 1, 64, 64)
    sg = torch.rand(2, 4)
    x, t = torch.randn(2, 2, 64), torch.rand(2, 1)
    for conditioning, same in (("seed", True), ("full", False)):
        net = build_denoiser(ModelConfig(conditioning=conditioning, base_channels=16)).eval()
        with torch.no_grad():
            a, b = net(x, t, grid, sg), net(x, t, grid, sg + 0.3)
        assert torch.equal(a, b) == same


@pytest.mark.parametrize("formulation", ["interpolation", "seed", "ddpm"])
def test_sampler_shapes_and_pinned_endpoints(formulation):
    torch.manual_seed(0)
    net = build_denoiser(ModelConfig(base_channels=16)).eval()
    diffusion = PathDiffusion(NoiseConfig(formulation=formulation, steps=3))
    state = blob_world.reset_split(WORLD, "val", np.arange(3))
    occupancy = blob_world.occupancy_grid(WORLD, state)
    out = plan_with_diffusion(net, diffusion, occupancy, state.start, state.goal,
                              SamplingConfig(num_samples=4, refine_steps=2, episodes_per_batch=2), 32, 64)
    for key in ("paths", "raw_paths"):
        assert out[key].shape == (3, 32, 2)
        assert np.allclose(out[key][:, 0], state.start, atol=1e-4)
        assert np.allclose(out[key][:, -1], state.goal, atol=1e-4)
    assert out["scores"].shape == (3,)
    x0 = torch.rand(5, 2, 16)
    x_t, t, eps = diffusion.training_example(x0, torch.Generator().manual_seed(0))
    assert x_t.shape == eps.shape == x0.shape and t.shape == (5, 1) and (t >= 0).all() and (t < 1).all()


# ---------------------------------------------------------------------------------------- refinement


def _seed_refine_loop(traj, sdf, steps, lr=0.5, margin=3.0):
    """The seed's per-point loops, as a test oracle for the vectorised refinement."""
    traj = traj.copy()
    g = sdf.shape[0]
    for _ in range(steps):
        for t in range(1, len(traj) - 1):
            px, py = int(traj[t, 0]), int(traj[t, 1])
            if 0 <= px < g and 0 <= py < g and sdf[px, py] < margin:
                traj[t, 0] += (sdf[min(px + 1, g - 1), py] - sdf[max(px - 1, 0), py]) * lr
                traj[t, 1] += (sdf[px, min(py + 1, g - 1)] - sdf[px, max(py - 1, 0)]) * lr
        traj[1:-1] = 0.5 * traj[1:-1] + 0.25 * traj[:-2] + 0.25 * traj[2:]
    return traj


def test_refinement_matches_the_seed_loops_and_reduces_penetration():
    state = blob_world.reset_seed_exact(WORLD, [1000, 1002])
    field = distance_field(blob_world.occupancy_grid(WORLD, state))
    rng = np.random.default_rng(0)
    paths = line_paths(state.start, state.goal, 64) + rng.normal(0, 1.5, (2, 64, 2))
    paths[:, 0], paths[:, -1] = state.start, state.goal
    refined = refine_paths(paths, field, 15)
    for e in range(2):
        assert np.allclose(refined[e], _seed_refine_loop(paths[e], field[e], 15))
    assert np.array_equal(refined[:, [0, -1]], paths[:, [0, -1]])
    # a straight line grazing a disc: refinement lowers the penalty
    static = np.zeros((1, 64, 64), dtype=bool)
    blob_world._stamp_discs(static, np.array([[32, 32]]), np.array([5]))
    field = distance_field(static)
    line = line_paths(np.array([[10, 36]]), np.array([[54, 36]]), 64)
    before = path_penalty(line, field)
    after = path_penalty(refine_paths(line, field, 40), field)
    assert after[0] < 0.5 * before[0]


# ---------------------------------------------------------------------------------------- training, pipeline


def _tiny_data(n=12):
    rng = np.random.default_rng(0)
    start_goal = rng.integers(0, 64, (n, 4)).astype(np.float32)
    paths = np.stack([line_paths(start_goal[:, :2], start_goal[:, 2:], 16)[i] for i in range(n)]).astype(np.float32)
    return {"grids": rng.random((n, 64, 64)) < 0.1, "start_goal": start_goal, "paths": paths}


def test_training_resumes_exactly_after_a_kill(tmp_path, monkeypatch):
    data = _tiny_data()
    model = ModelConfig(base_channels=16)
    noise = NoiseConfig(steps=2)
    cfg = train_mod.DiffusionTrainConfig(steps=4, batch_size=4, checkpoint_every_steps=2, log_every_steps=1)
    straight = train_mod.train_diffusion(data, model, noise, cfg, 64, tmp_path / "straight", progress=False)

    original = train_mod.DiffusionHooks.after_step

    def killed_at_step_3(self, m, step):
        if step == 3:
            raise KeyboardInterrupt
        original(self, m, step)

    monkeypatch.setattr(train_mod.DiffusionHooks, "after_step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_diffusion(data, model, noise, cfg, 64, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / "last.pt").exists() and not (tmp_path / "resumed" / "planner.pt").exists()
    monkeypatch.setattr(train_mod.DiffusionHooks, "after_step", original)
    resumed = train_mod.train_diffusion(data, model, noise, cfg, 64, tmp_path / "resumed", progress=False)
    a, _, _ = train_mod.load_planner(straight)
    b, _, _ = train_mod.load_planner(resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert float(b.coord_scale) == 64.0


def test_configs_round_trip_through_plain_dicts():
    for name in DIFFUSION_PRESETS:
        cfg = load_preset(name)
        assert from_dict(DiffusionExperimentConfig, to_dict(cfg)) == cfg
    assert load_preset("diffusion-v2").model.conditioning == "seed"
    assert load_preset("diffusion-cpu").noise.formulation == "interpolation"
    from hrmlab.experiments.diffusion import stage_keys

    base = load_preset("diffusion-cpu")
    resampled = load_preset("diffusion-cpu")
    resampled.noise.eta, resampled.noise.steps, resampled.sampling.num_samples = 0.0, 50, 3
    a, b = stage_keys(base), stage_keys(resampled)
    assert a["expert_data"] == b["expert_data"] and a["train"] == b["train"] and a["eval"] != b["eval"]


def test_smoke_run_of_the_cpu_preset_and_its_cache(tmp_path):
    cfg = load_preset("diffusion-cpu")
    results = run_diffusion(cfg, tmp_path / "run", tmp_path / "cache", SerialBackend(), smoke=True, progress=False)
    assert RunResult.from_json(json.loads((tmp_path / "run" / "results.json").read_text())).to_json() == \
        json.loads(json.dumps(results.to_json()))  # results.json reads back as the same result
    assert results.primary_protocol == "standard" and results.smoke
    assert set(results.evaluations) == {"seed", "standard"}
    small = smoke_config(cfg)
    for name in ("diffusion", "diffusion-raw", "line", "line+refine", "oracle"):
        r = results.primary.rows[name]
        assert r.episodes == small.eval.test_episodes
        assert 0 <= r.ci95[0] <= r.success_rate + 1e-12 and r.success_rate <= r.ci95[1]
        assert results.evaluations["seed"].rows[name].episodes == small.eval.seed_episodes
    assert (tmp_path / "run" / "results.json").exists() and (tmp_path / "run" / "config.yaml").exists()
    assert len(results.records) == 2  # one per protocol in a smoke run
    from hrmlab.report.animate import load_diffusion_record

    record = load_diffusion_record(tmp_path / "run" / results.records[0])
    assert record["best"].shape == (64, 2) and record["obstacles"].shape[0] == 64
    planner = next((tmp_path / "cache" / "diffusion" / "train").glob("*/planner.pt"))
    stamp = planner.stat().st_mtime_ns
    again = run_diffusion(cfg, tmp_path / "run2", tmp_path / "cache", SerialBackend(), smoke=True, progress=False)
    assert planner.stat().st_mtime_ns == stamp  # every stage came from the cache
    assert again.primary.to_json() == results.primary.to_json()


@pytest.mark.parametrize("name", ["diffusion-v0", "diffusion-v1", "diffusion-v2"])
def test_smoke_run_of_the_seed_presets(tmp_path, name):
    results = run_diffusion(load_preset(name), tmp_path / "run", tmp_path / "cache", SerialBackend(),
                            smoke=True, progress=False)
    assert results.details["model"]["architecture"] == ("unet-v2" if name == "diffusion-v2" else "conv-v1")
    assert results.primary_protocol == "seed" and results.primary.rows["oracle"].episodes == 4


def test_preset_loading_and_the_cli_pipeline_entry(tmp_path):
    from hrmlab.experiments.diffusion import (describe_diffusion, load_diffusion_experiment, print_diffusion_summary,
                                             run_diffusion_pipeline, smoke)
    from hrmlab.errors import UserError
    from hrmlab.experiments.grid.stages import RunOptions

    data = {k: v for k, v in to_dict(load_preset("diffusion-v2")).items() if k != "name"}
    cfg = load_diffusion_experiment(data, "diffusion-v2", ["model.conditioning=full"])
    assert cfg.name == "diffusion-v2" and cfg.family == "diffusion" and cfg.model.conditioning == "full"
    assert "4,193,922 params" in describe_diffusion(cfg)
    with pytest.raises(UserError):
        load_diffusion_experiment({"family": "diffusion", "eval": {"protocols": ["seed-v9"]}}, "bad")
    opts = RunOptions(out=tmp_path / "run", cache=tmp_path / "cache", smoke=True, workers=1, progress=False)
    results = run_diffusion_pipeline(smoke(cfg), opts)
    assert results.smoke and results.seconds >= 0
    assert (tmp_path / "run" / "report.md").exists()
    print_diffusion_summary(results)


def test_a_corrupt_diffusion_stage_is_redone_and_a_changed_setting_rekeys_it(tmp_path, caplog, monkeypatch):
    """The diffusion family on the one stage cache: a corrupt evaluation or planner is logged and redone (no
    traceback, the same numbers), a sampling change re-keys only the evaluation, results.json is written once."""
    from hrmlab.cli import main
    from hrmlab.experiments.diffusion import stage_keys
    from hrmlab.report import rundir  # every family writes its run folder through rundir.write_run

    written = []
    real_write = rundir.write_json_atomic
    monkeypatch.setattr(rundir, "write_json_atomic", lambda path, data: (written.append(path), real_write(path, data)))
    args = ["run", "diffusion-cpu", "--smoke", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"),
            "--workers", "1", "--no-progress"]

    def run(*extra) -> RunResult:
        caplog.clear()
        with caplog.at_level("INFO", logger="hrmlab"):
            assert main([*args, *extra]) == 0
        return RunResult.from_json(json.loads((tmp_path / "run" / "results.json").read_text()))

    first = run()
    assert written == [tmp_path / "run" / "results.json"]  # once, atomically
    keys = stage_keys(smoke_config(load_preset("diffusion-cpu")))
    cache = tmp_path / "cache" / "diffusion"
    (cache / "eval" / keys["eval"] / "results-standard.json").write_text("{ truncated")
    planner = cache / "train" / keys["train"] / "planner.pt"
    planner.write_bytes(planner.read_bytes()[:-100])
    again = run()
    assert "stage train/diffusion: cached output is corrupt" in caplog.text and "truncated" in caplog.text
    assert "stage evaluate/standard: cached output is corrupt" in caplog.text
    assert "stage evaluate/standard: done" in caplog.text
    for protocol in ("seed", "standard"):
        a, b = first.evaluations[protocol], again.evaluations[protocol]
        assert {n: r.per_episode for n, r in a.rows.items()} == {n: r.per_episode for n, r in b.rows.items()}
        assert a.pairwise == b.pairwise

    changed = run("--set", "sampling.num_samples=3")
    assert "stage train/diffusion: cached" in caplog.text and "stage evaluate/standard: done" in caplog.text
    new_keys = changed.details["stage_keys"]
    assert new_keys["train"] == keys["train"] and new_keys["eval"] != keys["eval"]
    assert (cache / "eval" / new_keys["eval"] / "results-standard.json").is_file()
    run()  # the old setting's stages are still there: every stage cached
    assert caplog.text.count(": cached (") == 3 and ": done in" not in caplog.text
