"""BounceGrid: physics, the seed-exact fixture, split episodes and their disjointness."""

import json

import numpy as np
import pytest

from hrmlab.worlds import bounce_grid, seeding
from hrmlab.worlds.bounce_grid import BounceGridConfig


# Velocities come from randn(2) / ||randn(2)|| * speed: sqrt and division go through libm/SIMD paths whose
# last bit differs between CPUs (AVX2 vs AVX-512), exactly as the original script's did. So floats are
# compared to a few ulp: 8 ulp relative on velocities (one sqrt, one divide, one multiply); positions add
# one velocity per step, so their error grows by at most one velocity error per step: over the fixture's
# <= 100 steps an absolute 1e-12 cells is ~1000x that bound and still 10 orders below a cell. What
# decides outcomes must match exactly: walls, initial cells, and the integer cell of every position.
VEL_RTOL = 8 * np.finfo(np.float64).eps
POS_ATOL = 1e-12


def test_seed_exact_episodes_match_the_original(fixture_path):
    data = json.loads(fixture_path("bounce_grid_seed_episodes.json").read_text())
    cfg = BounceGridConfig()
    for ep in data["episodes"]:
        state = bounce_grid.reset_seed_exact(cfg, [ep["seed"]])
        walls = sorted(map(list, zip(*np.nonzero(state.walls[0]))))
        assert walls == sorted(ep["walls"]), ep["seed"]
        assert np.array_equal(state.pos[0], [o["pos"] for o in ep["obstacles_initial"]])  # integer cells
        np.testing.assert_allclose(state.vel[0], [o["vel"] for o in ep["obstacles_initial"]], rtol=VEL_RTOL, atol=0)
        positions = np.array(ep["positions"])
        traj = bounce_grid.rollout(cfg, state, len(positions))[0].transpose(1, 0, 2)
        np.testing.assert_allclose(traj, positions, rtol=0, atol=POS_ATOL, err_msg=str(ep["seed"]))
        # the occupied cell of every obstacle at every step is exact (away from a cell edge by > POS_ATOL)
        clear = np.abs(positions - np.round(positions)) > POS_ATOL
        assert np.array_equal(np.floor(traj)[clear], np.floor(positions)[clear]), ep["seed"]


def test_seed_exact_uses_no_global_rng():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    bounce_grid.reset_seed_exact(BounceGridConfig(), [1, 2, 3])
    assert np.array_equal(np.random.get_state()[1], before)


def test_reflection_and_clipping():
    cfg = BounceGridConfig()
    state = bounce_grid.reset_seed_exact(cfg, [0])
    state.pos[0, 0] = [0.3, 19.5]
    state.vel[0, 0] = [-0.5, 0.7]
    bounce_grid.step(cfg, state)
    # row went below 0 → velocity flipped, clipped to 0; col went ≥ 20 → flipped, clipped to 19.99
    assert np.allclose(state.pos[0, 0], [0.0, 19.99])
    assert np.allclose(state.vel[0, 0], [0.5, -0.7])
    bounce_grid.step(cfg, state)
    assert np.allclose(state.pos[0, 0], [0.5, 19.29])


def test_speed_is_exactly_the_configured_speed():
    cfg = BounceGridConfig()
    for state in (bounce_grid.reset_seed_exact(cfg, range(20)), bounce_grid.reset_split(cfg, "train", range(200))):
        assert np.allclose(np.linalg.norm(state.vel, axis=-1), 0.7)
        assert not state.walls[:, 0, 0].any() and not state.walls[:, -1, -1].any()
        cells = state.pos.astype(int)
        assert not state.walls[np.arange(state.batch)[:, None], cells[..., 0], cells[..., 1]].any()


def test_split_episodes_do_not_depend_on_batching():
    cfg = BounceGridConfig()
    whole = bounce_grid.reset_split(cfg, "test", np.arange(100))
    part = bounce_grid.reset_split(cfg, "test", np.arange(40, 60))
    assert np.array_equal(whole.pos[40:60], part.pos)
    assert np.array_equal(whole.walls[40:60], part.walls)


def split_of(ids) -> np.ndarray:
    """Split code of each episode id: the high bits above seeding.INDEX_BITS."""
    return (np.asarray(ids, dtype=np.uint64) >> np.uint64(seeding.INDEX_BITS)).astype(np.int64)


def test_splits_are_disjoint_by_construction():
    n = 100_000
    ids = {s: seeding.episode_ids(s, np.arange(n)) for s in ("train", "val", "test")}
    assert len(np.unique(np.concatenate(list(ids.values())))) == 3 * n
    for code, s in enumerate(("train", "val", "test"), start=1):
        assert (split_of(ids[s]) == code).all()
    # legacy seeds of the seed protocols live in split 0: they can never equal a split episode
    assert (split_of(seeding.episode_ids("seed", np.arange(10_000))) == 0).all()
    # and the worlds themselves differ between splits
    cfg = BounceGridConfig()
    a = bounce_grid.reset_split(cfg, "train", np.arange(500))
    b = bounce_grid.reset_split(cfg, "test", np.arange(500))
    keys_a = {w.tobytes() + p.tobytes() for w, p in zip(a.walls, a.pos)}
    assert not any(w.tobytes() + p.tobytes() in keys_a for w, p in zip(b.walls, b.pos))


