"""A run's report (report.md + self-contained report.html + plots/ + animations/) and run comparison.

`write_report` renders whatever the run directory holds: every evaluation protocol's table, charts
and McNemar tests, forecast error and timing, training curves, and animations of the episodes where
forecasters disagree most. A missing piece (no training logs, no seed protocol, a diffusion run whose
planners cannot be replayed) is left out, never an error. Markdown is written last and atomically, so
a report.md on disk always belongs to a complete report.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from pathlib import Path

from hrmlab.fileio import write_text_atomic
from hrmlab.errors import UserError
from hrmlab.evaluate.result import EvaluationResult
from hrmlab.report import plots, tables
from hrmlab.report.animate import load_diffusion_record, pick_disagreements, render_diffusion, render_replay
from hrmlab.report.html import write_html
from hrmlab.report.replay import replay_episode
from hrmlab.report.rundir import RunDir, load_run

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
ANIMATIONS_DIR = "animations"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)




def _image(md: list[str], written: list[Path], path: Path | None, run_dir: Path, alt: str) -> None:
    if path is not None:
        written.append(path)
        md += [f"![{alt}]({path.relative_to(run_dir).as_posix()})", ""]


def _summary_lines(run: RunDir) -> list[str]:
    lines = []
    for protocol, res in run.evaluations.items():
        rows = res.rows
        if not rows:
            continue
        top = max(r.success_rate for r in rows.values())
        best = [n for n, r in rows.items() if r.success_rate == top]
        ci = rows[best[0]].ci95
        lines.append(f"- **{protocol}** ({res.episodes.count} episodes): highest success rate {100 * top:.1f}% "
                     f"(95% CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f}%) by {', '.join(f'**{b}**' for b in best)}")
    return lines


def _evaluation_section(md, written, run: RunDir, protocol: str, res: EvaluationResult, plots_dir: Path) -> None:
    slug = _slug(protocol)
    md += [f"## Results: protocol {protocol}", "", tables.planner_line(res), "", tables.results_table(res), ""]
    md += ["Rate = share of episodes reaching the goal; 95% CI is the Wilson interval; length / oracle is the mean "
           "number of moves relative to the oracle on episodes both solved; ADE/FDE are forecast errors "
           "(mean over the horizon / at its last step) against the true future.", ""]
    _image(md, written, plots.plot_success_rates(res, plots_dir / f"success_rate-{slug}.png"), run.path,
           f"Success rate with 95% Wilson interval, protocol {protocol}")
    _image(md, written, plots.plot_outcomes(res, plots_dir / f"outcomes-{slug}.png"), run.path,
           f"Outcomes (success / crash / timeout), protocol {protocol}")
    pairs = tables.pairwise_table(res)
    if pairs:
        md += [f"### Paired comparisons ({protocol})", "",
               "Exact McNemar tests on the same episodes: only the episodes where exactly one of the two "
               "succeeded count.", "", pairs, ""]


_NOT_RESULTS = {"checkpoint", "checkpoint_path", "key", "metrics", "kind"}
"""Training-summary keys that locate things rather than describe the training."""


def _metrics_table(rows: dict) -> str:
    """A table of {name: {metric: number}}; numeric columns in first-seen order."""
    rows = {k: v for k, v in rows.items() if isinstance(v, dict)}
    keys: list[str] = []
    for v in rows.values():
        keys += [k for k, x in v.items() if k not in keys and isinstance(x, (int, float)) and not isinstance(x, bool)]
    if not rows or not keys:
        return ""
    return tables.markdown_table(["forecaster"] + [tables.label(k) for k in keys],
                                 [[f"**{n}**"] + [tables.format_number(v.get(k)) for k in keys] for n, v in rows.items()])


def _training_section(md, written, run: RunDir, plots_dir: Path) -> None:
    curves = run.training_curves()
    summaries = {k: v for k, v in run.result.training.items() if isinstance(v, dict)}
    training = {k: {key: x for key, x in v.items() if key not in _NOT_RESULTS and not key.endswith("path")
                    and not isinstance(x, (dict, list)) and not (isinstance(x, str) and "/" in x)}
                for k, v in summaries.items()}
    for name, rows in curves.items():
        info = training.setdefault(name, {})
        losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
        vals = [r["val_loss"] for r in rows if isinstance(r.get("val_loss"), (int, float))]
        if losses:
            info.setdefault("final_train_loss", losses[-1])
        if vals:
            info.setdefault("best_val_loss", min(vals))
    if not training and not curves:
        return
    md += ["## Training", ""]
    table = tables.training_table(training)
    if table:
        md += [table, ""]
    _image(md, written, plots.plot_training_curves(curves, plots_dir / "training_loss.png"), run.path,
           "Training and validation loss (log scale)")
    for name, summary in summaries.items():
        metrics = summary.get("forecast_metrics") or {}
        table = _metrics_table({(name if k == "model" else k): v for k, v in metrics.items()})
        if table:
            md += [f"### Forecast quality of {name} (validation windows)", "",
                   f"{name} beside physics baselines on the same validation windows.", "", table, ""]


def _closed_loop_animations(md, written, run: RunDir, count: int, fmt: str, fps: float) -> None:
    """Animate the `count` episodes where forecasters disagree most (standard, else the first protocol)."""
    evals = run.evaluations
    if not evals or count <= 0:
        return
    protocol, res = next(iter(evals.items()))
    picks = pick_disagreements(res, k=count)
    if not picks:
        return
    anim_dir = run.path / ANIMATIONS_DIR
    world, planner = run.world(), run.planner(protocol)
    lines = []
    for pick in picks:
        specs = [run.forecaster_spec(name) for name in pick.forecasters]
        if any(s is None for s in specs):
            log.info("not animating %s: %s cannot be replayed in the grid world (not a forecaster)", protocol,
                     ", ".join(n for n, s in zip(pick.forecasters, specs) if s is None))
            return
        out = anim_dir / f"{_slug(protocol)}-episode-{pick.episode}.{fmt}"
        try:
            replay = replay_episode(protocol, world, planner, specs, pick.episode)
            render_replay(replay, out, fps=fps)
        except UserError as exc:  # e.g. a checkpoint that was moved away: the rest of the report stands
            log.warning("animation of %s episode %d skipped: %s", protocol, pick.episode, exc)
            lines += [f"- episode {pick.episode}: animation skipped ({exc})"]
            continue
        written.append(out)
        replayed = "; ".join(f"{t.name} {t.end_label}" for t in replay.tracks.values())
        lines += [f"### {pick.caption}", "", f"Replayed: {replayed}.", "",
                  f"![{protocol} episode {pick.episode}: {replayed}]({out.relative_to(run.path).as_posix()})", ""]
    if lines:
        md += ["## Episode animations", "",
               f"Episodes of protocol {protocol} where the forecasters disagree most (one succeeds where another "
               "crashes). Each panel is one forecaster driving its own agent in the same world: grey discs are the "
               "true obstacles with their recent trail, coloured dots that forecaster's predictions over the "
               "planning horizon (fading with distance in time), the blue line the planned path.", ""] + lines


def _diffusion_records(run: RunDir) -> list[Path]:
    listed = [run.path / p for p in run.result.records]
    return listed + [p for p in sorted((run.path / "records").glob("*.npz")) if p not in listed]


def _diffusion_animations(md, written, run: RunDir, count: int, fmt: str) -> None:
    lines = []
    for path in _diffusion_records(run)[:max(0, count)]:
        out = run.path / ANIMATIONS_DIR / f"{_slug(path.stem)}.{fmt}"
        try:
            render_diffusion(load_diffusion_record(path), out)
        except (OSError, KeyError, ValueError) as exc:
            log.warning("diffusion record %s not rendered: %s", path, exc)
            continue
        written.append(out)
        lines += [f"![diffusion plan {path.stem}]({out.relative_to(run.path).as_posix()})", ""]
    if lines:
        md += ["## Diffusion plans", "",
               "Grey: sampled paths; blue: the refined best path, traced as the obstacles move; dashed: the "
               "oracle's path; red discs: collision zones around moving obstacles.", ""] + lines


def write_report(run_dir: str | Path, *, animations: int = 2, animation_format: str = "gif",
                 fps: float = 4.0) -> list[Path]:
    """Write report.md, report.html, plots/*.png and `animations` episode animations for a run.

    Returns every file written (report.md first, report.html second)."""
    run = load_run(run_dir)
    if animation_format not in ("gif", "mp4"):
        raise UserError(f"animation format {animation_format!r} is invalid; valid choices: gif, mp4")
    plots_dir = run.path / PLOTS_DIR
    written: list[Path] = []
    md = [f"# Run report: {run.label}", ""]
    if run.result.description:
        md += [run.result.description, ""]
    md += [f"Run directory `{run.path}` · report written {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}", ""]
    if run.result.smoke:
        md += ["**Smoke run** (tiny sizes, to test the machinery): the numbers below say nothing about the models.", ""]
    summary = _summary_lines(run)
    published = run.result.published
    if published:
        numbers = "; ".join(f"{k}: {v}" for k, v in published.items() if k != "note")
        note = published.get("note")
        summary += [f"- the seed's published result: {numbers}" + (f" ({note})" if note else "") if numbers
                    else f"- published: {note}"]
    if summary:
        md += ["## Summary", ""] + summary + [""]
    for protocol, res in run.evaluations.items():
        _evaluation_section(md, written, run, protocol, res, plots_dir)
    if run.evaluations:
        protocol, res = next(iter(run.evaluations.items()))
        slug = _slug(protocol)
        error = plots.plot_forecast_error(res, plots_dir / f"forecast_error-{slug}.png")
        timing = plots.plot_planning_time(res, plots_dir / f"planning_time-{slug}.png")
        if error or timing:
            md += ["## Forecasts and planning time", ""]
        _image(md, written, error, run.path, f"Forecast error (ADE) against horizon step, protocol {protocol}")
        _image(md, written, timing, run.path, f"Time per planning step, protocol {protocol}")
    _training_section(md, written, run, plots_dir)
    _closed_loop_animations(md, written, run, animations, animation_format, fps)
    _diffusion_animations(md, written, run, animations, animation_format)
    if not run.evaluations:
        md += ["No evaluation results in this run yet.", ""]
    text = "\n".join(md).rstrip() + "\n"
    report_md = write_text_atomic(run.path / "report.md", text)
    report_html = run.path / "report.html"
    write_html(text, report_html, title=f"hrmlab report: {run.label}")
    log.info("wrote %s and %s (%d images)", report_md, report_html, len(written))
    return [report_md, report_html] + written


def compare_runs(dirs: list[str | Path]) -> str:
    """Markdown: the runs side by side, one table per protocol any of them evaluated."""
    runs = [load_run(d) for d in dirs]
    if not runs:
        raise UserError("give at least one run directory to compare")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):  # same preset twice: the directory names tell them apart
        labels = [f"{r.label} ({r.path.name})" for r in runs]
    md = [f"# Comparison of {len(runs)} run{'s' if len(runs) > 1 else ''}", ""]
    md += [f"- **{label}**: `{r.path}`" + (f" — {r.result.description}" if r.result.description else "")
           for label, r in zip(labels, runs)] + [""]
    protocols: list[str] = []
    for r in runs:
        protocols += [p for p in r.evaluations if p not in protocols]
    protocols.sort(key=lambda p: (p != "standard", p))
    pairs = [(label, r.evaluations) for label, r in zip(labels, runs)]
    for protocol in protocols:
        md += [f"## Protocol {protocol}", "", "Success rate [95% Wilson CI] (successes/episodes); — = not evaluated.", "",
               tables.comparison_table(pairs, protocol), ""]
    if not protocols:
        md += ["None of these runs has evaluation results yet.", ""]
    return "\n".join(md).rstrip() + "\n"
