"""The clockwork world (suite-clockwork, issue 16): obstacles turn 90° every k of their own steps."""

import dataclasses

import numpy as np

from hrmlab.evaluate.protocols import get_protocol
from hrmlab.presets import load_preset
from hrmlab.worlds import bounce_grid
from hrmlab.worlds.bounce_grid import BounceGridConfig

CLOCKWORK = BounceGridConfig(num_obstacles=10, turn_period_min=4, turn_period_max=8)


def trajectories(cfg, state, steps):
    out = np.empty((state.batch, state.pos.shape[1], steps + 1, 2))
    out[:, :, 0] = state.pos
    for t in range(steps):
        bounce_grid.step(cfg, state)
        out[:, :, t + 1] = state.pos
    return out


def test_obstacles_turn_ninety_degrees_every_k_steps_in_their_own_direction():
    cfg = dataclasses.replace(CLOCKWORK, grid_size=1000)  # a huge grid: almost no border bounces to confound
    state = bounce_grid.reset_split(cfg, "train", np.arange(40))
    period, sign, first = state.turn_period.copy(), state.turn_sign.copy(), state.until_turn.copy()
    pos = trajectories(cfg, state, 30)
    inside = ((pos > 0) & (pos < cfg.clip_hi)).all(axis=(2, 3))  # a bounce clips to 0 or clip_hi: none here
    assert inside.mean() > 0.9
    steps = np.diff(pos, axis=2)  # (B, N, 30, 2)
    checked = 0
    for b, n in zip(*np.nonzero(inside)):
        v = steps[b, n]
        # speed is constant (reflection-free), so every change of heading is a clockwork turn
        np.testing.assert_allclose(np.linalg.norm(v, axis=-1), cfg.speed, rtol=1e-9)  # float rounding only
        dot = (v[1:] * v[:-1]).sum(-1)
        cross = v[:-1, 0] * v[1:, 1] - v[:-1, 1] * v[1:, 0]
        turned = np.nonzero(np.abs(dot) < 1e-9)[0] + 1  # step indices whose move follows a 90° turn
        # the first turn precedes move first − 1 (a turn before move 0 has no earlier heading to compare)
        assert list(turned) == [i for i in range(first[b, n] - 1, 30, period[b, n]) if i >= 1]
        straight = np.setdiff1d(np.arange(1, 30), turned)
        np.testing.assert_allclose(dot[straight - 1], cfg.speed ** 2, rtol=1e-9)
        # sign +1 rotates (r, c) → (−c, r) (east → north on screen: a left turn): the cross product of
        # old and new heading is +speed² for it, −speed² for a right turn. Positions up to 1000 cells lose
        # ~1e-13 in differences, hence rtol 1e-9
        np.testing.assert_allclose(cross[turned - 1], sign[b, n] * cfg.speed ** 2, rtol=1e-9)
        checked += 1
    assert checked > 300


def test_periods_directions_and_phases_cover_their_ranges_and_are_reproducible():
    state = bounce_grid.reset_split(CLOCKWORK, "test", np.arange(200))
    assert set(np.unique(state.turn_period)) == {4, 5, 6, 7, 8}
    assert set(np.unique(state.turn_sign)) == {-1.0, 1.0}
    assert (state.until_turn >= 1).all() and (state.until_turn <= state.turn_period).all()
    assert len(np.unique(state.until_turn)) == 8
    # an episode's content does not depend on its batch, and copies carry the clockwork state
    alone = bounce_grid.reset_split(CLOCKWORK, "test", np.array([7, 3]))
    np.testing.assert_array_equal(alone.turn_period, state.turn_period[[7, 3]])
    truth = trajectories(CLOCKWORK, state.subset([7, 3]), 25)[:, :, 1:]
    np.testing.assert_array_equal(bounce_grid.rollout(CLOCKWORK, alone, 25), truth)
    np.testing.assert_array_equal(trajectories(CLOCKWORK, alone, 25)[:, :, 1:], truth)


def test_other_worlds_are_unchanged_by_the_option():
    plain = bounce_grid.reset_split(BounceGridConfig(), "val", np.arange(5))
    assert plain.turn_period is None and plain.until_turn is None


def test_suite_protocol_and_preset_use_the_clockwork_world():
    protocol = get_protocol("suite-clockwork")
    assert protocol.world == CLOCKWORK and protocol.seed_offset is None and not protocol.goal_first
    cfg = load_preset("suite-clockwork")
    assert cfg.world == CLOCKWORK and cfg.eval.protocol == "suite-clockwork"


def test_counting_matters_the_oracle_clearly_beats_bounce_aware():
    from hrmlab.backends.local import make_backend
    from hrmlab.evaluate.runner import EvalConfig, evaluate
    from hrmlab.forecast.registry import parse_forecasters
    from hrmlab.planning.spacetime_astar import PlannerConfig

    # 60 fixed test episodes (the documented figures use 1,000: oracle 98.5 %, bounce-aware 72.1 %); the
    # margin asserted here is far below the measured 26 points, so float details of a CPU cannot flip it
    results = evaluate(EvalConfig(protocol="suite-clockwork", episodes=60, chunk_size=60, forecast_error=False),
                       CLOCKWORK, PlannerConfig(), parse_forecasters("oracle,bounce-aware"), make_backend(1)).rows
    assert results["oracle"].success_rate - results["bounce-aware"].success_rate >= 0.10
