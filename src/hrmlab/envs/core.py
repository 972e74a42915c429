"""Live episodes for the Gymnasium envs: the evaluator's closed loop, one move at a time, for B episodes.

`LiveEpisodes` holds a batch of episodes of one world and advances them together with numpy; the single
env is a batch of one, the vector env a batch of `num_envs` (no copies of the single env). It is a thin
adapter: episodes are built and stepped with the closed loop's own pieces (`evaluate/episodes.py`:
`make_episodes` / `make_blob_episodes`, `warm_up`, `apply_actions`, `advance`), so episode i of a protocol
is the evaluator's episode i.

`WorldKind` says what differs between BounceGrid and BlobWorld: moves (the planners' own,
`planning/`), physics (`worlds/`), episode sources and the rules (a `Protocol` of `evaluate/protocols.py`:
warm-up, step limit, goal and crash radii, test order). No gymnasium here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from hrmlab.errors import UserError, choose
from hrmlab.evaluate.episodes import advance, apply_actions, make_blob_episodes, make_episodes, warm_up
from hrmlab.evaluate.protocols import BLOB_PROTOCOLS, PROTOCOLS, Protocol
from hrmlab.forecast.base import Observation
from hrmlab.planning import blob_astar
from hrmlab.planning.spacetime_astar import MOVES
from hrmlab.policies import observation
from hrmlab.worlds import OBSERVED_HISTORY, blob_world, bounce_grid, seeding
from hrmlab.worlds.blob_world import BlobWorldConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

KING_MOVES = blob_astar.MOVES
"""BlobWorld's moves: the 8 king moves and wait (0, 0), in the expert's neighbour order."""

SPLITS = ("train", "val", "test")
OUTCOME_NAMES = ("success", "crash", "timeout")


@dataclass(frozen=True)
class WorldKind:
    """Everything the envs need to know about one world family."""

    name: str
    moves: np.ndarray
    """(A, 2) cell deltas; action a moves the agent by moves[a]."""
    config: type
    step: Callable
    """step(config, state): one physics step of every episode, in place."""
    split_episodes: Callable
    """split_episodes(config, split, indices) → state at t = 0."""
    protocol_episodes: Callable
    """protocol_episodes(protocol, config, indices) → the protocol's episodes `indices` at t = 0."""
    protocols: Callable
    """protocols() → {name: Protocol}, the closed-loop rules an episode can be run under."""
    walls: Callable
    """walls(state) → (B, G, G) bool cells the agent may not enter."""
    size: Callable
    """size(config) → cells per side."""
    coordinate_max: Callable
    """coordinate_max(config) → the largest obstacle coordinate the world produces."""


def _bounce_protocols() -> dict[str, Protocol]:
    return {name: p for name, p in PROTOCOLS.items() if not p.one_shot}


BOUNCE_GRID = WorldKind(
    name="BounceGrid", moves=MOVES, config=BounceGridConfig, step=bounce_grid.step,
    split_episodes=bounce_grid.reset_split,
    protocol_episodes=lambda protocol, config, indices: make_episodes(protocol, config, np.asarray(indices)),
    protocols=_bounce_protocols, walls=lambda state: state.walls, size=lambda config: config.grid_size,
    coordinate_max=lambda config: max(float(config.grid_size), config.clip_hi))

BLOB_WORLD = WorldKind(
    name="BlobWorld", moves=KING_MOVES, config=BlobWorldConfig, step=blob_world.step,
    split_episodes=blob_world.reset_split,
    protocol_episodes=lambda protocol, config, indices: make_blob_episodes(protocol, config, np.asarray(indices)),
    protocols=lambda: BLOB_PROTOCOLS, walls=lambda state: state.static, size=lambda config: config.map_size,
    coordinate_max=lambda config: float(config.map_size))


def suite_env_id(protocol: str) -> str:
    """The registered id of a suite protocol's world: suite-patrol → hrmlab/BounceGrid-patrol-v0."""
    return f"hrmlab/BounceGrid-{protocol.removeprefix('suite-')}-v0"


def world_config(kind: WorldKind, settings: dict):
    """The kind's config from keyword settings; an unknown key is a UserError naming the valid ones. Values are
    coerced and range-checked as every config is (`config.from_dict`, `hrmlab/validate.py`): a bad one is a
    ValueError or TypeError naming the argument (`num_obstacles must be >= 0, got -1`), also a UserError."""
    from hrmlab.config import from_dict

    valid = [f.name for f in dataclasses.fields(kind.config)]
    for key in settings:
        choose(f"{kind.name} setting", key, valid)
    return from_dict(kind.config, settings)


def get_rules(kind: WorldKind, name: str) -> Protocol:
    protocols = kind.protocols()
    if kind is BOUNCE_GRID and name in PROTOCOLS and PROTOCOLS[name].one_shot:
        raise UserError(f"protocol {name} is one-shot (one plan from the start), not a closed loop; "
                        f"closed-loop choices: {', '.join(protocols)}")
    return protocols[choose(f"{kind.name} protocol", name, protocols)]