def test_index_out_of_range_is_rejected():
    from hrmlab.errors import UserError

    with pytest.raises(UserError):
        seeding.episode_ids("train", [-1])
    with pytest.raises(UserError):
        seeding.episode_ids("holdout", [0])


# ------------------------------------------------------------------ dynamics options (scenario suites)
def test_patrol_obstacles_walk_their_rectangle_at_constant_speed():
    cfg = BounceGridConfig(patrol=True, num_obstacles=4, patrol_min_side=2, patrol_max_side=5)
    state = bounce_grid.reset_split(cfg, "train", np.arange(20))
    corners = state.waypoints.copy()
    assert np.array_equal(corners[:, :, 0], state.pos)  # a loop starts at the obstacle's cell
    sides = np.abs(np.diff(np.concatenate([corners, corners[:, :, :1]], axis=2), axis=2)).sum(-1)
    assert ((sides >= 2) & (sides <= 5)).all()  # axis-aligned sides within the configured range
    traj = bounce_grid.rollout(cfg, state, 200)
    lo, hi = corners.min(axis=2), corners.max(axis=2)
    assert ((traj >= lo[:, :, None] - 1e-9) & (traj <= hi[:, :, None] + 1e-9)).all()  # stays on its loop
    steps = np.linalg.norm(np.diff(traj, axis=2), axis=-1)
    assert steps.max() <= 0.7 + 1e-9 and np.median(steps) == pytest.approx(0.7)
    # it goes round the loop: every corner is visited (snapped onto exactly) within 200 steps
    hits = np.linalg.norm(traj[:, :, :, None] - corners[:, :, None], axis=-1).min(axis=2)  # (B, N, 4)
    assert (hits < 1e-9).all()


def test_random_turning_keeps_speed_and_is_reproducible():
    cfg = BounceGridConfig(turn_prob=0.2)
    a = bounce_grid.rollout(cfg, bounce_grid.reset_split(cfg, "train", np.arange(30)), 40)
    b = bounce_grid.rollout(cfg, bounce_grid.reset_split(cfg, "train", np.arange(30)), 40)
    assert np.array_equal(a, b)
    straight = bounce_grid.rollout(BounceGridConfig(), bounce_grid.reset_split(BounceGridConfig(), "train", np.arange(30)), 40)
    assert not np.allclose(a, straight)
    steps = np.linalg.norm(np.diff(a, axis=2), axis=-1)
    assert steps.max() <= 0.7 + 1e-9


def test_mixed_speeds_more_obstacles_and_larger_grid():
    cfg = BounceGridConfig(speed=1.0, speed_min=0.4, num_obstacles=12, grid_size=32)
    state = bounce_grid.reset_split(cfg, "test", np.arange(50))
    speed = np.linalg.norm(state.vel, axis=-1)
    assert state.pos.shape == (50, 12, 2) and state.walls.shape == (50, 32, 32)
    assert speed.min() >= 0.4 and speed.max() <= 1.0 and speed.std() > 0.1
    assert (state.goal == 31).all()
    traj = bounce_grid.rollout(cfg, state, 100)
    assert traj.min() >= 0 and traj.max() < 32


def test_wall_bounce_reflects_off_wall_cells():
    cfg = BounceGridConfig(wall_bounce=True)
    state = bounce_grid.reset_split(cfg, "train", np.arange(1))
    state.walls[:] = False
    state.walls[0, 5, 8] = True
    state.pos[0, 0] = [5.0, 6.0]
    state.vel[0, 0] = [0.0, 0.7]
    bounce_grid.step(cfg, state)  # 6.7 rounds to cell 7: free
    bounce_grid.step(cfg, state)  # 7.4 rounds to cell 7: free
    bounce_grid.step(cfg, state)  # 8.1 → wall cell (5, 8): reflected, stays put
    assert state.vel[0, 0, 1] == pytest.approx(-0.7)
    assert state.pos[0, 0, 1] == pytest.approx(7.4)
    no_bounce = BounceGridConfig()
    other = bounce_grid.reset_split(no_bounce, "train", np.arange(1))
    other.walls[:] = False
    other.walls[0, 5, 8] = True
    other.pos[0, 0], other.vel[0, 0] = [5.0, 6.0], [0.0, 0.7]
    for _ in range(3):
        bounce_grid.step(no_bounce, other)
    assert other.pos[0, 0, 1] == pytest.approx(8.1)  # the seed's obstacles pass through walls
