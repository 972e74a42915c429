"""Vector envs over the batched core: `num_envs` episodes in one set of numpy arrays, not N env copies.

`gymnasium.make_vec("hrmlab/BounceGrid-v0", num_envs=64)` gives this class (the ids register it as their
`vector_entry_point`); `vectorization_mode="sync"` gives gymnasium's `SyncVectorEnv` of the single env,
which it matches: same spaces, rules, rewards and `next-step` autoreset (the step after an episode ends
returns the new episode's first observation, reward 0, not terminated or truncated, and ignores that
sub-env's action).

Episodes: `reset(seed=s)` draws random train-split episodes and so does every autoreset. With
`options={"protocol": P, "episode": i}` sub-env j starts protocol P's episode i + j and each autoreset
takes the next unused index (i + num_envs, i + num_envs + 1, …): the evaluator's episodes, in order, for
a vector loop. `{"split": s, "episode": i}` does the same over a split. Autoresets take their episodes
from a chunk of `prefetch` episodes built and warmed up together (the cost of building episodes is
mostly per call; the episodes themselves do not depend on the chunk).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hrmlab.envs import core
from hrmlab.envs.core import BLOB_WORLD, BOUNCE_GRID, EpisodeQueue, LiveEpisodes, WorldKind
from hrmlab.envs.env import episode_options, history_length, make_world, observation_space
from hrmlab.errors import InvalidValue, UserError
from hrmlab.worlds import OBSERVED_HISTORY


class HrmlabVectorEnv(VectorEnv):
    """`num_envs` episodes of one world stepped together; spaces and rules as `env.HrmlabEnv`."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
    kind: WorldKind = BOUNCE_GRID

    def __init__(self, num_envs: int = 1, protocol: str = "standard", history: int = OBSERVED_HISTORY,
                 render_mode: str | None = None, prefetch: int = 256, **world_settings):
        if render_mode is not None:
            raise UserError("the vector env does not render; render a single env (render_mode='rgb_array')")
        self.num_envs = int(num_envs)
        if self.num_envs < 1:
            raise InvalidValue(f"num_envs must be >= 1, got {num_envs!r}")
        history = history_length(history)
        self.rules, self.world = make_world(self.kind, protocol, world_settings)
        self.single_observation_space = observation_space(self.kind, self.world, history)
        self.single_action_space = spaces.Discrete(len(self.kind.moves))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        # per-row clocks: rows restart at different times and BounceGrid's random turning reads the clock
        self.live = LiveEpisodes(self.kind, self.world, self.num_envs, history, row_clocks=True)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self.history_len, self.prefetch = history, prefetch
        self._queue: EpisodeQueue | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rules, source, first = episode_options(options, self.rules, self.kind, self.world)
        if first is None:
            indices, next_index = core.draw_indices(self.np_random, self.num_envs), None
        else:
            indices, next_index = first + np.arange(self.num_envs), first + self.num_envs
        self.live.load(np.arange(self.num_envs), rules, source, indices)
        self._queue = EpisodeQueue(self.kind, self.world, rules, source, self.history_len, self.np_random,
                                   next_index, chunk=max(self.prefetch, self.num_envs))
        self._autoreset[:] = False
        return self.live.observation(), self._infos(np.zeros(self.num_envs, dtype=bool), None)

    def step(self, actions):
        actions = np.asarray(actions).reshape(-1)
        n_moves = len(self.kind.moves)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer) \
                or actions.min() < 0 or actions.max() >= n_moves:
            raise ValueError(f"expected {self.num_envs} integer actions in 0..{n_moves - 1}")
        if self._queue is None:
            raise RuntimeError("call reset() first")
        restart = np.flatnonzero(self._autoreset)
        reached, crashed, timed_out = self.live.move(actions)
        done = 0
        for part in self._queue.take(restart.size):
            self.live.place(restart[done:done + len(part.indices)], part)
            done += len(part.indices)
        reached[restart] = crashed[restart] = timed_out[restart] = False
        terminated = reached | crashed
        self._autoreset = terminated | timed_out
        rewards = reached.astype(np.float64) - crashed.astype(np.float64)
        outcome = np.where(reached, "success", np.where(crashed, "crash", "timeout"))
        return (self.live.observation(), rewards, terminated, timed_out.copy(),
                self._infos(self._autoreset.copy(), outcome))

    def true_world(self):
        """The forecasters' `Observation` of all sub-envs (history, true state, world config)."""
        return self.live.world()

    def _infos(self, done: np.ndarray, outcome: np.ndarray | None) -> dict:
        """Gymnasium's vector info layout: an array per key plus a `_key` mask of the sub-envs it holds."""
        live = self.live
        infos = {"episode_index": live.episode_index.copy(), "_episode_index": np.ones(self.num_envs, dtype=bool),
                 "steps": live.steps.copy(), "_steps": np.ones(self.num_envs, dtype=bool)}
        if done.any():
            infos["outcome"] = np.where(done, outcome, None).astype(object)
            infos["_outcome"] = done
        return infos


class BounceGridVectorEnv(HrmlabVectorEnv):
    kind = BOUNCE_GRID


class BlobWorldVectorEnv(HrmlabVectorEnv):
    kind = BLOB_WORLD
