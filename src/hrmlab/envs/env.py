"""The single-episode Gymnasium envs: `hrmlab/BounceGrid-v0` (and the suite worlds), `hrmlab/BlobWorld-v0`.

Observation (a `Dict`; the same dict `hrmlab.policies` documents, without the batch axis):
    agent (2,) int64 · goal (2,) int64 · walls (G, G) int8 · obstacles (N, H, 2) float64, the last H
    obstacle positions, oldest first — the history the forecasters see.
Action (`Discrete`): BounceGrid 5 = the planner's moves (up, down, left, right, wait); BlobWorld 9 = the
    expert's king moves + wait (`core.KING_MOVES`). A move off the grid or into a wall leaves the agent
    in place (the built-in planners never make one).
Dynamics and end of an episode, as the evaluator (`evaluate/episodes.py`): after the move the world takes
    one physics step; then the protocol's tests: the agent within `goal_radius` of the goal is a success,
    an obstacle within `crash_radius` of the agent a crash (`standard`: crash test first; `seed-*`:
    goal first). Both end the episode (`terminated`). After `max_steps` moves without either the episode
    is a timeout: `truncated`. `info["outcome"]` says which, on the last step.
Reward: +1 on success, −1 on a crash, 0 otherwise (success rate = mean return over episodes ≥ 0).

Episodes: `reset(options={"protocol": P, "episode": i})` is episode i of protocol P exactly as the
evaluator runs it (test split or the original's legacy seeds, warm-up included) under P's rules;
`reset(options={"split": "val", "episode": i})` a validation episode under the env's rules; a plain
`reset(seed=s)` draws a random train-split episode (never a test episode: splits are disjoint by
construction, `worlds/seeding.py`). `env.unwrapped.true_world()` is the true world, for privileged
policies such as `AStarPolicy("oracle")` (`hrmlab.policies.act` passes it): a live object, copy it to
keep it. (`info` carries plain data only: episode source and index, moves made, and the outcome.)
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import numpy as np
import gymnasium as gym
from gymnasium import spaces

from hrmlab.envs import core
from hrmlab.envs.core import BLOB_WORLD, BOUNCE_GRID, LiveEpisodes, WorldKind
from hrmlab.errors import InvalidType, InvalidValue, UserError
from hrmlab.evaluate.protocols import Protocol
from hrmlab.worlds import OBSERVED_HISTORY

OPTION_KEYS = ("protocol", "split", "episode")


def observation_space(kind: WorldKind, config, history_len: int) -> spaces.Dict:
    g = kind.size(config)
    cell = spaces.Box(0, g - 1, shape=(2,), dtype=np.int64)
    return spaces.Dict({
        "agent": cell,
        "goal": cell,
        "walls": spaces.MultiBinary([g, g]),
        "obstacles": spaces.Box(0.0, kind.coordinate_max(config), shape=(config.num_obstacles, history_len, 2),
                                dtype=np.float64),
    })


def make_world(kind: WorldKind, protocol: str, settings: dict):
    """(rules, world config): a protocol with its own world (the suites) fixes the world."""
    rules = core.get_rules(kind, protocol)
    own = getattr(rules, "world", None)
    if own is not None:
        if settings:
            raise UserError(f"protocol {protocol} runs on its own world; world settings "
                            f"({', '.join(settings)}) are not allowed with it")
        return rules, own
    return rules, core.world_config(kind, settings)


def check_rules(kind: WorldKind, config, name: str) -> Protocol:
    """The rules of protocol `name`, refused when its episodes live in another world than `config`."""
    rules = core.get_rules(kind, name)
    own = getattr(rules, "world", None)
    if own is not None and own != config:
        raise UserError(f"protocol {name} runs on its own world, not this env's; use "
                        f"gymnasium.make({core.suite_env_id(name)!r})")
    return rules


def _integer(value, what: str, minimum: int) -> int:
    """`value` as an integer >= `minimum`; else an InvalidType / InvalidValue naming `what`."""
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidType(f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise InvalidValue(f"{what} must be >= {minimum}, got {number}")
    return number


def history_length(history) -> int:
    """The `history` argument of the envs: positions per obstacle in an observation (an integer >= 1)."""
    return _integer(history, "history", 1)


def episode_index(value) -> int | None:
    """options['episode']: a non-negative integer (a one-element integer array too), or None (draw one)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, (bool, np.bool_)):
        raise InvalidType(f"reset option 'episode' must be an integer, got {value!r}")
    return _integer(value, "reset option 'episode'", 0)


