"""The Gymnasium envs and outside policies: exactly the evaluator's episodes and outcomes (issue 18)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

import hrmlab.envs  # noqa: E402  (registers the ids)
from gymnasium.utils.env_checker import check_env  # noqa: E402

from hrmlab.backends.local import SerialBackend  # noqa: E402
from hrmlab.cli import main  # noqa: E402
from hrmlab.errors import UserError  # noqa: E402
from hrmlab.evaluate.episodes import OUTCOMES, apply_actions, make_episodes, run_closed_loop, warm_up  # noqa: E402
from hrmlab.evaluate.protocols import get_protocol  # noqa: E402
from hrmlab.evaluate.runner import EvalConfig, evaluate  # noqa: E402
from hrmlab.forecast.physics import PHYSICS_FORECASTERS  # noqa: E402
from hrmlab.forecast.registry import parse_forecasters  # noqa: E402
from hrmlab.planning.spacetime_astar import PlannerConfig  # noqa: E402
from hrmlab.policies import AStarPolicy, PolicySpec, act, parse_policies  # noqa: E402
from hrmlab.worlds import blob_world  # noqa: E402
from hrmlab.worlds.blob_world import BlobWorldConfig  # noqa: E402
from hrmlab.worlds.bounce_grid import BounceGridConfig  # noqa: E402


def evaluator_outcomes(protocol, forecaster, n, world=None):
    rec = run_closed_loop(get_protocol(protocol), world, PlannerConfig(),
                          PHYSICS_FORECASTERS[forecaster](), np.arange(n), forecast_error=False)
    return [(OUTCOMES[o], int(s)) for o, s in zip(rec.outcome, rec.steps)]


def run_gym_episodes(env, policy, protocol, n):
    out = []
    for i in range(n):
        obs, info = env.reset(options={"protocol": protocol, "episode": i})
        while True:
            obs, reward, terminated, truncated, info = env.step(act(policy, obs, env))
            if terminated or truncated:
                break
        assert reward == {"success": 1.0, "crash": -1.0, "timeout": 0.0}[info["outcome"]]
        assert truncated == (info["outcome"] == "timeout")
        out.append((info["outcome"], info["steps"]))
    return out


def test_core_does_not_import_gymnasium():
    code = ("import sys, hrmlab.cli, hrmlab.evaluate.runner, hrmlab.policies, hrmlab.experiments.grid.stages, "
            "hrmlab_bench.registry; "  # the bench registry too: `hrmlab bench` without --only gym
            "hrmlab.cli.build_parser(); assert 'gymnasium' not in sys.modules, 'core imported gymnasium'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ids_need_the_import_or_the_module_prefix():
    """gymnasium 1.x loads no plugin entry points: a fresh process knows the ids only after
    `import hrmlab.envs`, or through the "module:id" form."""
    code = ("import gymnasium as gym\n"
            "try:\n    gym.make('hrmlab/BounceGrid-v0')\nexcept gym.error.Error:\n    print('unknown before import')\n"
            "env = gym.make('hrmlab.envs:hrmlab/BounceGrid-v0')\nprint(type(env.unwrapped).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["unknown", "before", "import", "BounceGridEnv"]


@pytest.mark.parametrize("env_id", hrmlab.envs.ENV_IDS)
def test_check_env_passes(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught if "WARN:" in str(w.message)] == []  # gymnasium.logger.warn's prefix
    env.close()


def test_suite_ids_run_the_suite_worlds():
    for env_id, protocol in [("hrmlab/BounceGrid-patrol-v0", "suite-patrol"), ("hrmlab/BounceGrid-rush-v0", "suite-rush")]:
        env = gym.make(env_id)
        assert env.unwrapped.world == get_protocol(protocol).world
        assert env.observation_space["obstacles"].shape == (get_protocol(protocol).world.num_obstacles, 20, 2)


def test_astar_oracle_through_gymnasium_make_is_the_evaluator():
    """Done-when: A* + oracle through gymnasium.make on standard episodes 0–199 = the evaluator's outcomes."""
    env = gym.make("hrmlab/BounceGrid-v0")
    assert run_gym_episodes(env, AStarPolicy("oracle"), "standard", 200) == evaluator_outcomes("standard", "oracle", 200)


