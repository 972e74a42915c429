"""One result for every family: smoke runs of the grid, diffusion and space-time families, driven through
`hrmlab.cli.main`, all come out as `RunResult`s of `EvaluationResult`s summarised by the one `summarize`,
and read back from results.json as the same type for reports and `hrmlab results`."""

import json

import pytest

from hrmlab.cli import main
from hrmlab.diffusion import evaluate as diffusion_evaluate
from hrmlab.evaluate import result as result_mod
from hrmlab.evaluate import runner
from hrmlab.evaluate.result import EvaluationResult, RunResult, summarize
from hrmlab.report import compare_runs, load_run

RUNS = {"quick": ["physics_forecasters=[oracle,constant-velocity]"], "diffusion-cpu": [],
        "diffusion-st-cpu": ["eval.forecasters=[oracle]"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    out = {}
    for preset, sets in RUNS.items():
        args = ["run", preset, "--smoke", "--out", str(root / preset), "--cache", str(root / "cache"),
                "--workers", "1", "--no-progress"]
        assert main(args + [a for s in sets for a in ("--set", s)]) == 0
        out[preset] = root / preset
    return out


def test_every_family_writes_the_same_result_type(runs):
    assert runner.summarize is diffusion_evaluate.summarize is result_mod.summarize  # one summariser
    families = set()
    for preset, run_dir in runs.items():
        run = load_run(run_dir).result
        assert isinstance(run, RunResult) and run.preset == preset and run.smoke
        families.add(run.family)
        assert run.primary_protocol in run.evaluations
        for evaluation in run.evaluations.values():
            assert isinstance(evaluation, EvaluationResult) and evaluation.rows
            outcomes = {name: row.per_episode for name, row in evaluation.rows.items()}
            vocabulary = sorted({o for row in evaluation.rows.values() for o in row.outcomes})
            again = summarize(outcomes, protocol=evaluation.protocol, indices=evaluation.indices,
                              vocabulary=vocabulary)
            for name, row in evaluation.rows.items():  # the stored numbers are the summariser's
                mine = again.rows[name]
                assert (row.successes, row.episodes, row.success_rate, row.ci95) == \
                    (mine.successes, mine.episodes, mine.success_rate, mine.ci95)
                assert row.outcomes == mine.outcomes and sum(row.outcomes.values()) == row.episodes
            assert evaluation.pairwise == again.pairwise
    assert families == {"grid", "diffusion", "diffusion-st"}


def test_results_json_round_trips_and_runs_compare_side_by_side(runs):
    for run_dir in runs.values():
        data = json.loads((run_dir / "results.json").read_text())
        assert RunResult.from_json(data).to_json() == data
    text = compare_runs([runs["quick"], runs["diffusion-cpu"]])
    assert "## Protocol standard" in text and "**oracle**" in text and "**line+refine**" in text


def test_an_old_results_file_is_one_clear_line(runs, tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"evaluations": {"standard": {"protocol": "standard",
                                                                                     "results": {"x": {}}}}}))
    assert main(["results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a results file of this version" in err[0]
