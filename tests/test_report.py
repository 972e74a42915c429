"""Reports from a real small run: files, charts, animations (frame counts, frames differ), replay.

The run directory is built by actually evaluating physics forecasters on `standard` and `seed-v3`
(a 12-cell world, so episodes are short and rendering takes seconds), the way the pipeline does.
"""

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest

from hrmlab.backends.local import SerialBackend
from hrmlab.config import save_yaml
from hrmlab.errors import UserError
from hrmlab.evaluate.episodes import run_closed_loop
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.evaluate.result import RunResult, summarize
from hrmlab.evaluate.runner import EvalConfig, evaluate
from hrmlab.forecast.physics import PHYSICS_FORECASTERS
from hrmlab.forecast.registry import parse_forecasters
from hrmlab.planning.spacetime_astar import PlannerConfig
from hrmlab.report import (compare_runs, load_run, pick_disagreements, render_diffusion, render_episode,
                           replay_episode, write_report)
from hrmlab.report import video
from hrmlab.evaluate.runner import EvaluateSettings
from hrmlab.worlds.bounce_grid import BounceGridConfig

FORECASTERS = "zero,constant-velocity,oracle"
EPISODES = 10


def _settings() -> EvaluateSettings:
    return EvaluateSettings(world=BounceGridConfig(grid_size=12, num_obstacles=5, wall_draws=12),
                            planner=PlannerConfig(), eval=EvalConfig(episodes=EPISODES, chunk_size=EPISODES))


