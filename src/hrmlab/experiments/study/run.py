"""Running `hrmlab study`: per world, select each arm's learning rate on validation (selection seeds only,
extending the grid at an edge), train fresh evaluated seeds at the chosen rate, evaluate every trained copy and
physics rule on the same test episodes, and store the world's record (results file) and its per-episode
outcomes (episodes file). Every stage is the grid pipeline's (cached by config, resumable); each finished unit
of a world (physics rows, selection run, evaluated run) is also kept in its progress file beside the results
(progress.py), so a world resumes on a machine without the cache; a wall ledger keeps a world's time over
interrupted calls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import threading
import time
from pathlib import Path

from hrmlab.config import changed_dict, config_hash, to_dict
from hrmlab.errors import UserError, choose
from hrmlab.experiments.study.config import (RECURSIVE_MODELS, Arm, StudyConfig, arm_configs, study_worlds,
                                             with_recipe)
from hrmlab.experiments.study.document import DEFAULT_OUT, option_text, tabulate
from hrmlab.experiments.study.summary import OUTCOME_CODES, is_format_1, outlier_ratios
from hrmlab.experiments.study.train_runs import TrainRun, train_run
from hrmlab.fileio import write_json_atomic, write_text_atomic

log = logging.getLogger("hrmlab.study")

STUDY_FORMAT = 2
"""Format of the results and episodes files and of each world record (2: fresh evaluated seeds, arms with
roll-outs, per-episode outcomes kept). Worlds of format 1 stay readable, shown as measured under the previous
design."""

COSTLIEST_FIRST = ("trm", "hrm-act", "hrm", "lstm")
"""Learned models by training cost per run, costliest first (docs/study.json: trm ~2-3x hrm-act, the LSTM
cheapest); only the order is used, for scheduling. A model not listed goes last."""


def longest_first(runs: list[tuple]) -> list[tuple]:
    """(arm, ...) runs, the costliest model first (stable within a model). On a pool of w workers the last long
    run otherwise trains alone while a core idles."""
    rank = {model: i for i, model in enumerate(COSTLIEST_FIRST)}
    return sorted(runs, key=lambda run: rank.get(run[0].model, len(rank)))


# ------------------------------------------------------------------------------------------ training
class Trainer:
    """Trains (arm, lr, seed) runs of one world through the backend (a process pool, Modal containers, Slurm
    array tasks): independent cached stages, one torch thread each, costliest first; remembers every run's
    result (for the world's compute time).

    Each run is a unit of the world's `progress` (progress.py): a selection run is used for its validation loss
    alone, an evaluated run for the rows its task evaluates once trained (evaluation.py), so a finished run is
    kept there as it comes back and not run again, on this machine or another."""

    def __init__(self, cfgs: dict, data_paths, opts, backend, stack: str = "auto", progress=None):
        from hrmlab.experiments.study.progress import Progress

        self.cfgs, self.data_paths, self.opts, self.backend, self.stack = cfgs, data_paths, opts, backend, stack
        self.progress = progress if progress is not None else Progress(None, "")
        self.done: list[dict] = []

    def _job(self, arm: Arm, lr: float, s: int, evaluation=None) -> TrainRun:
        name = f"{arm.name}-lr{lr:g}-s{s}"
        # cpu_threads=1: what a pool worker uses; stated, so it is part of each run's cache key
        return TrainRun(with_recipe(self.cfgs[arm.rollout], arm.model, lr=lr, seed=s, cpu_threads=1), arm.model,
                        self.data_paths, dataclasses.replace(self.opts, out=self.opts.out / "train" / name,
                                                             progress=False), name, evaluation)

    def train(self, runs: list[tuple[Arm, float, int]], evaluations: dict | None = None) -> dict:
        """{run: its portable result (progress.portable)}: the runs the progress holds under the same keys are not
        run; the others are recorded there as each comes back. evaluations: run → the `RunEvaluation` its task
        does once trained."""
        from hrmlab.config import config_hash
        from hrmlab.experiments.grid.stages import train_key
        from hrmlab.experiments.study.progress import run_units

        tasks = []
        for run in longest_first(runs):
            job = self._job(*run, (evaluations or {}).get(run))
            unit, key = job.name, train_key(job.cfg, job.model)
            if job.evaluation is not None:  # its rows depend on the evaluation too
                unit, key = unit + "-evaluated", config_hash({"train": key, "evaluation": job.evaluation.key()})
            tasks.append((run, unit, key, job))
        out = run_units(self.progress, tasks, self._map)
        self.done.extend(out.values())
        return out

    def select(self, runs: list[tuple[Arm, float, int]]) -> dict:
        """Selection runs (`select_rates`): {run: result with its "best_val_loss"}."""
        return self.train(runs)

    def _map(self, jobs: list[TrainRun]):
        """(job, summary) as each finishes (where the backend can say). On a GPU (or with stack `on`) the jobs that share a
        model shape and data train as one stacked ensemble per backend task (experiments/study/stacked.py), the
        rest as single runs; a group's members come back together."""
        from hrmlab.backends import as_completed
        from hrmlab.experiments.study.stacked import can_stack, groups, train_stacked

        if not jobs or not can_stack(jobs[0].cfg.device, self.stack):
            yield from as_completed(self.backend, train_run, jobs)
            return
        grouped = groups(jobs)
        log.info("training %d runs as %d stacked groups", len(jobs), len(grouped))
        for group, summaries in zip(grouped, self.backend.map(train_stacked, grouped)):
            yield from zip(group, summaries)


def _val_loss(summary: dict) -> float:
    value = summary.get("best_val_loss")
    return math.inf if value is None or not math.isfinite(value) else value


def choose_rate(arm: str, losses: dict[float, float]) -> float:
    """The candidate rate with the lowest validation loss (a diverged run counts as +inf)."""
    if all(math.isinf(v) for v in losses.values()):
        raise UserError(f"study: {arm} diverged (or has no validation loss) at every candidate learning rate "
                        f"{', '.join(f'{lr:g}' for lr in sorted(losses))}; pass lower rates with --lrs")
    return min(sorted(losses), key=losses.get)


def extend_rate(edge: float, neighbour: float) -> float:
    """The next rate beyond a grid's edge, one step of the grid's own ratio, to one significant digit
    (1e-2 beside 3e-3 → 3e-2; 1e-3 beside 3e-3 → 3e-4)."""
    return float(f"{edge * edge / neighbour:.0e}")


def next_rate(grid: list[float], chosen: float) -> float | None:
    """Where the grid grows when `chosen` sits at one of its edges (None: inside, or a grid of one rate)."""
    grid = sorted(grid)
    if len(grid) < 2 or chosen not in (grid[0], grid[-1]):
        return None
    rate = extend_rate(grid[-1], grid[-2]) if chosen == grid[-1] else extend_rate(grid[0], grid[1])
    return None if rate in grid or not rate > 0 else rate


def select_rates(arms: list[Arm], study: StudyConfig, trainer: Trainer) -> dict[str, dict]:
    """Per arm: validation loss of every selection seed at every candidate rate, the chosen rate (lowest mean),
    and the rates the grid was extended by (at most `grid_extensions` times, each time the choice is at an edge)."""
    seeds = study.selection_seed_ids()
    grids = {arm.name: sorted(study.lrs) for arm in arms}
    losses: dict[str, dict[float, list[float]]] = {arm.name: {} for arm in arms}
    extended: dict[str, list[float]] = {arm.name: [] for arm in arms}
    pending = [(arm, lr, s) for arm in arms for lr in grids[arm.name] for s in seeds]
    chosen = {}
    for round_ in range(study.grid_extensions + 1):
        for (arm, lr, s), summary in trainer.select(pending).items():
            losses[arm.name].setdefault(lr, [math.inf] * len(seeds))[seeds.index(s)] = _val_loss(summary)
        chosen = {arm.name: choose_rate(arm.name, {lr: statistics.fmean(v) for lr, v in losses[arm.name].items()})
                  for arm in arms}
        if round_ == study.grid_extensions:
            break
        pending = []
        for arm in arms:
            rate = next_rate(grids[arm.name], chosen[arm.name])
            if rate is not None:
                grids[arm.name] = sorted([*grids[arm.name], rate])
                extended[arm.name].append(rate)
                pending += [(arm, rate, s) for s in seeds]
        if not pending:
            break
    return {arm.name: {"seeds": seeds, "chosen": chosen[arm.name], "extended": extended[arm.name],
                       "val_loss": {f"{lr:g}": [None if math.isinf(x) else x for x in losses[arm.name][lr]]
                                    for lr in sorted(losses[arm.name])}}
            for arm in arms}


# ------------------------------------------------------------------------------------------ engines
class LocalEngine:
    """Each world's stages on this machine's process pool (`workers` processes; 1: in this process).

    stack: `auto` trains the runs that share a model shape as stacked ensembles where they run on a GPU
    (experiments/study/stacked.py), `on` everywhere, `off` never."""

    def __init__(self, workers: int | None = None, stack: str = "auto"):
        from hrmlab.backends.local import make_backend

        self.backend, self.stack = make_backend(workers), stack
        n = self.backend.workers
        self.label = f"local process pool, {n} worker{'s' if n > 1 else ''}" if n > 1 else "local, in process"

    def run_world(self, world: str, study: StudyConfig, opts, overrides=(), smoke: bool = False, progress=None):
        return study_world(world, study, opts, overrides, smoke, self.backend, self.stack, progress)


class SlurmEngine(LocalEngine):
    """Each world orchestrated here, its data shards, training runs and evaluation chunks as Slurm array jobs
    (`backends/slurm.py`) against the stage cache, which must be on a filesystem the nodes share."""

    def __init__(self, cache: Path, cluster: str = "slurm", parameters: dict | None = None, retries: int = 1,
                 stack: str = "auto"):
        from hrmlab.backends.slurm import SlurmBackend

        self.backend, self.stack = SlurmBackend(Path(cache) / "slurm", cluster, parameters, retries), stack
        self.label = self.backend.label()


# ------------------------------------------------------------------------------------------ a world
def study_world(preset: str, study: StudyConfig, opts, overrides=(), smoke: bool = False,
                backend=None, stack: str = "auto", progress=None) -> tuple[dict, dict]:
    """Evaluate the physics rules, select rates, train every evaluated seed and evaluate it in its task — all
    through the cached grid stages. Returns the world's record (results file) and its per-episode outcomes
    (episodes file). stack: see `LocalEngine`; progress: the world's `Progress`, which keeps every finished unit
    (see `Trainer`)."""
    from hrmlab.experiments.grid.stages import stage_data
    from hrmlab.experiments.study.evaluation import RunEvaluation, physics_rows, row_record

    cfgs = arm_configs(preset, study, overrides, smoke)
    arms = study.arms()
    base = cfgs[arms[0].rollout]  # every roll-out's config shares the world, data, planner and evaluation
    trainer = Trainer(cfgs, stage_data(base, opts, backend), opts, backend, stack, progress)
    eval_cfg = dataclasses.replace(base.eval, episodes=study.episodes if not smoke else base.eval.episodes)
    physics = physics_rows(base, eval_cfg, opts, backend, trainer.progress)
    selection = select_rates(arms, study, trainer)
    scales = [x for x in study.scales_for(preset) if x != 1.0]
    scaled_arms = [arm for arm in arms if arm.model in RECURSIVE_MODELS] if scales else []
    evaluations = {}
    for arm in arms:
        for seed in study.evaluated_seeds():
            rows = [(arm.label(seed), "best", 1.0)]
            rows += [(arm.label(seed, x), "best", x) for x in scales] if arm in scaled_arms else []
            evaluations[(arm, selection[arm.name]["chosen"], seed)] = RunEvaluation(base, eval_cfg, arm.rollout, rows)
    trained = trainer.train(list(evaluations), evaluations)
    rows = dict(physics["rows"])
    for (arm, lr, seed), summary in trained.items():
        if "diverged" in summary:
            raise UserError(f"study {preset}: {arm.name} seed {seed} diverged at the chosen learning rate {lr:g} "
                            f"({summary['diverged']})")
    for run in evaluations:  # the rows in the order of the arms and seeds
        rows.update(trained[run]["rows"])

    record = {"format": STUDY_FORMAT, "preset": preset, "protocol": eval_cfg.protocol,
              "episodes": physics["episodes"], "selection_seeds": study.selection_seeds,
              "seeds": study.evaluated_seeds(), "arms": {}, "physics": {}}
    for arm in arms:
        sel = selection[arm.name]
        runs = {}
        for seed in study.evaluated_seeds():
            summary = trained[(arm, sel["chosen"], seed)]
            runs[arm.label(seed)] = {"seed": seed, "val_loss": summary.get("best_val_loss"),
                                     "parameters": summary.get("parameters"), "train_seconds": summary.get("seconds"),
                                     **({"seconds_partial": True} if partly_timed(summary) else {}),
                                     **row_record(rows[arm.label(seed)])}
        flags = outlier_ratios({lab: run["val_loss"] for lab, run in runs.items()})
        record["arms"][arm.name] = {"model": arm.model, "rollout": arm.rollout, "lr": sel["chosen"],
                                    "selection": {k: sel[k] for k in ("seeds", "val_loss", "extended")},
                                    "runs": runs, "outliers": {lab: round(r, 1) for lab, r in flags.items()}}
    record["physics"] = {name: row_record(rows[name]) for name in base.physics_forecasters}
    if scaled_arms:
        record["test_time_compute"] = {
            arm.name: {f"{x:g}": {arm.label(s, x): row_record(rows[arm.label(s, x)]) for s in study.evaluated_seeds()}
                       for x in scales} for arm in scaled_arms}
    seconds = (physics["seconds"] or 0) + sum((r.get("seconds") or 0) + (r.get("eval_seconds") or 0)
                                              for r in trainer.done)
    record.update(compute_minutes=round(seconds / 60, 1))  # wall time and machines: the world's WallLedger
    untimed = sum(map(partly_timed, trainer.done))
    if untimed:  # their time before the interruption is unknown: compute-minutes are a lower bound
        record["untimed_runs"] = untimed
    episodes = {"indices": physics["indices"],
                "rows": {label: {"outcomes": row["outcomes"], "steps": row["steps"]} for label, row in rows.items()}}
    return record, episodes


def partly_timed(train_summary: dict) -> bool:
    """A training run resumed from a checkpoint written before checkpoints recorded their training time: its
    `seconds` are the resuming call's only, an undercount of what the run costs."""
    return bool(train_summary.get("resumed_from_step")) and train_summary.get("earlier_seconds") is None


class WallLedger:
    """A world's wall time summed over every call that worked on it, kept in `path` (JSON).

    A world interrupted (session end, kill) resumes from its stage cache, and the resuming call alone would
    understate what the world costs from an empty cache; the ledger keeps the earlier calls' seconds, the
    running call's rewritten every `every` s (a kill loses at most that). Once the world is finished the
    ledger is closed: a later call that only re-summarises from the cache reports the closed total.

    closed: where the closed ledger goes (the open one at `path` is removed then), so an open ledger can live
    beside the results and travel with a world that moves machines while a finished one stays local."""

    def __init__(self, path: Path, key: str, every: float = 30.0, closed: Path | None = None):
        self.path, self.key, self.every = Path(path), key, every
        self.closed = Path(closed) if closed is not None else None
        stored = _read_json(self.path) or {}
        done = (_read_json(self.closed) or {}) if self.closed is not None else {}
        if done.get("key") == key and (done.get("finished") or stored.get("key") != key):
            stored = done  # closed; or an open ledger kept where ledgers were kept before they travelled
            if done.get("finished"):
                self.path.unlink(missing_ok=True)  # a stale open copy: the world is finished
        same = stored.get("key") == key
        self.earlier = [float(x) for x in stored.get("calls", [])] if same else []
        machines = list(stored.get("machines", [])) if same else []
        # a ledger written before machines were kept: its calls' machines are unknown (None)
        self.earlier_machines = machines if len(machines) == len(self.earlier) else [None] * len(self.earlier)
        self.this_machine = machine_label()
        self.finished = same and bool(stored.get("finished"))
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="study-wall-ledger")

    def _calls(self) -> list[float]:
        """Seconds per call; the running call's so far unless the world is finished."""
        return self.earlier if self.finished else self.earlier + [time.perf_counter() - self.t0]

    def _machines(self) -> list[str | None]:
        """The machine of each call (None: a call recorded before machines were kept)."""
        return self.earlier_machines if self.finished else self.earlier_machines + [self.this_machine]

    @property
    def calls(self) -> int:
        return len(self._calls())

    @property
    def machine(self) -> str:
        """Every machine the world's calls ran on, in order of first use: a world resumed on another machine
        names both, so its wall time is never credited to one machine alone."""
        known = list(dict.fromkeys(m for m in self._machines() if m))
        unknown = sum(m is None for m in self._machines())
        label = "; ".join(known) or "unrecorded"
        return label + (f" (and {unknown} earlier call{'s' if unknown > 1 else ''} on an unrecorded machine)"
                        if unknown and known else "")

    @property
    def seconds(self) -> float:
        return sum(self._calls())

    def __enter__(self) -> "WallLedger":
        if not self.finished:
            self._write()
            self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.finished:  # interrupted: keep this call's time so far
            self._stop_heartbeat()
            self._write()

    def finish(self) -> None:
        """The world is done: stop counting and close the ledger."""
        if not self.finished:
            self._stop_heartbeat()
            self.earlier.append(round(time.perf_counter() - self.t0, 3))  # as stored: a reread sums the same
            self.earlier_machines.append(self.this_machine)
            self.finished = True
            self._write()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beat.is_alive():
            self._beat.join()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def _write(self) -> None:
        data = {"key": self.key, "calls": [round(x, 3) for x in self._calls()], "machines": self._machines(),
                "finished": self.finished}
        if self.finished and self.closed is not None:
            write_json_atomic(self.closed, data)
            self.path.unlink(missing_ok=True)
        else:
            write_json_atomic(self.path, data)