def test_seed_protocol_episodes_and_rules_are_the_evaluators():
    """seed-v4: legacy seeds, goal test first, its own radii; A* + constant velocity, outcomes identical."""
    env = gym.make("hrmlab/BounceGrid-v0")
    got = run_gym_episodes(env, AStarPolicy("constant-velocity"), "seed-v4", 30)
    assert got == evaluator_outcomes("seed-v4", "constant-velocity", 30)
    obs, _ = env.reset(options={"protocol": "seed-v3", "episode": 7})
    state = make_episodes(get_protocol("seed-v3"), BounceGridConfig(), np.array([7]))
    history = warm_up(BounceGridConfig(), state, 20, 20)
    assert np.array_equal(obs["walls"], state.walls[0]) and np.array_equal(obs["obstacles"], history[0])


def test_reset_seed_draws_train_episodes_never_test_ones():
    env = gym.make("hrmlab/BounceGrid-v0")
    test = make_episodes(get_protocol("standard"), BounceGridConfig(), np.arange(1000))
    test_history = warm_up(BounceGridConfig(), test, 20, 20)
    seen = set()
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        again, _ = env.reset(seed=seed)
        assert info["episode_source"] == "train"
        assert all(np.array_equal(obs[k], again[k]) for k in obs)  # reset(seed) is deterministic
        same_walls = np.all(test.walls == obs["walls"].astype(bool), axis=(1, 2))
        same_obstacles = np.all(test_history == obs["obstacles"], axis=(1, 2, 3))
        assert not np.any(same_walls & same_obstacles)
        seen.add(info["episode_index"])
    assert len(seen) == 40
    obs, info = env.reset(options={"split": "val", "episode": 3})
    assert (info["episode_source"], info["episode_index"]) == ("val", 3)


def test_vector_env_autoresets_through_the_evaluators_episodes():
    """Batched core with per-row clocks (random turning reads the clock) and prefetched autoresets:
    protocol episodes 0, 1, 2, … in order give the evaluator's outcomes."""
    n = 40
    envs = gym.make_vec("hrmlab/BounceGrid-turning-v0", num_envs=7, prefetch=5)
    assert isinstance(envs, hrmlab.envs.BounceGridVectorEnv)
    policy = AStarPolicy("oracle")
    obs, infos = envs.reset(options={"protocol": "suite-turning", "episode": 0})
    got, was_done = {}, np.zeros(7, dtype=bool)
    while len(got) < n:
        obs, rewards, terminated, truncated, infos = envs.step(act(policy, obs, envs))
        # next-step autoreset: the step after an episode's end starts the next one (reward 0, not done)
        assert not np.any((terminated | truncated | (rewards != 0)) & was_done)
        assert np.all(infos["steps"][was_done] == 0)
        was_done = terminated | truncated
        for j in np.flatnonzero(was_done):
            got.setdefault(int(infos["episode_index"][j]), (infos["outcome"][j], int(infos["steps"][j])))
    assert [got[i] for i in range(n)] == evaluator_outcomes("suite-turning", "oracle", n)


def test_vector_env_random_actions_match_spaces():
    envs = gym.make_vec("hrmlab/BounceGrid-v0", num_envs=5)
    obs, _ = envs.reset(seed=3)
    for _ in range(100):
        obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
        assert envs.observation_space.contains(obs)
        assert np.all(np.abs(rewards) <= 1) and not np.any(terminated & truncated)
    with pytest.raises(ValueError):
        envs.step(np.full(5, 7))


def test_blob_world_protocol_episodes_are_the_diffusion_evaluations():
    env = gym.make("hrmlab/BlobWorld-v0")
    assert env.action_space.n == 9  # king moves + wait
    obs, info = env.reset(options={"protocol": "standard", "episode": 3})
    state = blob_world.reset_split(BlobWorldConfig(), "test", [3])
    assert np.array_equal(obs["walls"], state.static[0]) and np.array_equal(obs["agent"], state.start[0])
    assert np.array_equal(obs["goal"], state.goal[0]) and np.array_equal(obs["obstacles"][:, -1], state.pos[0])
    seed_state = blob_world.reset_seed_exact(BlobWorldConfig(), [1000])  # the original's first evaluation seed
    obs, info = env.reset(options={"protocol": "seed", "episode": 0})
    assert np.array_equal(obs["walls"], seed_state.static[0])
    wait = int(np.flatnonzero(np.all(hrmlab.envs.KING_MOVES == 0, axis=1))[0])
    obs, reward, terminated, truncated, info = env.step(wait)
    assert np.array_equal(obs["agent"], seed_state.start[0]) and info["steps"] == 1