def episode_options(options: dict | None, default_rules: Protocol, kind: WorldKind, config):
    """(rules, source, index or None) from reset options; None index = draw one. Bad options are a ValueError
    or TypeError naming the option (also a UserError)."""
    if options is not None and not isinstance(options, Mapping):
        raise InvalidType(f"reset options must be a dict (keys {', '.join(OPTION_KEYS)}), got {type(options).__name__}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS), key=str)
    if unknown:
        raise InvalidValue(f"unknown reset option(s) {', '.join(map(str, unknown))}; valid: {', '.join(OPTION_KEYS)}")
    index = episode_index(options.get("episode"))
    if "protocol" in options:
        if "split" in options:
            raise InvalidValue("give either a protocol (its own episodes) or a split, not both")
        if index is None:
            raise InvalidValue("a protocol episode needs options['episode'] (its index)")
        return check_rules(kind, config, options["protocol"]), "protocol", index
    return default_rules, options.get("split", "train"), index


class HrmlabEnv(gym.Env):
    """One episode at a time of a hrmlab world; see the module docstring for spaces and rules."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    kind: WorldKind = BOUNCE_GRID

    def __init__(self, render_mode: str | None = None, protocol: str = "standard", history: int = OBSERVED_HISTORY,
                 **world_settings):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UserError(f"unknown render_mode {render_mode!r}; valid choices: rgb_array")
        self.render_mode = render_mode
        self.rules, self.world = make_world(self.kind, protocol, world_settings)
        self.history_len = history = history_length(history)
        self.observation_space = observation_space(self.kind, self.world, history)
        self.action_space = spaces.Discrete(len(self.kind.moves))
        self.live = LiveEpisodes(self.kind, self.world, 1, history)
        self._over = True
        self._canvas = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rules, source, index = episode_options(options, self.rules, self.kind, self.world)
        if index is None:
            index = int(core.draw_indices(self.np_random, 1)[0])
        self.live.load(np.arange(1), rules, source, [index])
        self._over = False
        self._outcome = None
        if self._canvas is not None:
            self._canvas.close()
        self._canvas = None
        if self.render_mode == "rgb_array":
            from hrmlab.envs.render import EpisodeCanvas  # matplotlib only when rendering

            live = self.live
            self._canvas = EpisodeCanvas(self.kind.name, rules, live.episode_source[0], index,
                                         self.kind.walls(live.state)[0], live.state.start[0], live.state.goal[0],
                                         live.history[0], live.agent[0])
        return self._observation(), self._info()

    def step(self, action):
        if self._over:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}; expected an int in 0..{self.action_space.n - 1}")
        reached, crashed, timed_out = self.live.move(np.array([int(action)]))
        reached, crashed, timed_out = bool(reached[0]), bool(crashed[0]), bool(timed_out[0])
        self._over = reached or crashed or timed_out
        if self._over:
            self._outcome = core.OUTCOME_NAMES[0 if reached else 1 if crashed else 2]
        if self._canvas is not None:
            self._canvas.record(self.live.state.pos[0], self.live.agent[0])
        reward = 1.0 if reached else -1.0 if crashed else 0.0
        return self._observation(), reward, reached or crashed, timed_out, self._info()

    def true_world(self):
        """The forecasters' `Observation` of this episode (history, true state, world config)."""
        return self.live.world()

    def render(self):
        if self._canvas is None:
            return None
        return self._canvas.draw(self._outcome)

    def close(self):
        if self._canvas is not None:
            self._canvas.close()
            self._canvas = None

    def _observation(self) -> dict:
        return {k: v[0] for k, v in self.live.observation().items()}

    def _info(self) -> dict:
        live = self.live
        info = {"episode_source": live.episode_source[0], "episode_index": int(live.episode_index[0]),
                "steps": int(live.steps[0])}
        if self._over and self._outcome is not None:
            info["outcome"] = self._outcome
        return info


class BounceGridEnv(HrmlabEnv):
    """`hrmlab/BounceGrid-v0`: keyword arguments are `BounceGridConfig` settings (and `protocol`)."""

    kind = BOUNCE_GRID


class BlobWorldEnv(HrmlabEnv):
    """`hrmlab/BlobWorld-v0`: keyword arguments are `BlobWorldConfig` settings; protocols standard, seed."""

    kind = BLOB_WORLD