def machine_label() -> str:
    """The CPU model and core count a world's wall time was measured on (a study's worlds may be finished on
    different machines)."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def world_key(preset: str, study: StudyConfig, overrides, smoke: bool) -> str:
    """What decides a world's record: each roll-out's resolved config (equal recipes applied) reduced to the
    settings that differ from the defaults (so a setting added later with a behaviour-keeping default does not
    void stored worlds), the arms, the rate grid and its extensions, the seeds, the episodes."""
    cfgs = arm_configs(preset, study, overrides, smoke)
    return config_hash({"format": STUDY_FORMAT, "configs": {r: changed_dict(cfg) for r, cfg in cfgs.items()},
                        "arms": [dataclasses.astuple(arm) for arm in study.arms()], "lrs": study.lrs,
                        "grid_extensions": study.grid_extensions, "selection_seeds": study.selection_seeds,
                        "seeds": study.seeds, "episodes": study.episodes,
                        "compute_scales": study.scales_for(preset), "smoke": smoke})


# ------------------------------------------------------------------------------------------ settings
def check_study(study: StudyConfig) -> None:
    """The study's settings, before any work (named by their `hrmlab study` options)."""
    from hrmlab.forecast.learned import is_recurrent
    from hrmlab.forecast.models import build_model, get_kind

    for flag, values in (("--only", study.worlds), ("--models", study.models), ("--lrs", study.lrs)):
        if not values:
            raise UserError(f"{flag} names nothing; give at least one (comma-separated)")
    worlds = study_worlds()
    for world in [*study.worlds, *study.compute_worlds]:
        choose("world preset", world, worlds)
    for model in [*study.models, *study.stateful_arms]:
        get_kind(model)  # an unknown kind is a UserError naming the valid ones
    for model in study.stateful_arms:
        if not is_recurrent(build_model(get_kind(model).config())):
            raise UserError(f"--stateful-arms: {model} is not recurrent, so it has no stateful roll-out")
    names = [arm.name for arm in study.arms()]
    if len(set(names)) != len(names):
        raise UserError(f"--models / --stateful-arms name an arm twice: {', '.join(names)}")
    for flag, values in (("--lrs", study.lrs), ("--compute-scales", study.compute_scales)):
        if any(not (v > 0 and math.isfinite(v)) for v in values):
            raise UserError(f"{flag} must be positive numbers, got {option_text(values)}")
    for flag, value in (("--seeds", study.seeds), ("--episodes", study.episodes),
                        ("--selection-seeds", study.selection_seeds)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if study.grid_extensions < 0:
        raise UserError(f"--grid-extensions must be >= 0, got {study.grid_extensions}")


RESULT_SETTINGS = (("--models", "models"), ("--stateful-arms", "stateful_arms"), ("--lrs", "lrs"),
                   ("--grid-extensions", "grid_extensions"), ("--seeds", "seeds"),
                   ("--selection-seeds", "selection_seeds"), ("--episodes", "episodes"),
                   ("--compute-scales", "compute_scales"), ("rollout", "rollout"))
"""The StudyConfig settings that give a world's figures their meaning (`--only` and `--compute-worlds` only
select worlds): a results file holding other values of these is another study's."""


def study_paths(out=None, json_path=None, smoke: bool = False, runs_dir: Path = Path("runs")) -> tuple[Path, Path]:
    """(document, results file) of a study. The document defaults to docs/study.md — for a smoke study to
    RUNS/study-smoke.md, so a toy run never touches the committed results — and the results file to the
    document's name with .json (docs/study.json for the default), so `--out` alone never writes elsewhere."""
    out_md = Path(out) if out else (Path(runs_dir) / "study-smoke.md" if smoke else DEFAULT_OUT)
    return out_md, Path(json_path) if json_path else out_md.with_suffix(".json")


def episodes_path(out_json: Path) -> Path:
    """The episodes file beside a results file: `<stem>-episodes.json` (docs/study-episodes.json)."""
    out_json = Path(out_json)
    return out_json.with_name(out_json.stem + "-episodes.json")


def settings_conflicts(stored: dict, study: StudyConfig, smoke: bool, overrides) -> list[str]:
    """How this study's settings differ from those a results file was written with, in `hrmlab study`'s terms
    (empty: the same study). A file of format 1 is this study's previous design: its worlds stay, shown apart,
    and are replaced as this study reruns them."""
    if stored.get("format") not in (1, STUDY_FORMAT):
        return [f"format {stored.get('format')!r} (this version reads 1 and {STUDY_FORMAT})"]
    settings = stored.get("study") if isinstance(stored.get("study"), dict) else {}
    default = StudyConfig()
    out = []
    for flag, name in RESULT_SETTINGS:
        here, was = getattr(study, name), settings.get(name, getattr(default, name))
        if here != was:
            out.append(f"{flag} {option_text(here)} here, {option_text(was)} there")
    if bool(stored.get("smoke")) != smoke:
        out.append("--smoke here, not there" if smoke else "--smoke there, not here")
    here, there = list(overrides or []), list(stored.get("overrides") or [])
    if here != there:
        out.append(f"--set {' '.join(here) or 'none'} here, {' '.join(there) or 'none'} there")
    return out


# ------------------------------------------------------------------------------------------ files
def read_results(out_json: Path) -> dict | None:
    """The results file `out_json` (None when there is none); anything else is a one-line error naming it,
    never silently treated as empty (a run would overwrite it, --tabulate-only would show nothing)."""
    path = Path(out_json)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"--json {path} is not a study results file: not JSON ({exc.msg}, line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--json {path} cannot be read as a study results file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("worlds"), dict):
        raise UserError(f"--json {path} is not a study results file (no \"worlds\" mapping)")
    return data


def read_episodes(path: Path) -> dict:
    """World → its per-episode record from an episodes file ({} when there is none), outcome codes translated
    to this version's table."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a study episodes file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("worlds", "codes")):
        raise UserError(f"{path} is not a study episodes file (no \"codes\" and \"worlds\" mappings)")
    codes = {code: label for label, code in data["codes"].items()}
    unknown = set(codes.values()) - set(OUTCOME_CODES)
    if unknown:
        raise UserError(f"{path}: outcomes {sorted(unknown)} are unknown to this version")
    table = str.maketrans({code: OUTCOME_CODES[label] for code, label in codes.items()})
    for world in data["worlds"].values():
        for row in world["rows"].values():
            row["outcomes"] = row["outcomes"].translate(table)
    return data["worlds"]


def check_episodes(world: str, record: dict, episodes: dict) -> None:
    """The episodes record belongs to the results record: every row there, the same success counts."""
    counts = [(lab, row["successes"]) for lab, row in _stored_rows(record)]
    for label, successes in counts:
        text = episodes["rows"].get(label, {}).get("outcomes")
        if text is None or text.count(OUTCOME_CODES["success"]) != successes or len(text) != record["episodes"]:
            raise UserError(f"study world {world}: the episodes file's row {label} does not match the results file "
                            "(another run's outcomes?)")


def _stored_rows(record: dict):
    for arm in record["arms"].values():
        yield from arm["runs"].items()
    yield from record["physics"].items()
    for scales in (record.get("test_time_compute") or {}).values():
        for rows in scales.values():
            yield from rows.items()


def episodes_text(worlds: dict) -> str:
    """The episodes file: one line per evaluation row (its outcome string and end steps), so it stays small
    (about 5 kB per 1,000-episode row) and diffs by row."""
    lines = ["{", f' "format": {STUDY_FORMAT},', f' "codes": {json.dumps(OUTCOME_CODES)},', ' "worlds": {']
    for i, (world, ep) in enumerate(worlds.items()):
        lines.append(f"  {json.dumps(world)}: {{\"key\": {json.dumps(ep['key'])}, "
                     f"\"indices\": {json.dumps(ep['indices'], separators=(',', ':'))}, \"rows\": {{")
        rows = list(ep["rows"].items())
        for j, (label, row) in enumerate(rows):
            lines.append(f"   {json.dumps(label)}: {json.dumps(row, separators=(',', ':'))}"
                         + ("," if j < len(rows) - 1 else ""))
        lines.append("  }}" + ("," if i < len(worlds) - 1 else ""))
    return "\n".join(lines + [" }", "}"]) + "\n"


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------ the study
def run_study(study: StudyConfig, out_md: Path, out_json: Path, cache: Path, runs_dir: Path, smoke: bool = False,
              overrides=(), workers: int | None = None, progress: bool = True, tabulate_only: bool = False,
              force: bool = False, engine=None) -> str:
    """Run (or reuse) every world; after each one, rewrite the episodes file, the results file and the document.

    engine: where each world's work runs (`run_world`, `label`): the local process pool of `workers` by default,
    `SlurmEngine`, or the Modal engine (cloud/launcher.py); the records and documents are the same in form and
    are written here.

    tabulate_only: rewrite the document from the results and episodes files alone and run nothing (a fresh
    clone recomputes every figure). A results file written by another study's settings (`settings_conflicts`)
    is not written into unless `force`."""
    from hrmlab.experiments.grid.stages import RunOptions
    from hrmlab.experiments.study.progress import Progress, progress_dir

    check_study(study)
    stored = read_results(out_json)
    if tabulate_only and stored is None:
        raise UserError(f"--json {out_json} does not exist: --tabulate-only has no results to tabulate")
    conflicts = settings_conflicts(stored, study, smoke, overrides) if stored and not tabulate_only else []
    if conflicts and not force:
        raise UserError(f"--json {out_json} holds another study's results ({'; '.join(conflicts)}); give a new --json "
                        "(or --out) for this study, or --force to write into it")
    kept = dict((stored or {}).get("worlds", {}))  # every stored world stays, whichever worlds this call selects
    ep_path = episodes_path(out_json)
    kept_episodes = read_episodes(ep_path)
    keys = {world: world_key(world, study, overrides, smoke) for world in study.worlds}  # config errors first
    results = {}
    if engine is None and not tabulate_only:
        engine = LocalEngine(workers)
    for world in study.worlds:
        key, record = keys[world], kept.get(world)
        if record is not None and not is_format_1(record) and record.get("key") == key:
            episodes = kept_episodes.get(world)
            if episodes is not None and episodes.get("key") == key:
                check_episodes(world, record, episodes)
                log.info("study %s: reusing the stored record (%s)", world, out_json)
                if not tabulate_only:  # the world was finished (perhaps elsewhere): its progress is done with
                    Progress(progress_dir(out_json) / f"{world}.json", key).remove_if_held()
                results[world] = record
                continue
            if tabulate_only:
                raise UserError(f"{ep_path} holds no per-episode outcomes of {world}'s stored run (key {key}): "
                                "rerun the world (its stages are cached) to restore them")
        if tabulate_only:  # nothing stored for these settings: the document shows the previous design or "not yet run"
            continue
        opts = RunOptions(out=runs_dir / f"study-{world}" / ("smoke" if smoke else "full"), cache=cache,
                          smoke=smoke, workers=workers, progress=progress)
        opts.out.mkdir(parents=True, exist_ok=True)
        log.info("study %s: selecting rates, training %d seeds × %d arms, evaluating", world, study.seeds,
                 len(study.arms()))
        # finished selection runs and the open wall ledger travel with the results (progress.py: commit the folder
        # while a world is open)
        units = Progress(progress_dir(out_json) / f"{world}.json", key)
        with WallLedger(progress_dir(out_json) / f"{world}.wall.json", key, closed=opts.out / "wall.json") as wall:
            record, episodes = engine.run_world(world, study, opts, overrides, smoke, progress=units)
            wall.finish()
        record.setdefault("backend", engine.label)
        record.update(minutes=round(wall.seconds / 60, 1), calls=wall.calls, machine=wall.machine)
        results[world] = kept[world] = {"key": key, **record}
        kept_episodes[world] = {"key": key, **episodes}
        _write_results(out_json, out_md, study, kept, kept_episodes, results, smoke, overrides)
        units.remove()
    return _write_results(out_json, out_md, study, kept, kept_episodes, results, smoke, overrides,
                          write_files=not tabulate_only)


def _write_results(out_json: Path, out_md: Path, study: StudyConfig, kept: dict, kept_episodes: dict, results: dict,
                   smoke: bool, overrides=(), write_files: bool = True) -> str:
    """The episodes file (first: a results record never names outcomes that are not stored) and the results file
    hold every stored world (`kept`) and the settings that made them; the document shows this study's worlds
    (`results`) and, for the worlds not yet rerun, their format-1 records."""
    if write_files:
        ordered = {**{w: kept[w] for w in study.worlds if w in kept}, **kept}
        episodes = {w: kept_episodes[w] for w in ordered
                    if not is_format_1(kept[w]) and kept_episodes.get(w, {}).get("key") == kept[w].get("key")}
        write_text_atomic(episodes_path(out_json), episodes_text(episodes))
        extra = {**({"smoke": True} if smoke else {}), **({"overrides": list(overrides)} if overrides else {})}
        write_json_atomic(Path(out_json), {"format": STUDY_FORMAT, "study": to_dict(study), **extra,
                                           "episodes_file": episodes_path(out_json).name, "worlds": ordered})
    shown = {w: results[w] for w in study.worlds if w in results}
    previous = {w: kept[w] for w in study.worlds if w not in results and w in kept and is_format_1(kept[w])}
    text = tabulate(study, shown, {w: kept_episodes[w] for w in shown}, previous, smoke, out_md, out_json)
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text(text)
    return text
