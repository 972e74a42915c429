"""BlobWorld: the seed-exact fixture, physics, occupancy grid, split episodes and their disjointness."""

import json

import numpy as np

from hrmlab.worlds import blob_world, seeding
from hrmlab.worlds.blob_world import BlobWorldConfig


def test_seed_exact_episodes_match_the_original(fixture_path):
    data = json.loads(fixture_path("blob_world_seed_episodes.json").read_text())
    cfg = BlobWorldConfig()
    assert data["map_size"] == cfg.map_size
    seeds = [ep["seed"] for ep in data["episodes"]]
    state = blob_world.reset_seed_exact(cfg, seeds)
    for e, ep in enumerate(data["episodes"]):
        cells = sorted(map(list, zip(*np.nonzero(state.static[e]))))
        assert cells == sorted(ep["static_cells"]), ep["seed"]
        assert np.array_equal(state.pos[e], [o["pos"] for o in ep["obstacles_initial"]])
        assert np.array_equal(state.vel[e], [o["vel"] for o in ep["obstacles_initial"]])
        assert state.start[e].tolist() == ep["start"] and state.goal[e].tolist() == ep["goal"]
        positions = np.array(ep["positions"])  # positions[k] = after k + 1 steps
        traj = blob_world.trajectory(cfg, state, len(positions))[e, 1:]
        # bit for bit, on any CPU: unlike BounceGrid's velocities (sqrt/divide through libm), every float here
        # comes from rand() * 64 or (rand() - 0.5) * 1.5 and then +, -, comparisons and clip: IEEE-754 basic
        # operations, correctly rounded everywhere, so exact equality is the right test.
        assert np.array_equal(traj, positions), ep["seed"]


def test_seed_exact_uses_no_global_rng():
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    blob_world.reset_seed_exact(BlobWorldConfig(), [1000, 1001])
    assert np.array_equal(np.random.get_state()[1], before)


def test_bounce_flips_and_clips_like_the_world_or_only_flips_like_the_seed_planner():
    cfg = BlobWorldConfig()
    for clip, expected in ((True, [0.0, 63.99]), (False, [-0.2, 64.3])):
        state = blob_world.reset_seed_exact(cfg, [1000])
        state.pos[0, 0] = [0.3, 63.6]
        state.vel[0, 0] = [-0.5, 0.7]
        blob_world.step(cfg, state, clip=clip)
        assert np.allclose(state.pos[0, 0], expected)
        assert np.allclose(state.vel[0, 0], [0.5, -0.7])


def test_occupancy_grid_holds_discs_and_obstacles():
    cfg = BlobWorldConfig()
    state = blob_world.reset_seed_exact(cfg, [1000, 1002])
    grid = blob_world.occupancy_grid(cfg, state)
    assert (grid >= state.static).all() and grid.sum() > state.static.sum()
    cells = state.pos.astype(int)
    assert grid[np.arange(2)[:, None], cells[..., 0], cells[..., 1]].all()
    assert len(blob_world.disc_offsets(2)) == 13  # the seed's radius-2 stencil


def test_split_episodes_are_valid_and_independent_of_batching():
    cfg = BlobWorldConfig()
    whole = blob_world.reset_split(cfg, "train", np.arange(300))
    part = blob_world.reset_split(cfg, "train", np.arange(100, 140))
    for a, b in ((whole.static[100:140], part.static), (whole.pos[100:140], part.pos),
                 (whole.start[100:140], part.start), (whole.goal[100:140], part.goal)):
        assert np.array_equal(a, b)
    rows = np.arange(whole.batch)
    assert not whole.static[rows, whole.start[:, 0], whole.start[:, 1]].any()
    assert not whole.static[rows, whole.goal[:, 0], whole.goal[:, 1]].any()
    assert (np.abs(whole.vel) < cfg.max_speed).all() and (whole.pos >= 0).all() and (whole.pos < 64).all()
    filled = whole.static.mean()
    assert 0.03 < filled < 0.2  # ten discs of radius 2–5 cover ≈ 10 % of the map
    seeded = blob_world.reset_seed_exact(cfg, range(1000, 1050)).static.mean()
    assert abs(filled - seeded) < 0.03


def test_splits_are_disjoint_by_construction():
    n = 5000
    ids = {s: set(seeding.episode_ids(s, np.arange(n)).tolist()) for s in ("seed", "train", "val", "test")}
    for a in ids:
        for b in ids:
            if a < b:
                assert not ids[a] & ids[b], (a, b)
    cfg = BlobWorldConfig()
    train = blob_world.reset_split(cfg, "train", np.arange(200))
    test = blob_world.reset_split(cfg, "test", np.arange(200))
    seeded = blob_world.reset_seed_exact(cfg, range(1000, 1050))
    train_maps = {m.tobytes() for m in train.static}
    assert not train_maps & {m.tobytes() for m in test.static}
    assert not train_maps & {m.tobytes() for m in seeded.static}