def test_blocked_moves_leave_the_agent_in_place():
    walls = np.zeros((3, 4, 4), dtype=bool)
    walls[2, 1, 0] = True
    agent = np.array([[0, 0], [0, 0], [0, 0]])
    # up (off the grid), right (free), down into a wall
    assert apply_actions(walls, agent, np.array([0, 3, 1])).tolist() == [[0, 0], [0, 1], [0, 0]]


def test_env_refuses_bad_settings_and_protocols():
    with pytest.raises(UserError, match="num_obstacle"):
        gym.make("hrmlab/BounceGrid-v0", num_obstacle=3)
    env = gym.make("hrmlab/BounceGrid-v0", num_obstacles=3)
    assert env.observation_space["obstacles"].shape == (3, 20, 2)
    with pytest.raises(UserError, match="BounceGrid-rush-v0"):
        env.reset(options={"protocol": "suite-rush", "episode": 0})
    with pytest.raises(UserError, match="one-shot"):
        env.reset(options={"protocol": "seed-v1", "episode": 0})
    with pytest.raises(UserError, match="unknown reset option"):
        env.reset(options={"episdoe": 0})


def test_render_draws_the_episode_like_the_animations():
    env = gym.make("hrmlab/BounceGrid-v0", render_mode="rgb_array")
    obs, _ = env.reset(options={"protocol": "standard", "episode": 0})
    first = env.render()
    env.step(3)
    second = env.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape == second.shape
    assert np.any(first != second)
    env.close()


class AlwaysWait:
    """An unbatched policy: one observation in, one action out."""

    batched = False

    def __call__(self, obs):
        assert obs["agent"].shape == (2,)
        return 4


def always_wait():
    return AlwaysWait()


def test_policy_hook_runs_policies_in_the_evaluators_loop():
    specs = parse_forecasters("oracle")
    policies = [PolicySpec("astar", "hrmlab.policies:astar_oracle"), PolicySpec("wait", f"{__name__}:always_wait")]
    res = evaluate(EvalConfig(episodes=30, chunk_size=13), BounceGridConfig(), PlannerConfig(), specs,
                   SerialBackend(), policies=policies)
    assert res.rows["astar"].per_episode == res.rows["oracle"].per_episode
    assert res.rows["wait"].successes == 0  # the agent never leaves the start
    assert {(p.a, p.b) for p in res.pairwise} == {("oracle", "astar"), ("oracle", "wait"), ("astar", "wait")}
    assert res.policies == {"astar": "hrmlab.policies:astar_oracle", "wait": f"{__name__}:always_wait"}
    with pytest.raises(UserError, match="one-shot"):
        evaluate(EvalConfig(protocol="seed-v1", episodes=5), BounceGridConfig(), PlannerConfig(), specs,
                 SerialBackend(), policies=policies)