def _make_run(run_dir):
    settings = _settings()
    specs = parse_forecasters(FORECASTERS)
    evaluations = {}
    for protocol, time_index in (("standard", "aligned"), ("seed-v3", "seed")):  # as the pipeline runs them
        cfg = EvalConfig(protocol=protocol, episodes=EPISODES, chunk_size=EPISODES)
        evaluations[protocol] = evaluate(cfg, settings.world, PlannerConfig(time_index=time_index), specs,
                                         SerialBackend())
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(settings, run_dir / "config.yaml")
    metrics = run_dir / "train" / "hrm" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    with open(metrics, "w") as fh:
        for step in range(1, 31):
            fh.write(json.dumps({"step": step, "epoch": (step - 1) // 10, "loss": 2.0 / step, "lr": 1e-3,
                                 "samples_per_s": 1000.0}) + "\n")
            if step % 10 == 0:
                fh.write(json.dumps({"epoch": (step - 1) // 10, "val_loss": 2.5 / step}) + "\n")
        fh.write('{"step": 31, "loss"')  # a run killed mid-write leaves a torn last line
    forecast_metrics = {"model": {"one_step_mse": 0.01, "ade": 0.5, "fde": 1.2, "samples": 100},
                        "zero": {"one_step_mse": 0.5, "ade": 6.0, "fde": 10.0, "samples": 100}}
    results = RunResult(preset="tiny", description="physics forecasters on a 12-cell world",
                        primary_protocol="standard", evaluations=evaluations,
                        forecasters={s.name: {"checkpoint": None} for s in specs},
                        training={"hrm": {"parameters": 1234, "checkpoint": "/somewhere/best.pt", "key": "abc123",
                                          "seconds": 12.5, "forecast_metrics": forecast_metrics}})
    (run_dir / "results.json").write_text(json.dumps(results.to_json()))
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="module")
def report(run_dir):
    return write_report(run_dir)


def _gif_frames(path) -> np.ndarray:
    return iio.imread(path, index=None)


def test_report_writes_markdown_html_charts_and_animations(run_dir, report):
    md, html = report[0], report[1]
    assert md == run_dir / "report.md" and html == run_dir / "report.html"
    assert all(p.exists() and p.stat().st_size > 0 for p in report)
    text = md.read_text()
    for needle in ("## Results: protocol standard", "## Results: protocol seed-v3", "95% CI", "McNemar",
                   "## Training", "## Episode animations", "Forecast quality of hrm"):
        assert needle in text
    assert "/somewhere/best.pt" not in text and "abc123" not in text  # paths and cache keys are not results
    pngs = sorted((run_dir / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"success_rate-standard.png", "outcomes-standard.png", "success_rate-seed-v3.png",
            "forecast_error-standard.png", "planning_time-standard.png", "training_loss.png"} <= names
    for png in pngs:
        image = iio.imread(png)
        assert image.shape[0] >= 300 and image.shape[1] >= 400, png.name
        assert image.std() > 10, f"{png.name} looks blank"
    gifs = sorted((run_dir / "animations").glob("*.gif"))
    assert len(gifs) >= 2 and set(gifs) <= set(report)


def test_html_is_self_contained(run_dir, report):
    html = (run_dir / "report.html").read_text()
    pngs = list((run_dir / "plots").glob("*.png"))
    assert html.count("data:image/png;base64,") == len(pngs)
    assert html.count("data:image/gif;base64,") == len(list((run_dir / "animations").glob("*.gif")))
    assert 'src="plots/' not in html and 'src="animations/' not in html
    assert "<table>" in html and "<th" in html


def test_animation_frames_follow_the_episode(run_dir, report):
    """One frame per agent position (moves + 1), and every frame differs from the one before."""
    standard = load_run(run_dir).evaluations["standard"]
    picks = {p.episode: p for p in pick_disagreements(standard, k=2)}
    for gif in sorted((run_dir / "animations").glob("standard-episode-*.gif")):
        episode = int(gif.stem.rsplit("-", 1)[1])
        pick = picks[episode]
        assert pick.succeeded and pick.crashed
        s = _settings()
        replay = replay_episode("standard", s.world, s.planner, parse_forecasters(",".join(pick.forecasters)), episode)
        frames = _gif_frames(gif)
        assert len(frames) == replay.length + 1
        assert frames.shape[1] >= 300 and frames.shape[2] >= 250 * len(pick.forecasters)
        for a, b in zip(frames[:-1], frames[1:]):
            assert np.abs(a.astype(int) - b.astype(int)).sum() > 0


@pytest.mark.parametrize("protocol", ["standard", "seed-v3"])
def test_replay_gives_the_evaluators_outcomes(run_dir, protocol):
    run = load_run(run_dir)
    res = run.evaluations[protocol]
    specs = parse_forecasters(FORECASTERS)
    planner = run.planner(protocol)
    assert planner.time_index == res.planner["time_index"]  # seed-v3 ran with the seed's time index
    steps = {s.name: run_closed_loop(get_protocol(protocol), run.world(), planner, PHYSICS_FORECASTERS[s.name](),
                                     np.array(res.indices), forecast_error=False).steps
             for s in specs}
    for j, episode in enumerate(res.indices):
        replay = replay_episode(protocol, run.world(), planner, specs, episode)
        for s in specs:
            track = replay.tracks[s.name]
            assert track.outcome == res.rows[s.name].per_episode[j], (protocol, episode, s.name)
            assert track.steps == steps[s.name][j]
            assert len(track.agent) == track.steps + 1 and len(track.plans) == track.steps
            if track.steps:  # the drawn plan starts at the agent and its first move is the move made
                assert np.array_equal(track.plans[0][0], track.agent[0])


def test_render_episode_from_run_dir_and_from_settings(run_dir, tmp_path):
    run = load_run(run_dir)
    res = run.evaluations["seed-v3"]
    episode = res.indices[0]
    out = render_episode(run_dir, episode, "zero,oracle", tmp_path / "ep.gif", protocol="seed-v3")
    replay = replay_episode("seed-v3", run.world(), run.planner("seed-v3"), parse_forecasters("zero,oracle"), episode)
    assert len(_gif_frames(out)) == replay.length + 1
    settings = _settings()
    settings.planner.time_index = "seed"
    out = render_episode(settings, episode, ["oracle"], tmp_path / "settings.gif", protocol="seed-v3")
    assert len(_gif_frames(out)) == replay.tracks["oracle"].steps + 1
    with pytest.raises(UserError, match="unknown forecaster"):
        render_episode(run_dir, 0, "nonsense", tmp_path / "x.gif")


def test_render_default_picks_the_worst_disagreement(run_dir, tmp_path):
    out = render_episode(run_dir, None, None, tmp_path / "auto.gif")
    assert out.exists() and len(_gif_frames(out)) > 1


def test_mp4_without_ffmpeg_names_the_fix(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(video, "mp4_available", lambda: False)
    with pytest.raises(UserError, match=r"imageio-ffmpeg.*\.gif"):
        render_episode(run_dir, 0, "oracle", tmp_path / "ep.mp4")
    with pytest.raises(UserError, match=r"\.gif or \.mp4"):
        render_episode(run_dir, 0, "oracle", tmp_path / "ep.avi")


def test_pick_disagreements_ranks_success_against_crash():
    results = summarize({"hrm": ["success", "success", "timeout", "success"],
                         "lstm": ["success", "crash", "success", "crash"],
                         "zero": ["success", "crash", "timeout", "success"]},
                        protocol="standard", indices=[10, 11, 12, 13], vocabulary=("success", "crash", "timeout"))
    picks = pick_disagreements(results, k=4)
    # 11 and 13: two (success, crash) pairs each, ties by index; 12: success vs timeout; 10: all agree
    assert [p.episode for p in picks] == [11, 13, 12, 10]
    assert picks[0].succeeded == ["hrm"] and picks[0].crashed == ["lstm", "zero"]
    assert picks[1].succeeded == ["hrm", "zero"] and picks[1].crashed == ["lstm"]
    assert picks[0].forecasters == ["hrm", "lstm", "zero"]
    assert picks[2].timed_out == ["hrm", "zero"]  # success vs timeout only after all success vs crash
    assert pick_disagreements(results, k=1, max_forecasters=2)[0].forecasters == ["hrm", "lstm"]


def _diffusion_record(steps=12):
    static = np.zeros((16, 16), dtype=bool)
    static[6:9, 6:9] = True
    t = np.arange(steps)[:, None]
    obstacles = np.stack([np.concatenate([t * 0.5 + 2, np.full_like(t, 12.0)], 1),
                          np.concatenate([np.full_like(t, 12.0), 14 - t * 0.7], 1)], axis=1).astype(float)
    best = np.linspace([1.0, 1.0], [14.0, 14.0], steps)
    samples = best[None] + np.random.default_rng(0).normal(0, 0.5, (4, steps, 2))
    return {"static": static, "obstacles": obstacles, "samples": samples, "best": best,
            "oracle": np.linspace([1.0, 1.0], [14.0, 14.0], steps + 3), "start": np.array([1, 1]),
            "goal": np.array([14, 14]), "outcome": "success"}


def test_render_diffusion_traces_the_path_while_obstacles_move(tmp_path):
    record = _diffusion_record()
    out = render_diffusion(record, tmp_path / "diffusion.gif")
    frames = _gif_frames(out)
    assert len(frames) == len(record["oracle"])  # the longer of the best and the oracle path
    assert all(np.any(a != b) for a, b in zip(frames[:-1], frames[1:]))
    record["oracle"] = None
    assert len(_gif_frames(render_diffusion(record, tmp_path / "no_oracle.gif"))) == len(record["best"])


def test_report_of_a_diffusion_run_renders_what_is_present(run_dir, tmp_path):
    """Planner names instead of forecasters, no config, no training logs, no McNemar: no failure."""
    diff = tmp_path / "diffusion-run"
    (diff / "records").mkdir(parents=True)
    standard = json.loads((run_dir / "results.json").read_text())["evaluations"]["standard"]
    rename = {"zero": "diffusion", "constant-velocity": "line+refine", "oracle": "oracle"}
    rows = {rename[n]: {k: v for k, v in r.items() if k not in ("forecast_error_by_step", "forecast_ms_per_step")}
            for n, r in standard["results"].items()}
    per_episode = {"indices": standard["per_episode"]["indices"],
                   **{rename[n]: standard["per_episode"][n] for n in rename}}
    evaluation = {"protocol": "seed", "results": rows, "pairwise": [], "per_episode": per_episode}
    (diff / "results.json").write_text(json.dumps({"preset": "diffusion-v2", "evaluations": {"seed": evaluation}}))
    np.savez(diff / "records" / "seed-1000.npz", **{k: v for k, v in _diffusion_record().items()
                                                   if k not in ("oracle", "outcome")})
    written = write_report(diff)
    text = (diff / "report.md").read_text()
    assert "**diffusion**" in text and "## Diffusion plans" in text and "## Episode animations" not in text
    assert (diff / "plots" / "success_rate-seed.png") in written
    assert (diff / "animations" / "seed-1000.gif") in written
    assert not (diff / "plots" / "forecast_error-seed.png").exists()


def test_compare_runs_side_by_side(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    results = json.loads((other / "results.json").read_text())
    del results["evaluations"]["seed-v3"]
    results["preset"] = "tiny"  # same preset: the directory names tell the columns apart
    (other / "results.json").write_text(json.dumps(results))
    text = compare_runs([run_dir, other])
    assert "## Protocol standard" in text and "## Protocol seed-v3" in text
    assert "tiny (tiny)" in text and "tiny (other)" in text
    oracle_rows = [line for line in text.splitlines() if line.startswith("| **oracle**")]
    assert len(oracle_rows) == 2 and "100.0%" in oracle_rows[0]
    with pytest.raises(UserError, match="does not exist"):
        compare_runs([tmp_path / "missing"])
