"""The evaluator against the original's own numbers (SPEC §7) and the statistics against scipy."""

import json

import numpy as np
import pytest
from scipy import stats as sps

from hrmlab.backends.local import SerialBackend
from hrmlab.evaluate.episodes import run_closed_loop
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.evaluate.result import EvaluationResult, ResultFormatError, RunResult, summarize
from hrmlab.evaluate.runner import EvalConfig, evaluate
from hrmlab.evaluate.stats import mcnemar_exact, wilson_interval
from hrmlab.forecast.physics import PHYSICS_FORECASTERS
from hrmlab.forecast.registry import parse_forecasters
from hrmlab.planning.spacetime_astar import PlannerConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

# (protocol, forecaster, time_index) → successes out of the original's 50 evaluation episodes
SEED_REFERENCE = [
    ("seed-v3", "oracle", "seed", 33), ("seed-v3", "oracle", "aligned", 50),
    ("seed-v3", "constant-velocity", "aligned", 47), ("seed-v3", "constant-velocity", "seed", 27),
    ("seed-v3", "ignore", "aligned", 22), ("seed-v3", "zero", "seed", 22),
    ("seed-v2", "ignore", "seed", 26), ("seed-v2", "oracle", "seed", 38), ("seed-v2", "oracle", "aligned", 50),
    ("seed-v4", "ignore", "seed", 19), ("seed-v4", "oracle", "seed", 28), ("seed-v4", "oracle", "aligned", 50),
]


@pytest.mark.parametrize("protocol,forecaster,time_index,expected", SEED_REFERENCE)
def test_reproduces_the_original_numbers(protocol, forecaster, time_index, expected):
    rec = run_closed_loop(get_protocol(protocol), BounceGridConfig(), PlannerConfig(time_index=time_index),
                          PHYSICS_FORECASTERS[forecaster](), np.arange(50), forecast_error=False)
    assert int((rec.outcome == 0).sum()) == expected


def test_paired_results_shape_and_chunking_invariance():
    specs = parse_forecasters("zero,oracle")
    world, planner = BounceGridConfig(), PlannerConfig()
    one = evaluate(EvalConfig(episodes=60, chunk_size=60), world, planner, specs, SerialBackend())
    many = evaluate(EvalConfig(episodes=60, chunk_size=17), world, planner, specs, SerialBackend())
    assert one.indices == many.indices == list(range(60))
    assert {n: r.per_episode for n, r in one.rows.items()} == {n: r.per_episode for n, r in many.rows.items()}
    r = one.rows["oracle"]
    assert r.episodes == 60 and sum(r.outcomes.values()) == 60 and set(r.outcomes) == {"success", "crash", "timeout"}
    assert r.ci95[0] <= r.success_rate <= r.ci95[1]
    assert r.path_length_vs_oracle == 1.0 and r.forecast_ade == 0.0
    assert one.rows["zero"].forecast_ade > 0
    (pair,) = one.pairwise
    assert (pair.a, pair.b) == ("zero", "oracle")


def test_evaluation_result_round_trips_through_json():
    specs = parse_forecasters("zero,oracle")
    result = evaluate(EvalConfig(episodes=12, chunk_size=5), BounceGridConfig(), PlannerConfig(), specs,
                      SerialBackend())
    result.seconds = 1.5
    doc = json.loads(json.dumps(result.to_json()))
    assert {"protocol", "planner", "episodes", "results", "pairwise", "per_episode", "per_episode_steps",
            "seconds"} <= set(doc)  # the grid's JSON keys, unchanged
    again = EvaluationResult.from_json(doc)
    assert again == result and again.to_json() == doc
    run = RunResult(preset="p", evaluations={"standard": result}, primary_protocol="standard",
                    training={"zero": {"seconds": 1.0}}, details={"stage_keys": {"eval": "k"}})
    back = RunResult.from_json(json.loads(json.dumps(run.to_json())))
    assert back == run and back.primary is back.evaluations["standard"]
    bare = RunResult.from_json(doc)  # `hrmlab evaluate --json`: a run of one protocol
    assert bare.primary_protocol == "standard" and bare.primary == result
    for bad in ([], {"results": {"x": {"episodes": 3}}, "protocol": "standard"}, {"evaluations": []}):
        with pytest.raises(ResultFormatError):
            RunResult.from_json(bad)


def test_one_summariser_counts_rates_intervals_and_pairs():
    result = summarize({"a": ["success", "crash", "success", "timeout"], "b": ["crash", "crash", "success", "success"]},
                       protocol="p", indices=[7, 8, 9, 10], vocabulary=("success", "crash", "timeout"),
                       steps={"a": [3, 9, 5, 40], "b": [2, 2, 7, 9]})
    a = result.rows["a"]
    assert (a.successes, a.episodes, a.success_rate) == (2, 4, 0.5)
    assert a.outcomes == {"success": 2, "crash": 1, "timeout": 1} and a.mean_steps_success == 4.0
    assert np.allclose(a.ci95, wilson_interval(2, 4))
    assert result.episodes.start == 7 and result.episodes.count == 4
    (pair,) = result.pairwise
    assert (pair.a, pair.b, pair.a_only, pair.b_only) == ("a", "b", 1, 1) and pair.only("b") == 1
    with pytest.raises(ValueError, match="not in"):
        summarize({"a": ["lost"]}, protocol="p", indices=[0], vocabulary=("success",))


def test_wilson_matches_scipy():
    for k, n in [(0, 10), (33, 50), (50, 50), (991, 1000)]:
        ci = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert np.allclose(wilson_interval(k, n), (ci.low, ci.high))


def test_mcnemar_exact_matches_binomial():
    a = np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 1], dtype=bool)
    b = np.array([0, 0, 0, 0, 1, 1, 0, 1, 1, 1], dtype=bool)
    res = mcnemar_exact(a, b)
    assert (res["a_only"], res["b_only"]) == (4, 1)
    assert np.isclose(res["p_value"], sps.binomtest(4, 5, 0.5).pvalue)
    assert mcnemar_exact(a, a)["p_value"] == 1.0


def test_the_closed_loop_keeps_at_least_the_window_its_forecaster_reads():
    """One history rule: observers are shown OBSERVED_HISTORY positions, a forecaster trained on a longer
    window gets its whole window (never a padded one), and the forecasts do not change for physics rules."""
    from hrmlab.forecast.physics import ConstantVelocityForecaster
    from hrmlab.worlds import OBSERVED_HISTORY

    class Recording(ConstantVelocityForecaster):
        def __init__(self, history):
            self.history, self.seen = history, set()

        def forecast(self, obs, horizon):
            self.seen.add(obs.history.shape[2])
            return super().forecast(obs, horizon)

    protocol, world, planner = get_protocol("standard"), BounceGridConfig(), PlannerConfig()
    runs = {}
    for history in (0, 10, 32):
        forecaster = Recording(history)
        runs[history] = run_closed_loop(protocol, world, planner, forecaster, np.arange(8), forecast_error=False)
        assert forecaster.seen == {max(OBSERVED_HISTORY, history)}
    for history in (10, 32):  # constant velocity reads the last two positions: the same run either way
        assert np.array_equal(runs[history].outcome, runs[0].outcome)
        assert np.array_equal(runs[history].steps, runs[0].steps)