def test_cli_policy_row_and_paired_test(capsys):
    assert main(["evaluate", "--protocol", "standard", "--policy", "rnd=hrmlab.policies:random_policy",
                 "--forecasters", "oracle", "--episodes", "20"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[3:5]]
    assert rows == ["oracle", "rnd"] and "oracle vs rnd" in out


@pytest.mark.parametrize("spec,message", [("rnd=no_such_module_x:f", "cannot import module"),
                                          ("rnd=hrmlab.policies:no_such_factory", "has no attribute"),
                                          ("rnd", "expected NAME=module:factory")])
def test_cli_bad_policy_is_one_line_exit_2(capsys, spec, message):
    assert main(["evaluate", "--policy", spec, "--episodes", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    with pytest.raises(UserError):
        parse_policies([spec])


# ------------------------------------------------------------------ issue 32: one clear line for every bad input
@pytest.mark.parametrize("kwargs,error,needle", [
    ({"num_obstacles": -1}, ValueError, "num_obstacles must be >= 0, got -1"),
    ({"grid_size": 0}, ValueError, "grid_size must be >= 2, got 0"),
    ({"speed": "fast"}, TypeError, "speed must be a number, got 'fast'"),
    ({"turn_prob": 1.5}, ValueError, "turn_prob must be between 0.0 and 1.0"),
    ({"history": 0}, ValueError, "history must be >= 1, got 0"),
])
def test_env_settings_are_checked_with_the_worlds_rules(kwargs, error, needle):
    """The envs check keyword settings with the same rules as every config (hrmlab/validate.py): a ValueError or
    TypeError naming the argument, Gymnasium's convention, which is also a UserError (one line in the CLI)."""
    for make in (lambda: gym.make("hrmlab/BounceGrid-v0", **kwargs),
                 lambda: gym.make_vec("hrmlab/BounceGrid-v0", num_envs=2, **kwargs)):
        with pytest.raises(error, match=needle) as caught:
            make()
        assert isinstance(caught.value, UserError)
    with pytest.raises(ValueError, match="num_envs must be >= 1, got 0"):
        gym.make_vec("hrmlab/BounceGrid-v0", num_envs=0)


@pytest.mark.parametrize("options,error,needle", [
    (["protocol", "standard"], TypeError, "reset options must be a dict"),
    ({"episode": "abc"}, TypeError, "'episode' must be an integer, got 'abc'"),
    ({"episode": 2.5}, TypeError, "'episode' must be an integer"),
    ({"episode": -1}, ValueError, "'episode' must be >= 0, got -1"),
    ({"protocol": "standard", "episode": None}, ValueError, "needs options\\['episode'\\]"),
])
def test_bad_reset_options_name_the_option(options, error, needle):
    for env in (gym.make("hrmlab/BounceGrid-v0"), gym.make_vec("hrmlab/BounceGrid-v0", num_envs=2)):
        with pytest.raises(error, match=needle):
            env.reset(options=options)
    env = gym.make("hrmlab/BounceGrid-v0")  # integer-like indices still work
    assert env.reset(options={"protocol": "standard", "episode": np.int64(3)})[1]["episode_index"] == 3
    assert env.reset(options={"protocol": "standard", "episode": np.array([4])})[1]["episode_index"] == 4


def raising_factory():
    raise RuntimeError("weights not found")


class FailsOnSecondCall:
    """Unbatched: the second call (episode 1 of the chunk, step 0) raises."""

    batched = False

    def __init__(self):
        self.calls = 0

    def __call__(self, obs):
        self.calls += 1
        if self.calls == 2:
            raise ValueError("bad cell\nsecond line")
        return 4


class FailsAtStep2:
    """Batched: raises at the third step of the closed loop."""

    def __init__(self):
        self.calls = 0

    def __call__(self, obs):
        self.calls += 1
        if self.calls == 3:
            raise KeyError("obstacles")
        return np.full(len(obs["agent"]), 4)


def fails_on_second_call():
    return FailsOnSecondCall()


def fails_at_step_2():
    return FailsAtStep2()


@pytest.mark.parametrize("factory,needle", [
    ("raising_factory", f"policy 'p' factory '{__name__}:raising_factory' raised RuntimeError: weights not found"),
    ("fails_on_second_call", "policy 'p' raised ValueError: bad cell second line (episode 6, step 0)"),
    ("fails_at_step_2", "policy 'p' raised KeyError: 'obstacles' (a batch of 4 episodes, 5…8, step 2)"),
])
def test_cli_policy_that_raises_is_one_line_naming_where(capsys, factory, needle):
    args = ["evaluate", "--forecasters", "zero", "--start", "5", "--episodes", "4", "--policy", f"p={__name__}:{factory}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hrmlab: error: {needle}"]


def test_verbose_logs_the_traceback_of_a_policy_that_raises(tmp_path):
    """`hrmlab -v` also logs the traceback, from a worker process too (the error carries it across)."""
    (tmp_path / "my_policy.py").write_text("def make():\n    return lambda obs: obs['nope']\n")
    args = [sys.executable, "-m", "hrmlab.cli", "-v", "evaluate", "--forecasters", "zero", "--episodes", "4",
            "--workers", "2", "--set", "eval.chunk_size=2", "--policy", "mine=my_policy:make"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "hrmlab: error: policy 'mine' raised KeyError: 'nope' (a batch of 2 episodes, 0…1, step 0)" in proc.stderr \
        or "hrmlab: error: policy 'mine' raised KeyError: 'nope' (a batch of 2 episodes, 2…3, step 0)" in proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "my_policy.py" in proc.stderr


def test_policy_exceptions_reach_your_own_loop_unchanged():
    """`act` (your Gymnasium loop) does not wrap the policy's exception: only the evaluator names episode and step."""
    env = gym.make("hrmlab/BounceGrid-v0")
    obs, _ = env.reset(seed=0)
    with pytest.raises(KeyError):
        policy = FailsAtStep2()
        for _ in range(3):
            obs, *_ = env.step(act(policy, obs, env))
