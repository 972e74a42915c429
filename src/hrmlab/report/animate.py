"""Episode animations: watch what each forecaster predicted and what the planner did with it.

`render_episode` replays one closed-loop episode (see `replay.py`) and draws one panel per forecaster:
walls, the true obstacles with their recent trail, that forecaster's predicted positions over the
horizon, the planned path, the agent and its trail, the goal, and a crash marker. Frame k shows the
decision at step k (the agent has made k moves); a panel freezes on its outcome when its episode
ends, so an episode of L moves gives L + 1 frames. `pick_disagreements` chooses the episodes worth
watching: one forecaster succeeds where another crashes. `render_diffusion` animates a diffusion
planner's record: obstacles moving while the chosen path is traced, with the samples and the oracle.

Frames are drawn with matplotlib's Agg backend by updating artists in place (fast, headless) and
written by `video.py`: GIF always, MP4 when imageio-ffmpeg is installed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, to_rgba  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Circle, Patch  # noqa: E402

from hrmlab.errors import UserError  # noqa: E402
from hrmlab.evaluate.result import EvaluationResult  # noqa: E402
from hrmlab.forecast.physics import PHYSICS_FORECASTERS  # noqa: E402
from hrmlab.forecast.registry import ForecasterSpec, parse_forecasters  # noqa: E402
from hrmlab.report.plots import forecaster_colors  # noqa: E402
from hrmlab.report.replay import EpisodeReplay, ForecasterTrack, replay_episode  # noqa: E402
from hrmlab.report.rundir import RunDir, load_run  # noqa: E402
from hrmlab.report.video import FrameGrabber, check_output_path, write_frames  # noqa: E402

log = logging.getLogger(__name__)

PATH_COLOR = "#1f3b8a"
CRASH_COLOR = "#d62728"
GOAL_COLOR = "#2ca02c"
OBSTACLE_COLOR = "#333333"
WALL_COLOR = "#8c8c8c"
MAX_PANELS = 4
PANEL_INCHES = 3.4
DPI = 80


# ------------------------------------------------------------------------------------- choosing episodes
@dataclass
class Disagreement:
    """An episode worth watching and the forecasters to show in it."""

    episode: int
    succeeded: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    forecasters: list[str] = field(default_factory=list)

    @property
    def caption(self) -> str:
        parts = [f"{', '.join(names)} {verb}" for names, verb in
                 ((self.succeeded, "succeeded"), (self.crashed, "crashed"), (self.timed_out, "timed out")) if names]
        return f"episode {self.episode}: " + "; ".join(parts)


def _priority(names: list[str]) -> list[str]:
    """Learned models first (they are what a run is about), then the rest in results order."""
    return sorted(names, key=lambda n: (n in PHYSICS_FORECASTERS, names.index(n)))


def _choose_forecasters(groups: list[list[str]], limit: int) -> list[str]:
    """Up to `limit` names: the first (learned-first) of each non-empty group, so both sides of the
    disagreement show; then the other learned models; then the rest, taking from the groups in turn."""
    queues = [_priority(g) for g in groups if g]
    chosen = [q.pop(0) for q in queues][:limit]
    learned = [n for q in queues for n in q if n not in PHYSICS_FORECASTERS]
    chosen += learned[:max(0, limit - len(chosen))]
    queues = [[n for n in q if n not in chosen] for q in queues]
    while len(chosen) < limit and any(queues):
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(q.pop(0))
    return chosen


def pick_disagreements(results: EvaluationResult, k: int = 2, max_forecasters: int = 3) -> list[Disagreement]:
    """The `k` episodes of an evaluation where forecasters disagree most.

    Rank: most (succeeded, crashed) forecaster pairs, then most learned forecasters among them, then
    the lowest episode index; then episodes where some succeed and others time out; then the first
    episodes, so there are always `k` picks when the evaluation has `k` episodes."""
    per_episode = {n: r.per_episode for n, r in results.rows.items() if r.per_episode}
    names = list(per_episode)
    ranked = []
    for j, index in enumerate(results.indices):
        outcome = {n: per_episode[n][j] for n in names if j < len(per_episode[n])}
        succ = [n for n in names if outcome.get(n) == "success"]
        crash = [n for n in names if outcome.get(n) == "crash"]
        timeout = [n for n in names if outcome.get(n) == "timeout"]
        if succ and crash:
            tier, involved, pairs = 0, succ + crash, len(succ) * len(crash)
        elif succ and timeout:
            tier, involved, pairs = 1, succ + timeout, len(succ) * len(timeout)
        else:
            tier, involved, pairs = 2, [], 0
        learned = sum(n not in PHYSICS_FORECASTERS for n in involved)
        ranked.append(((tier, -pairs, -learned, j), Disagreement(int(index), succ, crash, timeout)))
    ranked.sort(key=lambda item: item[0])
    picks = []
    for (tier, *_), d in ranked[:k]:
        if tier == 0:
            d.forecasters = _choose_forecasters([d.succeeded, d.crashed], max_forecasters)
        elif tier == 1:
            d.forecasters = _choose_forecasters([d.succeeded, d.timed_out], max_forecasters)
        else:
            d.forecasters = _priority(names)[:max_forecasters]
        d.forecasters.sort(key=names.index)  # panels in the results' order, whatever the choice order
        picks.append(d)
    return picks


# ------------------------------------------------------------------------------------ closed-loop panels
class _Panel:
    """The artists of one forecaster's panel, updated in place frame by frame."""

    def __init__(self, ax, replay: EpisodeReplay, track: ForecasterTrack, color: str, cell_points: float):
        self.ax, self.replay, self.track, self.color = ax, replay, track, color
        g = replay.walls.shape[0]
        ax.imshow(replay.walls, cmap=ListedColormap(["white", WALL_COLOR]), vmin=0, vmax=1,
                  extent=(-0.5, g - 0.5, g - 0.5, -0.5), interpolation="nearest")
        ax.set_xlim(-0.5, g - 0.5)
        ax.set_ylim(g - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(2.5)
        ax.plot(replay.start[1], replay.start[0], marker="s", markersize=cell_points, markerfacecolor="none",
                markeredgecolor=PATH_COLOR, linestyle="none")
        ax.plot(replay.goal[1], replay.goal[0], marker="*", markersize=cell_points * 1.4, color=GOAL_COLOR,
                markeredgecolor="black", markeredgewidth=0.5, linestyle="none", zorder=3)
        n_obs = replay.obstacles.shape[1]
        self.trails = [ax.plot([], [], color=OBSTACLE_COLOR, alpha=0.35, linewidth=1.5)[0] for _ in range(n_obs)]
        self.bodies = [ax.add_patch(Circle((0, 0), replay.crash_radius / 2, color=OBSTACLE_COLOR, zorder=4))
                       for _ in range(n_obs)]
        n_fc = track.forecasts.shape[1] if track.forecasts.ndim == 4 else 0
        self.forecast_lines = [ax.plot([], [], color=color, linewidth=1.0, alpha=0.8, zorder=5)[0] for _ in range(n_fc)]
        self.forecast_dots = ax.scatter([], [], s=max(4.0, cell_points ** 2 * 0.12), zorder=5)
        self.agent_trail = ax.plot([], [], color=PATH_COLOR, linestyle=":", linewidth=1.2, zorder=6)[0]
        self.plan = ax.plot([], [], color=PATH_COLOR, linewidth=2.2, marker="o", markersize=cell_points * 0.25,
                            zorder=7, solid_capstyle="round")[0]
        self.agent = ax.plot([], [], marker="s", markersize=cell_points * 0.8, color=PATH_COLOR,
                             markeredgecolor="white", linestyle="none", zorder=8)[0]
        self.crash = ax.plot([], [], marker="X", markersize=cell_points * 1.6, color=CRASH_COLOR,
                             markeredgecolor="black", linestyle="none", zorder=9)[0]
        self.goal_ring = ax.plot([], [], marker="o", markersize=cell_points * 2.2, markerfacecolor="none",
                                 markeredgecolor=GOAL_COLOR, markeredgewidth=3, linestyle="none", zorder=9)[0]
        self.artists = [*self.trails, *self.bodies, *self.forecast_lines, self.forecast_dots, self.agent_trail,
                        self.plan, self.agent, self.crash, self.goal_ring, ax.title]
        rgba = np.array(to_rgba(color))
        horizon = max(1, replay.horizon)
        self.dot_colors = np.tile(rgba, (horizon, 1))
        self.dot_colors[:, 3] = np.linspace(0.95, 0.2, horizon)  # nearer forecast steps are more opaque

    def update(self, frame: int, trail: int) -> None:
        track, replay = self.track, self.replay
        k = min(frame, track.steps)
        ended = frame >= track.steps
        now = replay.warmup + k
        for i, (line, body) in enumerate(zip(self.trails, self.bodies)):
            past = replay.obstacles[max(0, now - trail):now + 1, i]
            line.set_data(past[:, 1], past[:, 0])
            body.center = (replay.obstacles[now, i, 1], replay.obstacles[now, i, 0])
        if k < len(track.forecasts):  # the decision made at step k (seed-v1's one-shot plan: frame 0)
            fc = track.forecasts[k]  # (N', horizon, 2)
            for i, line in enumerate(self.forecast_lines):
                line.set_data(fc[i, :, 1], fc[i, :, 0])
            pts = fc.reshape(-1, 2)
            self.forecast_dots.set_offsets(pts[:, ::-1] if len(pts) else np.zeros((0, 2)))
            self.forecast_dots.set_facecolors(np.tile(self.dot_colors[:fc.shape[1]], (fc.shape[0], 1)))
            path = track.plans[k]
            path = path[path[:, 0] >= 0]
            self.plan.set_data(path[:, 1], path[:, 0])
        else:
            for line in self.forecast_lines:
                line.set_data([], [])
            self.forecast_dots.set_offsets(np.zeros((0, 2)))
            self.plan.set_data([], [])
        cells = track.agent[:k + 1]
        self.agent_trail.set_data(cells[:, 1], cells[:, 0])
        self.agent.set_data([cells[-1, 1]], [cells[-1, 0]])
        crashed = ended and track.outcome == "crash"
        self.crash.set_data(([cells[-1, 1]], [cells[-1, 0]]) if crashed else ([], []))
        won = ended and track.outcome == "success"
        self.goal_ring.set_data(([replay.goal[1]], [replay.goal[0]]) if won else ([], []))
        status = track.end_label if ended else f"step {k}"
        title = f"{track.name}: {status}"
        if k < len(track.forecasts) and track.forecasts[k].size:
            # a forecast that leaves the map is invisible here; say so, or the panel looks like `ignore`
            g = replay.walls.shape[0]
            fc = track.forecasts[k]
            off = ~np.all((fc > -0.5) & (fc < g - 0.5), axis=-1)
            if off.any():
                title += f"\n{100 * off.mean():.0f}% of forecast points off the map"
        self.ax.set_title(title, color="black", fontsize=9 if "\n" in title else 10,
                          fontweight="bold" if ended else "normal")


def _legend_handles(tracks: list[ForecasterTrack], colors: dict[str, str]) -> list:
    handles = [
        Patch(facecolor=WALL_COLOR, label="wall"),
        Line2D([], [], marker="o", color=OBSTACLE_COLOR, linestyle="none", label="obstacle (true)"),
        Line2D([], [], color=OBSTACLE_COLOR, alpha=0.35, linewidth=1.5, label="obstacle trail"),
    ]
    handles += [Line2D([], [], color=colors[t.name], marker="o", markersize=4, label=f"forecast: {t.name}")
                for t in tracks if t.forecasts.ndim == 4 and t.forecasts.shape[1] > 0]
    handles += [
        Line2D([], [], color=PATH_COLOR, linewidth=2.2, marker="o", markersize=3, label="planned path"),
        Line2D([], [], color=PATH_COLOR, marker="s", linestyle=":", label="agent and its trail"),
        Line2D([], [], color=GOAL_COLOR, marker="*", markersize=10, linestyle="none", label="goal"),
        Line2D([], [], color=CRASH_COLOR, marker="X", markersize=9, linestyle="none", label="crash"),
    ]
    return handles


@dataclass
class PanelFigure:
    """A figure of one panel per track, drawn and updated in place (animations and the envs' render)."""

    fig: object
    panels: list
    suptitle: object
    grabber: FrameGrabber

    def frame(self, frame: int, title: str, trail: int = 8) -> np.ndarray:
        """Frame `frame` as an (H, W, 3) uint8 array."""
        for p in self.panels:
            p.update(frame, trail)
        self.suptitle.set_text(title)
        return self.grabber.grab()

    def close(self) -> None:
        plt.close(self.fig)


def panel_figure(replay: EpisodeReplay, tracks: list[ForecasterTrack]) -> PanelFigure:
    """Walls, start, goal and legend drawn once; the moving artists of every panel ready to update."""
    colors = forecaster_colors([t.name for t in tracks])
    n = len(tracks)
    fig_w, fig_h = max(4.6, PANEL_INCHES * n + 0.2), PANEL_INCHES + 1.8
    fig, axes = plt.subplots(1, n, figsize=(fig_w, fig_h), dpi=DPI, squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=(fig_h - 0.85) / fig_h, bottom=1.0 / fig_h, wspace=0.06)
    g = replay.walls.shape[0]
    cell_points = axes[0, 0].get_position().width * fig_w * 72 / g
    panels = [_Panel(ax, replay, t, colors[t.name], cell_points) for ax, t in zip(axes[0], tracks)]
    fig.legend(handles=_legend_handles(tracks, colors), loc="lower center", ncol=min(5, 2 + n), fontsize=7,
               frameon=False)
    suptitle = fig.suptitle("", fontsize=11)
    try:
        grabber = FrameGrabber(fig, [a for p in panels for a in p.artists] + [suptitle])
    except BaseException:
        plt.close(fig)
        raise
    return PanelFigure(fig, panels, suptitle, grabber)


def render_replay(replay: EpisodeReplay, out_path: str | Path, *, fps: float = 4.0, trail: int = 8) -> Path:
    """Animate a replayed episode, one panel per forecaster; `length + 1` frames."""
    out_path = check_output_path(out_path)
    tracks = list(replay.tracks.values())[:MAX_PANELS]
    if not tracks:
        raise UserError("nothing to render: no forecasters in this replay")
    figure = panel_figure(replay, tracks)
    length = max(t.steps for t in tracks)
    frames = []
    try:
        for frame in range(length + 1):
            frames.append(figure.frame(frame, f"protocol {replay.protocol}, episode {replay.episode} — step "
                                              f"{frame}/{length}\nforecasts fade over the {replay.horizon}-step "
                                              "planning horizon", trail))
    finally:
        figure.close()
    return write_frames(frames, out_path, fps=fps)


def _resolve_source(source, forecasters, protocol):
    """(world, planner, specs, protocol, run or None) from a run dir / RunDir / settings object."""
    if isinstance(source, (str, Path)):
        source = load_run(source)
    if isinstance(source, RunDir):
        names = forecasters if not isinstance(forecasters, str) else [n.strip() for n in forecasters.split(",") if n.strip()]
        specs = []
        for name in names or []:
            if isinstance(name, ForecasterSpec):
                specs.append(name)
                continue
            spec = source.forecaster_spec(name)
            if spec is None:
                known = ", ".join(sorted(set(source.result.forecasters) | set(PHYSICS_FORECASTERS)))
                raise UserError(f"unknown forecaster {name!r} for this run; valid choices: {known}")
            specs.append(spec)
        protocol = protocol or source.primary_protocol
        return source.world(), source.planner(protocol), specs, protocol, source
    # an EvaluateSettings-like object: world, planner, eval
    protocol = protocol or getattr(getattr(source, "eval", None), "protocol", "standard")
    if isinstance(forecasters, str):
        specs = parse_forecasters(forecasters)
    else:
        specs = [f if isinstance(f, ForecasterSpec) else parse_forecasters(f)[0] for f in forecasters or []]
    return source.world, source.planner, specs, protocol, None


def render_episode(source, episode: int | None, forecasters, out_path: str | Path, *,
                   protocol: str | None = None, fps: float = 4.0) -> Path:
    """Replay episode `episode` of `protocol` and animate it to `out_path` (.gif, or .mp4 with
    imageio-ffmpeg). The protocol defaults to the run's primary one (or the settings' protocol).

    `source` is a run directory (forecaster checkpoints come from its results.json) or an
    `EvaluateSettings`. `forecasters` is a list of names or "a,b"; None picks, from the run's
    evaluation, the forecasters that disagree in that episode. `episode` None picks the episode
    where they disagree most."""
    out_path = check_output_path(out_path)
    world, planner, specs, protocol, run = _resolve_source(source, forecasters, protocol)
    if episode is None or not specs:
        if run is None:
            raise UserError("give an episode and forecasters (or a run directory to choose them from)")
        evaluation = run.evaluations.get(protocol)
        if evaluation is None:
            raise UserError(f"this run has no {protocol!r} evaluation; valid choices: {', '.join(run.evaluations) or 'none'}")
        picks = pick_disagreements(evaluation, k=len(evaluation.indices))
        if episode is None:
            episode = picks[0].episode if picks else 0
        pick = next((p for p in picks if p.episode == episode), None)
        if not specs:
            names = pick.forecasters if pick else list(evaluation.rows)[:3]
            _, _, specs, _, _ = _resolve_source(run, names, protocol)
    log.info("replaying %s episode %d with %s", protocol, episode, ", ".join(s.name for s in specs))
    replay = replay_episode(protocol, world, planner, specs, int(episode))
    return render_replay(replay, out_path, fps=fps)


# ------------------------------------------------------------------------------------------- diffusion
def load_diffusion_record(path: str | Path) -> dict:
    """A diffusion record saved with `np.savez(path, **record)` (`oracle` may be absent)."""
    with np.load(path, allow_pickle=False) as data:
        record = {k: data[k] for k in data.files}
    record.setdefault("oracle", None)
    return record


def render_diffusion(record: dict, out_path: str | Path, *, fps: float = 6.0, title: str | None = None) -> Path:
    """Animate a diffusion plan: obstacles move while the best path (and the oracle's) is traced.

    record keys (positions are (row, col) in cells): `static` (H, W) bool; `obstacles` (T, N, 2), where
    obstacles[k] is the world the path's point k is checked against; `samples` (S, P, 2) sampled paths;
    `best` (P, 2) the refined, chosen path; `oracle` (P', 2) or None; `start`, `goal` (2,). Optional:
    `radius` (collision distance drawn around obstacles, default 2.0), `title`, `outcome`."""
    out_path = check_output_path(out_path)
    static = np.asarray(record["static"], dtype=bool)
    obstacles = np.asarray(record["obstacles"], dtype=float)
    samples = np.asarray(record.get("samples") if record.get("samples") is not None else np.zeros((0, 0, 2)), dtype=float)
    best = np.asarray(record["best"], dtype=float)
    oracle = record.get("oracle")
    oracle = None if oracle is None or np.size(oracle) == 0 else np.asarray(oracle, dtype=float)
    start, goal = np.asarray(record["start"], dtype=float), np.asarray(record["goal"], dtype=float)
    radius = float(np.asarray(record.get("radius", 2.0)))
    title = title or str(record.get("title", "diffusion plan"))
    outcome = record.get("outcome")
    h, w = static.shape
    length = max(len(best), len(oracle) if oracle is not None else 0)
    fig, ax = plt.subplots(figsize=(5.6, 6.2), dpi=DPI)
    fig.subplots_adjust(left=0.03, right=0.97, top=0.9, bottom=0.17)
    ax.imshow(static, cmap=ListedColormap(["white", WALL_COLOR]), vmin=0, vmax=1,
              extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in samples:
        ax.plot(s[:, 1], s[:, 0], color="#9e9e9e", linewidth=0.8, alpha=0.6, zorder=2)
    ax.plot(best[:, 1], best[:, 0], color=PATH_COLOR, linewidth=1.0, alpha=0.25, zorder=3)
    ax.plot(start[1], start[0], marker="s", markersize=9, color=PATH_COLOR, linestyle="none", zorder=6)
    ax.plot(goal[1], goal[0], marker="*", markersize=15, color=GOAL_COLOR, markeredgecolor="black", linestyle="none", zorder=6)
    n_obs = obstacles.shape[1] if obstacles.ndim == 3 else 0
    zones = [ax.add_patch(Circle((0, 0), radius, facecolor=CRASH_COLOR, alpha=0.12, edgecolor=CRASH_COLOR, zorder=3))
             for _ in range(n_obs)]
    bodies = [ax.add_patch(Circle((0, 0), 0.8, color=OBSTACLE_COLOR, zorder=4)) for _ in range(n_obs)]
    traced = ax.plot([], [], color=PATH_COLOR, linewidth=2.5, zorder=5)[0]
    oracle_traced = ax.plot([], [], color=forecaster_colors(["oracle"])["oracle"], linewidth=2.0, linestyle="--", zorder=5)[0]
    head = ax.plot([], [], marker="o", markersize=8, color=PATH_COLOR, markeredgecolor="white", linestyle="none", zorder=7)[0]
    handles = [Patch(facecolor=WALL_COLOR, label="static obstacle"),
               Line2D([], [], marker="o", color=OBSTACLE_COLOR, linestyle="none", label="moving obstacle"),
               Patch(facecolor=CRASH_COLOR, alpha=0.2, label=f"collision zone (< {radius:g})"),
               Line2D([], [], color="#9e9e9e", label="sampled paths"),
               Line2D([], [], color=PATH_COLOR, linewidth=2.5, label="best refined path"),
               Line2D([], [], color=GOAL_COLOR, marker="*", linestyle="none", markersize=10, label="goal")]
    if oracle is not None:
        handles.insert(5, Line2D([], [], color=forecaster_colors(["oracle"])["oracle"], linestyle="--", label="oracle path"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    frames = []
    try:
        grabber = FrameGrabber(fig, [*zones, *bodies, traced, oracle_traced, head, ax.title])
        for k in range(length):
            t = min(k, len(obstacles) - 1)
            for i, (zone, body) in enumerate(zip(zones, bodies)):
                zone.center = body.center = (obstacles[t, i, 1], obstacles[t, i, 0])
            kb = min(k, len(best) - 1)
            traced.set_data(best[:kb + 1, 1], best[:kb + 1, 0])
            head.set_data([best[kb, 1]], [best[kb, 0]])
            if oracle is not None:
                ko = min(k, len(oracle) - 1)
                oracle_traced.set_data(oracle[:ko + 1, 1], oracle[:ko + 1, 0])
            end = f" — {outcome}" if outcome is not None and k == length - 1 else ""
            ax.set_title(f"{title}\npath point {k + 1}/{length}{end}", fontsize=10)
            frames.append(grabber.grab())
    finally:
        plt.close(fig)
    return write_frames(frames, out_path, fps=fps)
