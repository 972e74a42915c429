"""Reading a run directory: its results (a `RunResult`), resolved config, forecaster checkpoints, training logs.

Reports are written from whatever a run left behind (a half-finished run, a diffusion run, a bare
`hrmlab evaluate --json` file), so the config and log readers here return something empty rather than
failing when a file or key is missing. A directory with no results, or results that are not a result
file at all, is a user error (one line).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hrmlab.config import from_dict, to_dict
from hrmlab.errors import UserError
from hrmlab.evaluate.result import EvaluationResult, RunResult
from hrmlab.fileio import write_json_atomic, write_text_atomic
from hrmlab.forecast.physics import PHYSICS_FORECASTERS
from hrmlab.forecast.registry import ForecasterSpec
from hrmlab.planning.spacetime_astar import PlannerConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
REPORT_FILES = ("report.md", "report.html")


def write_run(run_dir, config, results: dict, files=None) -> None:
    """Write a finished run into `run_dir`: `files()` (the run's other outputs: links to its checkpoints,
    copied records), config.yaml and results.json. Every family calls it once all stages have succeeded, so a
    run that fails leaves the folder as the previous run left it (its config beside its results), never a new
    config.yaml beside old results. The old results and report go first and results.json comes last, so a
    kill in between leaves a folder without results (`hrmlab report` says so), not a mix of two runs; the
    caller then writes the report."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS_FILE, *REPORT_FILES):
        (run_dir / name).unlink(missing_ok=True)
    if files is not None:
        files()
    write_text_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(to_dict(config), sort_keys=False))
    write_json_atomic(run_dir / RESULTS_FILE, results)


@dataclass
class RunDir:
    """A run directory's contents, read once."""

    path: Path
    result: RunResult
    """results.json (or a bare evaluation, read as a run of one protocol)."""
    config: dict = field(default_factory=dict)
    """config.yaml as a plain dict ({} when missing)."""

    @property
    def label(self) -> str:
        return self.result.preset or self.path.name

    @property
    def evaluations(self) -> dict[str, EvaluationResult]:
        """Protocol name → evaluation: the run's primary protocol first, then `standard`, then by name."""
        evals = self.result.evaluations
        primary = self.result.primary_protocol
        order = sorted(evals, key=lambda name: (name != primary, name != "standard", name))
        return {name: evals[name] for name in order}

    @property
    def primary_protocol(self) -> str:
        """The protocol the run is judged on (results.json's `primary_protocol`, else `standard`)."""
        return next(iter(self.evaluations), "standard")

    def world(self) -> BounceGridConfig:
        return _section(self.config, "world", BounceGridConfig)

    def planner(self, protocol: str | None = None) -> PlannerConfig:
        """The planner settings an evaluation ran with: config.yaml's planner, overridden by the settings
        the evaluation recorded (a seed protocol may run with the seed's time index)."""
        planner = _section(self.config, "planner", PlannerConfig)
        evaluation = self.evaluations.get(protocol) if protocol else None
        recorded = evaluation.planner if evaluation is not None else None
        if recorded:
            names = {f.name for f in dataclasses.fields(PlannerConfig)}
            known = {k: v for k, v in recorded.items() if k in names and v is not None}
            planner = from_dict(PlannerConfig, {**dataclasses.asdict(planner), **known}, "planner")
        return planner

    def forecaster_spec(self, name: str) -> ForecasterSpec | None:
        """How to rebuild forecaster `name`: its checkpoint from results.json, or a physics rule.
        None when the name is neither (e.g. a diffusion planner's name)."""
        entry = self.result.forecasters.get(name) or {}
        checkpoint = entry.get("checkpoint") if isinstance(entry, dict) else None
        if checkpoint:
            path = Path(checkpoint)
            if not path.is_absolute() and not path.exists() and (self.path / path).exists():
                path = self.path / path
            return ForecasterSpec(name, str(path), precision=entry.get("precision", "fp32"),
                                  rollout=entry.get("rollout"))
        if name in PHYSICS_FORECASTERS:
            return ForecasterSpec(name)
        return None

    def training_curves(self) -> dict[str, list[dict]]:
        """Model name → rows of its metrics JSONL (training and validation rows mixed, file order)."""
        curves: dict[str, list[dict]] = {}
        for name, info in self.result.training.items():
            rel = info.get("metrics") if isinstance(info, dict) else None
            if rel:
                path = Path(rel) if Path(rel).is_absolute() else self.path / rel
                rows = read_jsonl(path)
                if rows:
                    curves[name] = rows
        for path in sorted(self.path.glob("train/*/metrics.jsonl")):  # logs results.json does not name
            name = path.parent.name
            if name not in curves:
                rows = read_jsonl(path)
                if rows:
                    curves[name] = rows
        return curves


def load_run(path: str | Path) -> RunDir:
    """Read run directory `path` (or a results JSON file); a UserError if there are no results."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        results_path, run_path = path, path.parent
    else:
        results_path, run_path = path / RESULTS_FILE, path
    if not results_path.is_file():
        raise UserError(f"{results_path} does not exist; run the experiment first (hrmlab run) or give a run directory")
    try:
        result = RunResult.from_json(json.loads(results_path.read_text()), name=run_path.name)
    except json.JSONDecodeError as exc:
        raise UserError(f"{results_path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{results_path} is not a results file of this version ({exc}); rerun the experiment") from None
    config: dict = {}
    config_path = run_path / CONFIG_FILE
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError:
            log.warning("cannot parse %s; using default world and planner settings", config_path)
    return RunDir(run_path, result, config if isinstance(config, dict) else {})


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a missing file or a torn last line (a run killed mid-write) is skipped."""
    rows = []
    try:
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        return []
    return rows


def _section(config: dict, key: str, cls):
    """Dataclass `cls` from config[key], keeping only the keys `cls` knows (newer configs may add more)."""
    data = config.get(key)
    if not isinstance(data, dict):
        return cls()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        log.warning("ignoring %s keys this version does not know: %s", key, ", ".join(unknown))
    return from_dict(cls, {k: v for k, v in data.items() if k in names}, key)
