"""Space-time diffusion planner (issue 17): trajectories, the evaluator's check, the denoiser, guidance,
expert shards, the closed loops of both worlds, and smoke runs of its presets."""

import json

import numpy as np
import pytest
import torch

from hrmlab.backends.local import SerialBackend
from hrmlab.cli import main
from hrmlab.diffusion.spacetime import data as st_data
from hrmlab.diffusion.spacetime import trajectory as tr
from hrmlab.diffusion.spacetime.closed_loop import (ExpertPolicy, STEvalConfig, evaluate_rows, format_rows, make_chunks,
                                                    make_rows, paired_with_astar)
from hrmlab.diffusion.spacetime.model import STDenoiser, STModelConfig, clearance_field
from hrmlab.diffusion.spacetime.planner import DiffusionSTPolicy, STPlannerConfig
from hrmlab.diffusion.spacetime.sampler import STSamplingConfig, cost_gradient, guide, guide_fields, sample
from hrmlab.diffusion.spacetime.train import STTrainConfig, load_st_planner, train_st
from hrmlab.diffusion.spacetime.worlds import BlobOracleForecaster, blob_rules, grid_rules, obstacles_ahead
from hrmlab.evaluate.episodes import SUCCESS, run_blob_closed_loop, run_closed_loop
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.evaluate.result import RunResult
from hrmlab.forecast.physics import ConstantVelocityForecaster, OracleForecaster
from hrmlab.planning import blob_astar
from hrmlab.planning.blob_astar import ExpertConfig
from hrmlab.planning.spacetime_astar import PlannerConfig, plan
from hrmlab.worlds import blob_world
from hrmlab.worlds.blob_world import BlobWorldConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

BLOB = BlobWorldConfig()
GRID = BounceGridConfig()
TINY = STModelConfig(channels=[8, 8, 16], map_channels=4, obstacle_hidden=8, embed=16, groups=4)


def _legal(cells, start, static, moves):
    """Every step a move of `moves`, never on a static cell, starting at `start`."""
    steps = {tuple(m) for m in moves.tolist()}
    assert tuple(cells[0]) == tuple(start)
    assert all(tuple(d) in steps for d in np.diff(cells, axis=0).tolist())
    assert not static[cells[:, 0], cells[:, 1]].any()


# ---------------------------------------------------------------------------------- trajectories


@pytest.mark.parametrize("moves", [tr.KING_MOVES, tr.GRID_MOVES])
def test_projection_gives_legal_paths_padded_at_the_goal(moves):
    rng = np.random.default_rng(0)
    state = blob_world.reset_split(BLOB, "val", np.arange(3))
    samples = rng.uniform(-5, 70, size=(12, 64, 2))  # wild samples: off the map, jumping
    which = np.repeat(np.arange(3), 4)
    cells, arrival = tr.project_paths(samples, which, state.start, state.goal, state.static, moves, 2.0)
    for p in range(12):
        _legal(cells[p], state.start[which[p]], state.static[which[p]], moves)
        if arrival[p] < 64:
            assert np.linalg.norm(cells[p, arrival[p]] - state.goal[which[p]]) < 2.0
            assert (cells[p, arrival[p]:] == cells[p, arrival[p]]).all()  # waits at the goal
    if moves is tr.KING_MOVES:  # on an open map a straight line to the goal always arrives (≤ 63 king moves)
        line = np.linspace(state.start, state.goal, 64).transpose(1, 0, 2)
        _, arrival = tr.project_paths(line, np.arange(3), state.start, state.goal, np.zeros_like(state.static),
                                      moves, 2.0)
        assert (arrival < 64).all()


