"""Space-time A* on hand-made cases: corridor, waiting, fallback, and both time-index modes."""

import numpy as np

from hrmlab.planning.spacetime_astar import (STATUS_FALLBACK, STATUS_GOAL, STATUS_WAIT, PlannerConfig,
                                             blocked_cells, plan)

G = 20


def empty_walls():
    return np.zeros((1, G, G), dtype=bool)


def obstacle_at(cells_by_step, horizon=20):
    """Forecast (1, 1, horizon, 2): the obstacle's cell k+1 steps ahead; far away when not given."""
    f = np.full((1, 1, horizon, 2), 100.0)
    for k, cell in cells_by_step.items():
        f[0, 0, k] = cell
    return f


def run_plan(walls, agent, goal, forecast, **cfg):
    moves, status, _ = plan(walls, np.array([agent]), np.array([goal]), forecast, PlannerConfig(**cfg))
    return tuple(moves[0]), int(status[0])


def test_straight_path_when_free():
    move, status = run_plan(empty_walls(), (5, 5), (5, 9), np.zeros((1, 0, 20, 2)))
    assert status == STATUS_GOAL and move == (5, 6)


def test_blocked_corridor_goes_around():
    walls = empty_walls()
    walls[0, 4, :] = True
    walls[0, 4, 10] = False  # a single gap in a wall row
    move, status = run_plan(walls, (3, 10), (5, 10), np.zeros((1, 0, 20, 2)))
    assert status == STATUS_GOAL and move == (4, 10)
    walls[0, 4, 10] = True  # gap closed: goal unreachable → fallback toward the nearest reachable cell
    move, status = run_plan(walls, (3, 10), (5, 10), np.zeros((1, 0, 20, 2)))
    assert status == STATUS_FALLBACK


def test_waits_for_an_obstacle_to_pass():
    # corridor along row 0 (row 1 is wall); an obstacle sits on (0,1) for the first 3 steps, then leaves
    walls = empty_walls()
    walls[0, 1, :] = True
    forecast = obstacle_at({0: (0, 1), 1: (0, 1), 2: (0, 1)})
    move, status = run_plan(walls, (0, 0), (0, 5), forecast)
    assert status == STATUS_GOAL and move == (0, 0)  # wait
    free_move, _ = run_plan(walls, (0, 0), (0, 5), np.zeros((1, 0, 20, 2)))
    assert free_move == (0, 1)


def test_fallback_moves_toward_the_horizon_node_nearest_the_goal():
    move, status = run_plan(empty_walls(), (0, 0), (19, 19), np.zeros((1, 0, 20, 2)))
    assert status == STATUS_FALLBACK and move in {(0, 1), (1, 0)}


def test_no_move_possible_means_wait():
    walls = empty_walls()
    walls[0, 0, 1] = walls[0, 1, 0] = True
    # walled in: waiting in place until the horizon is the only plan
    move, status = run_plan(walls, (0, 0), (19, 19), np.zeros((1, 0, 20, 2)))
    assert status == STATUS_FALLBACK and move == (0, 0)
    # walled in and the own cell is about to be hit: no node at all → wait
    move, status = run_plan(walls, (0, 0), (19, 19), obstacle_at({0: (0, 0)}))
    assert status == STATUS_WAIT and move == (0, 0)


def test_time_index_modes():
    # the obstacle is on cell (0,1) exactly 1 step ahead (forecast index 0), elsewhere afterwards
    forecast = obstacle_at({0: (0, 1)})
    aligned = blocked_cells(forecast, G, 1.0, PlannerConfig(time_index="aligned").forecast_offset, 20)
    seed = blocked_cells(forecast, G, 1.0, PlannerConfig(time_index="seed").forecast_offset, 20)
    assert aligned[0, 1, 0, 1] and not aligned[0, 2, 0, 1]  # node t=1 sees the obstacle 1 step ahead
    assert not seed[0, 1, 0, 1]  # the seed's node t=1 looks 2 steps ahead, so it walks into it
    walls = empty_walls()
    assert run_plan(walls, (0, 0), (0, 3), forecast, time_index="aligned")[0] != (0, 1)
    assert run_plan(walls, (0, 0), (0, 3), forecast, time_index="seed")[0] == (0, 1)


def test_radius_is_strict():
    forecast = obstacle_at({0: (0.0, 2.0)})
    blocked = blocked_cells(forecast, G, 1.0, 0, 20)[0, 1]
    assert blocked[0, 2] and not blocked[0, 1] and not blocked[1, 2]  # distance exactly 1 is free


def test_plan_path_is_a_feasible_sequence_of_moves():
    from hrmlab.planning.spacetime_astar import plan_path

    walls = np.zeros((G, G), dtype=bool)
    walls[3, 0:6] = True  # detour through column 6: 18 moves, inside the horizon
    path, status = plan_path(walls, (0, 0), (6, 0), np.zeros((0, 20, 2)), PlannerConfig())
    cells = path[path[:, 0] >= 0]
    assert status == STATUS_GOAL and tuple(cells[0]) == (0, 0) and tuple(cells[-1]) == (6, 0)
    assert (np.abs(np.diff(cells, axis=0)).sum(axis=1) <= 1).all()
    assert not walls[cells[:, 0], cells[:, 1]].any()
