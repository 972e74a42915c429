"""Policies: anything that picks the agent's moves, run on hrmlab's episodes or in your own loop.

A policy is a callable from a *batch* of observations to a batch of actions:

    actions = policy(obs)          # obs: dict of arrays with a leading batch axis B; actions: (B,) ints

The observation is the one the Gymnasium envs (`hrmlab.envs`) give, with a batch axis in front:

    "agent"     (B, 2) int64       the agent's cell (row, col)
    "goal"      (B, 2) int64       the goal cell
    "walls"     (B, G, G) int8     1 = wall (BlobWorld: a static disc cell)
    "obstacles" (B, N, H, 2) f64   the obstacles' last H positions (cells, oldest first, last = now):
                                   the history the forecasters see

and an action is an index into the world's moves: BounceGrid `MOVES` (up, down, left, right, wait, the
planner's moves), BlobWorld the king moves + wait (`hrmlab.envs.core.KING_MOVES`). A move off the grid
or into a wall leaves the agent in place. Two optional attributes change how a policy is called:

* `batched = False`: called once per episode with an unbatched observation (no B axis), returns an int.
* `privileged = True`: called as `policy(obs, world=...)`, where `world` is the forecasters'
  `hrmlab.forecast.base.Observation` of the same episodes (history, the true `WorldState`, the world
  config). Only oracles need the true state; the envs give the same object: `env.unwrapped.true_world()`.

`hrmlab evaluate --policy NAME=module:factory` calls `factory()` (no arguments) in each worker and runs
the policy it returns through the evaluator's own closed loop (`evaluate/episodes.py`). `act` is the
one-liner for your own Gymnasium loop. This module does not import gymnasium.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass

import numpy as np

from hrmlab.errors import RaisedError, UserError
from hrmlab.forecast.base import Forecaster, Observation
from hrmlab.forecast.registry import ForecasterSpec, build_forecaster, parse_forecasters
from hrmlab.planning.spacetime_astar import MOVES, PlannerConfig, plan

OBSERVATION_KEYS = ("agent", "goal", "walls", "obstacles")


def observation(agent: np.ndarray, goal: np.ndarray, walls: np.ndarray, history: np.ndarray) -> dict:
    """The batched observation dict (fresh arrays, never views of the simulator's)."""
    return {"agent": np.array(agent, dtype=np.int64), "goal": np.array(goal, dtype=np.int64),
            "walls": np.array(walls, dtype=np.int8), "obstacles": np.array(history, dtype=np.float64)}


def policy_raised(what: str, exc: BaseException, where: str = "") -> RaisedError:
    """The one line for outside code that raised: `WHAT raised ExcType: message (where)`; its traceback goes
    along as the error's detail (logged with `hrmlab -v`)."""
    message = " ".join(str(exc).split())
    return RaisedError(f"{what} raised {type(exc).__name__}{': ' + message if message else ''}"
                       f"{f' ({where})' if where else ''}", "".join(traceback.format_exception(exc)))


def call_policy(policy, obs: dict, world: Observation | None, name: str = "policy",
                n_actions: int | None = len(MOVES), episodes=None, step: int | None = None) -> np.ndarray:
    """(B,) int64 actions from `policy` on a batched observation, honouring `batched` / `privileged`;
    actions of the wrong shape, or outside [0, n_actions) when given, are a UserError.

    `episodes` (B,) and `step`, given by the evaluator, say where the call is: an exception the policy raises
    then becomes one line naming the policy, the exception and the episode and step. Without them (your own
    loop, `act`) the policy's exception reaches the caller unchanged."""
    privileged = getattr(policy, "privileged", False)
    batch = len(obs["agent"])

    def run(call, rows):
        if episodes is None:
            return call()
        try:
            return call()
        except UserError:
            raise
        except Exception as exc:
            ids = [int(episodes[r]) for r in rows]
            where = (f"episode {ids[0]}" if len(ids) == 1 else f"a batch of {len(ids)} episodes, {ids[0]}…{ids[-1]}")
            raise policy_raised(f"policy {name!r}", exc, f"{where}, step {step}") from exc

    if getattr(policy, "batched", True):
        actions = run(lambda: policy(obs, world=world) if privileged else policy(obs), range(batch))
    else:
        actions = []
        for b in range(batch):
            one = {k: v[b] for k, v in obs.items()}
            if privileged:
                one_world = Observation(world.history[b:b + 1], world.state.subset([b]), world.world)
                actions.append(run(lambda: policy(one, world=one_world), [b]))
            else:
                actions.append(run(lambda: policy(one), [b]))
    actions = np.asarray(actions)
    if actions.shape != (batch,) or not np.issubdtype(actions.dtype, np.integer):
        raise UserError(f"{name} returned actions of shape {actions.shape} and dtype {actions.dtype}; "
                        f"expected ({batch},) integers")
    if n_actions is not None and batch and (actions.min() < 0 or actions.max() >= n_actions):
        raise UserError(f"{name} returned an action outside 0..{n_actions - 1}")
    return actions.astype(np.int64)


def act(policy, obs: dict, env=None):
    """The action(s) for a Gymnasium env's observation: an int for a single env's observation, (B,)
    for a vector env's. A privileged policy also gets `env.unwrapped.true_world()`."""
    single = np.ndim(obs["agent"]) == 1
    batch = {k: (np.asarray(v)[None] if single else np.asarray(v)) for k, v in obs.items()}
    world = None
    if getattr(policy, "privileged", False):
        if env is None:
            raise ValueError("this policy is privileged: pass the env, act(policy, obs, env)")
        world = env.unwrapped.true_world()
    actions = call_policy(policy, batch, world, type(policy).__name__, n_actions=None)  # the env checks the range
    return int(actions[0]) if single else actions


def actions_from_moves(agent: np.ndarray, cells: np.ndarray, moves: np.ndarray = MOVES) -> np.ndarray:
    """Indices into `moves` that take `agent` (B, 2) to the adjacent `cells` (B, 2)."""
    delta = np.asarray(cells) - np.asarray(agent)
    match = np.all(delta[:, None, :] == moves[None, :, :], axis=-1)
    if not match.any(axis=1).all():
        raise ValueError("a cell is not one move away from the agent")
    return match.argmax(axis=1).astype(np.int64)


# ------------------------------------------------------------------------------------------- policies
class RandomPolicy:
    """Uniformly random moves (a floor for any method). Batched; its own seeded generator."""

    def __init__(self, seed: int = 0, n_actions: int = len(MOVES)):
        self.rng = np.random.default_rng(seed)
        self.n_actions = n_actions

    def __call__(self, obs: dict) -> np.ndarray:
        return self.rng.integers(0, self.n_actions, size=len(obs["agent"]))


def random_policy(seed: int = 0, n_actions: int = len(MOVES)) -> RandomPolicy:
    """Factory for `--policy NAME=hrmlab.policies:random_policy`: random BounceGrid moves."""
    return RandomPolicy(seed, n_actions)


class AStarPolicy:
    """hrmlab's built-in planner as a policy: `forecaster` predicts the obstacles from the history and
    space-time A* (BounceGrid's moves) picks the next cell, exactly as in `hrmlab evaluate`.

    Privileged: it reads the world config from `world` (bounce-aware needs the grid's clip), and the
    true state only with the `oracle` forecaster."""

    privileged = True

    def __init__(self, forecaster: str | ForecasterSpec | Forecaster = "constant-velocity",
                 planner: PlannerConfig | None = None, device: str = "cpu"):
        if isinstance(forecaster, str):
            forecaster = parse_forecasters(forecaster)[0]
        if isinstance(forecaster, ForecasterSpec):
            forecaster = build_forecaster(forecaster, device=device)
        self.forecaster = forecaster
        self.planner = planner or PlannerConfig()

    def __call__(self, obs: dict, world: Observation) -> np.ndarray:
        view = Observation(np.asarray(obs["obstacles"], dtype=np.float64), world.state, world.world)
        forecast = self.forecaster.forecast(view, self.planner.horizon)
        cells, _, _ = plan(np.asarray(obs["walls"], dtype=bool), obs["agent"], obs["goal"], forecast, self.planner)
        return actions_from_moves(obs["agent"], cells)


def astar_oracle() -> AStarPolicy:
    """Factory: A* + oracle forecaster (`--policy NAME=hrmlab.policies:astar_oracle`)."""
    return AStarPolicy("oracle")


def astar_constant_velocity() -> AStarPolicy:
    """Factory: A* + constant-velocity forecaster."""
    return AStarPolicy("constant-velocity")


# -------------------------------------------------------------------------- --policy NAME=module:factory
@dataclass(frozen=True)
class PolicySpec:
    """A policy the evaluator builds inside each worker (picklable, like `ForecasterSpec`)."""

    name: str
    """Display name (unique among the evaluation's forecasters and policies)."""
    target: str
    """"module:factory": `factory()` returns the policy."""


def _resolve(target: str):
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UserError(f"policy {target!r} is not of the form module:factory")
    if os.getcwd() not in sys.path:  # the `hrmlab` script does not put the working directory on the path
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import module {module_name!r} for policy {target!r}: {exc}") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UserError(f"module {module_name!r} has no attribute {attr!r} (policy {target!r})")
    if not callable(factory):
        raise UserError(f"policy factory {target!r} is not callable")
    return factory


def parse_policies(items: list[str] | None) -> list[PolicySpec]:
    """['rnd=hrmlab.policies:random_policy', ...] → specs, each factory resolved (not called) so a bad
    spec fails before any work."""
    specs = []
    for item in items or []:
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise UserError(f"--policy {item!r}: expected NAME=module:factory, e.g. rnd=hrmlab.policies:random_policy")
        _resolve(target.strip())
        specs.append(PolicySpec(name.strip(), target.strip()))
    return specs


def build_policy(spec: PolicySpec):
    """Call the spec's factory; the result must be callable. A factory that raises is one line naming the
    policy and the exception (the traceback is logged with `hrmlab -v`)."""
    factory = _resolve(spec.target)
    try:
        policy = factory()
    except UserError:
        raise
    except Exception as exc:
        raise policy_raised(f"policy {spec.name!r} factory {spec.target!r}", exc) from exc
    if not callable(policy):
        raise UserError(f"policy factory {spec.target!r} returned {type(policy).__name__}, which is not callable")
    return policy