class LiveEpisodes:
    """B episodes of one world, each with its own agent, history and step count, advanced together.

    `row_clocks`: give each episode its own physics clock (`state.t` of shape (B, 1)), needed when rows
    restart at different times and the dynamics read the clock (BounceGrid's random turning)."""

    def __init__(self, kind: WorldKind, config, batch: int, history_len: int = OBSERVED_HISTORY, row_clocks: bool = False):
        self.kind, self.config, self.batch, self.history_len = kind, config, batch, history_len
        self.row_clocks = row_clocks
        self.rules: Protocol | None = None
        self.state = None
        self.history = None  # (B, N, H, 2)
        self.agent = np.zeros((batch, 2), dtype=np.int64)
        self.steps = np.zeros(batch, dtype=np.int64)
        self.walls_obs = None  # (B, G, G) int8
        self.episode_source = np.full(batch, "", dtype=object)  # protocol name or split of each row's episode
        self.episode_index = np.zeros(batch, dtype=np.int64)

    def load(self, rows: np.ndarray, rules: Protocol, source: str, indices) -> None:
        """Start episodes `indices` in `rows`: source 'protocol' = the protocol's own episodes (test split
        or legacy seeds), else a split name. Runs the rules' warm-up."""
        self.place(rows, prepare(self.kind, self.config, rules, source, indices, self.history_len))

    def place(self, rows: np.ndarray, ready: "Prepared") -> None:
        """Put prepared episodes into `rows` (all rows in order, or with row clocks any subset)."""
        rows = np.asarray(rows, dtype=np.int64)
        fresh, history = ready.state, ready.history
        if rows.size == self.batch:
            if not np.array_equal(rows, np.arange(self.batch)):
                raise ValueError("a full load takes the rows in order")
            fresh = fresh.copy()
            if self.row_clocks:
                fresh.t = np.full((self.batch, 1), fresh.t, dtype=np.int64)
            self.state, self.history = fresh, history.copy()
            self.walls_obs = self.kind.walls(fresh).astype(np.int8)
        else:
            if self.state is None or not self.row_clocks:
                raise ValueError("restarting some rows needs a full load first and row_clocks=True")
            for f in dataclasses.fields(self.state):
                value = getattr(fresh, f.name)
                if f.name == "t":
                    self.state.t[rows] = value
                elif isinstance(value, np.ndarray):
                    getattr(self.state, f.name)[rows] = value
            self.history[rows] = history
            self.walls_obs[rows] = self.kind.walls(fresh)
        self.rules = ready.rules
        self.agent[rows] = fresh.start
        self.steps[rows] = 0
        self.episode_source[rows] = ready.rules.name if ready.source == "protocol" else ready.source
        self.episode_index[rows] = ready.indices

    def move(self, actions: np.ndarray):
        """Move every agent, step the world, test goal and crash as the evaluator does.
        Returns (reached, crashed, timed_out), each (B,) bool."""
        self.agent[:] = apply_actions(self.kind.walls(self.state), self.agent, actions, self.kind.moves)
        self.steps += 1
        self.history, reached, crashed = advance(self.rules, self.kind.step, self.config, self.state, self.history,
                                                 self.agent)
        timed_out = (self.steps >= self.rules.max_steps) & ~reached & ~crashed
        return reached, crashed, timed_out

    def observation(self) -> dict:
        """Batched observation of every row (fresh arrays)."""
        return observation(self.agent, self.state.goal, self.walls_obs, self.history)

    def world(self) -> Observation:
        """What a privileged policy (the oracle) may read: history, the live true state, the config."""
        return Observation(self.history, self.state, self.config)


@dataclass
class Prepared:
    """Episodes built and warmed up, not yet in any row."""

    state: object
    history: np.ndarray
    rules: Protocol
    source: str
    indices: np.ndarray

    def take(self, sel) -> "Prepared":
        return Prepared(self.state.subset(sel), self.history[sel], self.rules, self.source, self.indices[sel])


def prepare(kind: WorldKind, config, rules: Protocol, source: str, indices, history_len: int) -> Prepared:
    """Build episodes `indices` of `source` ('protocol' = the protocol's own, else a split) and run the
    rules' warm-up, as the evaluator does (`make_episodes`, `warm_up`)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if source == "protocol":
        state = kind.protocol_episodes(rules, config, indices)
    else:
        state = kind.split_episodes(config, choose("split", source, SPLITS), indices)
    history = warm_up(config, state, rules.warmup, history_len, step=kind.step)
    return Prepared(state, history, rules, source, indices)


class EpisodeQueue:
    """The episodes autoresets start, built and warmed up `chunk` at a time. Episodes do not depend on the
    batch that builds them (`worlds/seeding.py`), so prefetching changes the cost, not the episodes.

    `next_index` None: random indices of the split from `rng`; else consecutive indices from it."""

    def __init__(self, kind: WorldKind, config, rules: Protocol, source: str, history_len: int,
                 rng: np.random.Generator, next_index: int | None, chunk: int):
        self.kind, self.config, self.rules, self.source = kind, config, rules, source
        self.history_len, self.rng, self.next_index, self.chunk = history_len, rng, next_index, chunk
        self.ready: Prepared | None = None
        self.cursor = 0

    def take(self, count: int) -> list[Prepared]:
        """The next `count` episodes, in order, as one or two prepared parts."""
        parts = []
        while count > 0:
            left = 0 if self.ready is None else len(self.ready.indices) - self.cursor
            if left == 0:
                self._refill(max(self.chunk, count))
                continue
            n = min(left, count)
            parts.append(self.ready.take(np.arange(self.cursor, self.cursor + n)))
            self.cursor += n
            count -= n
        return parts

    def _refill(self, size: int) -> None:
        if self.next_index is None:
            indices = draw_indices(self.rng, size)
        else:
            indices = self.next_index + np.arange(size)
            self.next_index += size
        self.ready = prepare(self.kind, self.config, self.rules, self.source, indices, self.history_len)
        self.cursor = 0


def draw_indices(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random episode indices of a split (the whole 40-bit index range)."""
    return rng.integers(0, seeding.MAX_INDEX + 1, size=count, dtype=np.int64)