def test_check_is_the_evaluators_collision_test():
    """check_paths against the true future = BlobWorld's `standard` path execution, path by path."""
    state = blob_world.reset_split(BLOB, "test", np.arange(8))
    traj = blob_world.trajectory(BLOB, state, 63)  # (B, 64, N, 2): index = steps from t = 0
    lines = np.linspace(state.start, state.goal, 64).transpose(1, 0, 2).astype(np.float64)
    which = np.arange(8)
    cells, arrival = tr.project_paths(lines, which, state.start, state.goal, state.static, tr.KING_MOVES, 2.0)
    hit, _ = tr.check_paths(cells, which, arrival, traj, 2.0, 3.0)
    executed = [c[:a + 1] for c, a in zip(cells, np.minimum(arrival, 63))]
    outcome, _ = blob_world.execute_standard(executed, BLOB, state, 2.0, 2.0)
    expected = np.where(hit < 64, "collision", np.where(arrival < 64, "success", "not_at_goal"))
    assert list(outcome) == list(expected)
    assert {"collision", "success"} <= set(outcome)  # both kinds occur in these 8 episodes


def test_pick_prefers_feasible_then_safe_then_late_collisions():
    arrival = np.array([[10, 5, 64, 64], [64, 64, 64, 64], [64, 64, 64, 64]])
    first_hit = np.array([[64, 64, 64, 3], [64, 64, 7, 2], [5, 9, 2, 9]])
    cost = np.array([[0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.5]])
    goal_distance = np.array([[0.0, 0.0, 3.0, 1.0], [8.0, 4.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    best, kind = tr.pick_candidates(arrival, first_hit, cost, goal_distance, 64, clearance_weight=1.0)
    assert best.tolist() == [0, 1, 3] and kind.tolist() == [0, 1, 2]  # 10 + 0 beats 5 + 9


def test_evade_moves_away_and_never_onto_static_cells():
    static = np.zeros((2, 10, 10), dtype=bool)
    static[1, 4:7, 6] = True  # a wall on the agent's escape side
    agents = np.array([[5, 5], [5, 5]])
    obstacles = np.array([[[5.0, 4.0]], [[5.0, 4.0]]])
    rules = tr.MoveRules(10, tr.KING_MOVES, 2.0, 2.0)
    moves = tr.evade_moves(agents, np.array([[9, 9], [9, 9]]), static, obstacles, rules)
    assert moves[0, 1] == 6 and not static[1, moves[1, 0], moves[1, 1]]
    assert np.linalg.norm(moves[1] - obstacles[1, 0]) > 1.0


def test_rewound_history_ends_now_and_moves_at_the_velocity():
    state = blob_world.reset_split(BLOB, "test", np.arange(4))
    history = blob_world.rewound_history(BLOB, state, 20)
    assert history.shape == (4, BLOB.num_obstacles, 20, 2)
    assert np.array_equal(history[:, :, -1], state.pos)
    step = history[:, :, -1] - history[:, :, -2]
    inside = (np.abs(step) <= BLOB.max_speed + 1e-12).all(axis=-1)
    assert inside.mean() > 0.5
    # where the last step had no border contact it is exactly the current velocity (float sums: 1e-9 cells)
    interior = ((history[:, :, -2] > 1) & (history[:, :, -2] < 62)).all(axis=-1)
    assert np.allclose(step[interior], state.vel[interior], atol=1e-9)


# ---------------------------------------------------------------------------------- model, sampler


def _condition(model, b=2, n=8, g=64, t=64):
    gen = torch.Generator().manual_seed(0)
    static = torch.zeros(b, g, g)
    static[:, 20:30, 20:30] = 1
    clearance = torch.as_tensor(clearance_field(static.numpy() > 0))
    obstacles = torch.rand(b, t, n, 2, generator=gen) * (g - 1)
    start = torch.tensor([[2.0, 3.0]] * b)
    goal = torch.tensor([[50.0, 60.0]] * b)
    return static, clearance, start, goal, obstacles


def test_denoiser_is_invariant_to_obstacle_order_and_uses_the_forecast():
    torch.manual_seed(0)
    model = STDenoiser(TINY, 64, 64).eval()
    static, clearance, start, goal, obstacles = _condition(model)
    x = torch.randn(2, 3, 2, 64)
    level = torch.full((6,), 0.5)
    with torch.no_grad():
        out = model(x, level, model.encode(static, clearance, start, goal, obstacles, torch.ones(2)))
        perm = model(x, level, model.encode(static, clearance, start, goal, obstacles[:, :, [3, 1, 0, 2, 7, 6, 5, 4]],
                                            torch.ones(2)))
        masked = model(x, level, model.encode(static, clearance, start, goal, obstacles, torch.zeros(2)))
        none = model(x, level, model.encode(static, clearance, start, goal, obstacles[:, :, :0], torch.zeros(2)))
    assert out.shape == (2, 3, 2, 64)
    assert torch.allclose(out, perm, atol=1e-5)  # a max over tokens: only float summation order differs
    assert not torch.allclose(out, masked, atol=1e-4)
    assert torch.allclose(masked, none, atol=1e-5)  # masked tokens = no obstacles


def test_sampler_pins_the_start_and_guidance_lowers_the_cost():
    torch.manual_seed(0)
    model = STDenoiser(TINY, 64, 64).eval()
    static, clearance, start, goal, obstacles = _condition(model)
    cond = model.encode(static, clearance, start, goal, obstacles, torch.ones(2))
    fields = guide_fields(clearance.numpy())
    cfg = STSamplingConfig(candidates=4, steps=3, guide_steps=0)
    x = sample(model, cond, start, obstacles, fields, cfg, torch.Generator().manual_seed(1))
    assert x.shape == (2, 4, 64, 2)
    assert torch.equal(x[:, :, 0], start[:, None].expand(-1, 4, -1))
    assert (x >= 0).all() and (x <= 63).all()
    guided_cfg = STSamplingConfig(guide_iters=20)
    _, before = cost_gradient(x, obstacles, fields, guided_cfg, 64, with_cost=True)
    after_x = guide(x, obstacles, fields, guided_cfg, 64)
    _, after = cost_gradient(after_x, obstacles, fields, guided_cfg, 64, with_cost=True)
    assert (after <= before + 1e-6).all() and after.sum() < 0.5 * before.sum()
    assert torch.equal(after_x[:, :, 0], x[:, :, 0])


# ---------------------------------------------------------------------------------- data and training


def test_expert_trajectories_are_time_parameterised_and_shards_resume(tmp_path):
    cfg = st_data.STDataConfig(episodes=10, episodes_per_shard=5)
    root = st_data.generate("blob", BLOB, ExpertConfig(), 0, cfg, tmp_path, SerialBackend(), progress=False)
    data = st_data.load(root)
    assert data["path"].shape[1:] == (64, 2) and data["obstacles"].shape[1:] == (64, BLOB.num_obstacles, 2)
    for k in range(len(data["path"])):
        path, cells = data["path"][k].astype(np.int64), int(data["cells"][k])
        assert np.abs(np.diff(path, axis=0)).max() <= 1 and (path[cells:] == path[cells - 1]).all()
        assert np.linalg.norm(path[cells - 1] - data["goal"][k]) < 2.0
    manifest = json.loads((root / "manifest.json").read_text())
    lost = root / "shards" / manifest["shards"]["1"]["path"]["file"]
    lost.unlink()  # a lost shard is remade, the other kept
    (root / "shards" / manifest["shards"]["0"]["goal"]["file"]).write_bytes(b"corrupt")
    st_data.generate("blob", BLOB, ExpertConfig(), 0, cfg, tmp_path, SerialBackend(), progress=False)
    again = st_data.load(root)
    for key in data:
        assert np.array_equal(data[key], again[key])


def test_grid_expert_trajectories_use_four_moves():
    cfg = st_data.STDataConfig(horizon=48, random_start=0.5)
    data = st_data.grid_examples(GRID, 20, cfg, "train", np.arange(12), seed=0)
    assert len(data["path"]) >= 10 and data["obstacles"].shape[1:] == (48, GRID.num_obstacles, 2)
    steps = np.abs(np.diff(data["path"].astype(np.int64), axis=1)).sum(axis=-1)
    assert steps.max() == 1
    assert (data["start"] != 0).any()  # some random starts


def test_training_writes_an_ema_planner_that_loads(tmp_path):
    data = st_data.grid_examples(GRID, 20, st_data.STDataConfig(horizon=16), "train", np.arange(8), seed=0)
    path = train_st(data, TINY, STTrainConfig(steps=3, batch_size=4, augment="transpose", log_every_steps=1),
                    GRID.grid_size, tmp_path, progress=False)
    model, cfg = load_st_planner(path)
    assert cfg == TINY and model.horizon == 16 and model.grid_size == 20
    assert (tmp_path / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------------- closed loops


def test_blob_astar_with_the_oracle_executes_whatever_the_expert_can_plan():
    indices = np.arange(6)
    state = blob_world.reset_split(BLOB, "test", indices)
    open_loop = blob_astar.plan_episodes(BLOB, state, ExpertConfig())
    rules = blob_rules(BLOB, 2.0, 2.0)
    rec = run_blob_closed_loop(BLOB, ExpertPolicy(ExpertConfig(), rules), BlobOracleForecaster(BLOB), indices,
                               horizon=64, max_steps=80)
    assert [o == SUCCESS for o in rec.outcome] == [p is not None for p in open_loop]


def test_grid_policy_hook_reproduces_the_astar_planner():
    protocol = get_protocol("standard")
    planner = PlannerConfig()

    def astar(obs, agents, forecast, idx):
        return plan(obs.state.walls, agents, obs.state.goal, forecast, planner)[0]

    indices = np.arange(20)
    built_in = run_closed_loop(protocol, GRID, planner, ConstantVelocityForecaster(), indices, forecast_error=False)
    hooked = run_closed_loop(protocol, GRID, planner, ConstantVelocityForecaster(), indices, forecast_error=False,
                             plan_fn=astar)
    assert np.array_equal(built_in.outcome, hooked.outcome) and np.array_equal(built_in.steps, hooked.steps)


@pytest.mark.parametrize("world_kind", ["blob", "grid"])
def test_diffusion_policy_moves_legally_in_both_worlds(world_kind):
    torch.manual_seed(0)
    horizon = 64 if world_kind == "blob" else 48
    size = 64 if world_kind == "blob" else 20
    model = STDenoiser(TINY, size, horizon).eval()
    sampling = STSamplingConfig(candidates=3, steps=2, guide_steps=1, guide_iters=1)
    if world_kind == "blob":
        rules = blob_rules(BLOB, 2.0, 2.0)
        policy = DiffusionSTPolicy(model, rules, sampling, STPlannerConfig(replan_every=3))
        rec = run_blob_closed_loop(BLOB, _Recorder(policy, rules), BlobOracleForecaster(BLOB), np.arange(4), horizon=64,
                                   max_steps=8)
    else:
        protocol = get_protocol("standard")
        rules = grid_rules(GRID, protocol.goal_radius, protocol.crash_radius)
        policy = DiffusionSTPolicy(model, rules, sampling, STPlannerConfig(replan_every=3))
        rec = run_closed_loop(protocol, GRID, PlannerConfig(horizon=horizon - 1), OracleForecaster(), np.arange(4),
                              forecast_error=False, plan_fn=_Recorder(policy, rules))
    assert rec.plan_calls > 0 and policy.replans >= 4


def test_diffusion_policy_admits_episodes_whenever_they_first_appear():
    """BlobWorld episodes that start at the goal never reach the policy: indices need not start complete."""
    torch.manual_seed(0)
    model = STDenoiser(TINY, 64, 64).eval()
    policy = DiffusionSTPolicy(model, blob_rules(BLOB, 2.0, 2.0), STSamplingConfig(candidates=2, steps=1),
                               STPlannerConfig())
    state = blob_world.reset_split(BLOB, "test", np.arange(3))
    history = blob_world.rewound_history(BLOB, state, 5)
    oracle = BlobOracleForecaster(BLOB)
    from hrmlab.forecast.base import Observation

    for idx in (np.array([1, 2]), np.array([0, 1, 2])):
        sub = state.subset(idx)
        obs = Observation(history[idx], sub, blob_world.forecaster_view(BLOB))
        moves = policy(obs, sub.start if idx[0] == 1 else state.start, oracle.forecast(obs, 63), idx)
        assert moves.shape == (len(idx), 2)
    assert np.array_equal(policy.static, state.static)


class _Recorder:
    """Wraps a policy and asserts every move it makes is legal in its world."""

    def __init__(self, policy, rules):
        self.policy, self.rules = policy, rules

    def __call__(self, obs, agents, forecast, idx):
        moves = self.policy(obs, agents, forecast, idx)
        static = obs.state.walls if hasattr(obs.state, "walls") else obs.state.static
        allowed = {tuple(m) for m in self.rules.moves.tolist()}
        assert all(tuple(d) in allowed for d in (moves - agents).tolist())
        assert not static[np.arange(len(moves)), moves[:, 0], moves[:, 1]].any()
        return moves


def test_obstacles_ahead_puts_now_first():
    now = np.zeros((1, 2, 2))
    forecast = np.ones((1, 2, 5, 2)) * np.arange(1, 6)[None, None, :, None]
    ahead = obstacles_ahead(now, forecast)
    assert ahead.shape == (1, 6, 2, 2) and ahead[0, 0].sum() == 0 and ahead[0, 3, 0, 0] == 3


def test_rows_pair_every_planner_with_every_forecaster_on_the_chosen_episodes(tmp_path):
    data = st_data.blob_examples(BLOB, ExpertConfig(), 64, "train", np.arange(4))
    path = train_st(data, TINY, STTrainConfig(steps=1, batch_size=2), 64, tmp_path, progress=False)
    cfg = STEvalConfig(test_start=7, test_episodes=3, chunk_size=2, max_steps=4, ablations=["no-check+no-guidance"])
    chunks = make_chunks("blob", BLOB, make_rows(cfg), cfg, STSamplingConfig(candidates=2, steps=1),
                         STPlannerConfig(), ExpertConfig(), str(path), {})
    out = evaluate_rows(chunks, SerialBackend())
    names = ["astar+oracle", "diffusion+oracle", "astar+constant-velocity", "diffusion+constant-velocity",
             "diffusion[no-check+no-guidance]+oracle"]
    assert list(out.rows) == names
    assert out.indices == [7, 8, 9] and (out.episodes.start, out.episodes.count) == (7, 3)
    assert all(out.rows[n].episodes == 3 for n in names)
    assert all((out.rows[n].candidates_feasible is not None) == n.startswith("diffusion") for n in names)
    pairs = {(p.a, p.b) for p in paired_with_astar(out)}
    assert pairs == {("astar+oracle", "diffusion+oracle"), ("astar+constant-velocity", "diffusion+constant-velocity"),
                     ("diffusion+oracle", "diffusion[no-check+no-guidance]+oracle")}
    assert "diffusion[no-check+no-guidance]+oracle" in format_rows(out)


# ---------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", ["diffusion-st-cpu", "diffusion-st-grid-cpu"])
def test_smoke_runs_write_rows_with_successes_and_episodes(tmp_path, preset):
    rc = main(["run", preset, "--smoke", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"),
               "--workers", "1", "--no-progress", "--set", "eval.forecasters=[oracle]", "--set", "eval.test_start=5"])
    assert rc == 0
    results = RunResult.from_json(json.loads((tmp_path / "run" / "results.json").read_text()))
    evaluation = results.primary
    assert results.family == "diffusion-st" and set(evaluation.rows) == {"astar+oracle", "diffusion+oracle"}
    assert all(r.episodes == 3 and 0 <= r.successes <= 3 for r in evaluation.rows.values())
    assert evaluation.indices == [5, 6, 7]
    assert (tmp_path / "run" / "report.md").exists()


def test_bad_settings_are_one_line_user_errors(tmp_path, capsys):
    for bad, says in (("eval.ablations=[no-brakes]", "valid choices"), ("eval.ablations=[no-check+no-brakes]", "valid"),
                      ("eval.forecasters=[psychic]", "valid choices"), ("eval.split=train", "valid choices"),
                      ("data.horizon=30", "divisible by 4")):
        assert main(["run", "diffusion-st-cpu", "--smoke", "--out", str(tmp_path), "--set", bad]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
