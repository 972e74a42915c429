"""The one evaluation result every family produces and every reader reads.

`EvaluationResult` is one protocol's evaluation: a `Row` per method (a forecaster driving A*, an outside
policy, a diffusion planner, a planner+forecaster row) with successes, episodes, rate, Wilson 95 %
interval, outcome counts, each episode's outcome and end step, and timings; and an exact McNemar test
(`PairTest`) for every pair of rows, since all rows ran on the same episodes. `summarize(outcomes)` is the
one summariser: a family hands it each row's per-episode outcome labels and adds its own measurements
(timings, forecast error) to the rows it returns.

`to_json` / `from_json` keep the grid evaluator's JSON layout (`results`, `per_episode`,
`per_episode_steps`, `pairwise`, `episodes`, `seconds`), so cached stages and results.json files read back
as the type. `RunResult` is a run's results.json: its evaluations plus what the run trained and where.
A document that is not a result at all raises `ResultFormatError` (a ValueError), never a KeyError deep
inside a report.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from hrmlab.evaluate.stats import mcnemar_exact, wilson_interval

RESULT_FORMAT = 2
"""Part of every evaluation stage's cache key: bump it when the JSON below changes meaning, so cached
evaluations of another format are recomputed (2: this module's layout, shared by every family)."""

SUCCESS = "success"


class ResultFormatError(ValueError):
    """A JSON document that is not an evaluation / run result of this layout."""


@dataclass
class Row:
    """One method's results on a protocol's episodes."""

    successes: int
    episodes: int
    success_rate: float
    ci95: tuple[float, float]
    """Wilson 95 % interval of the success rate."""
    outcomes: dict[str, int]
    """Episodes per outcome label (every label of the family's vocabulary, zeros included)."""
    per_episode: list[str] = field(default_factory=list)
    """Each episode's outcome label, in the evaluation's episode order."""
    steps: list[int] | None = None
    """Each episode's end step (agent moves when it ended), where the family records it."""
    mean_steps_success: float | None = None
    plan_ms_per_step: float | None = None
    forecast_ms_per_step: float | None = None
    plan_ms_per_episode: float | None = None
    """Open-loop planners (the diffusion family): planning time per episode."""
    path_length_vs_oracle: float | None = None
    forecast_ade: float | None = None
    forecast_fde: float | None = None
    forecast_error_by_step: list[float] | None = None
    replans: int | None = None
    plan_ms_per_replan: float | None = None
    candidates_feasible: float | None = None
    """Space-time diffusion rows: share of sampled candidates that passed the evaluator's check."""

    def success(self) -> np.ndarray:
        """Boolean success per episode."""
        return np.array([o == SUCCESS for o in self.per_episode], dtype=bool)

    def to_json(self) -> dict:
        out = {"successes": self.successes, "episodes": self.episodes, "success_rate": self.success_rate,
               "ci95": list(self.ci95), "outcomes": dict(self.outcomes), "mean_steps_success": self.mean_steps_success}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in out and f.name not in ("per_episode", "steps") and value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict, per_episode=None, steps=None) -> "Row":
        if not isinstance(data, dict) or not {"successes", "episodes"} <= set(data):
            raise ResultFormatError("a result row needs successes and episodes")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        k, n = int(data["successes"]), int(data["episodes"])
        values.setdefault("success_rate", k / n if n else 0.0)
        values["ci95"] = tuple(values.get("ci95") or wilson_interval(k, n))
        values.setdefault("outcomes", {SUCCESS: k})
        values["per_episode"] = list(per_episode or [])
        values["steps"] = None if steps is None else [int(s) for s in steps]
        return cls(**values)


@dataclass
class PairTest:
    """Exact McNemar test of two rows on the same episodes."""

    a: str
    b: str
    a_only: int
    """Episodes only `a` succeeded in."""
    b_only: int
    p_value: float
    """Two-sided."""

    def only(self, name: str) -> int:
        """Episodes only `name` (a or b) succeeded in."""
        return self.a_only if name == self.a else self.b_only


@dataclass
class EpisodeRange:
    start: int
    count: int
    description: str = ""


@dataclass
class EvaluationResult:
    """One protocol's evaluation: rows, pairwise tests and the per-episode record."""

    protocol: str
    episodes: EpisodeRange
    rows: dict[str, Row]
    pairwise: list[PairTest]
    indices: list[int]
    """Episode index of each per-episode entry."""
    planner: dict = field(default_factory=dict)
    """The A* settings the rows planned with (time_index, horizon, radius), where there is one."""
    seconds: float | None = None
    """Wall-clock time of the evaluation stage when it ran."""
    split: str | None = None
    planners: dict = field(default_factory=dict)
    """Space-time family: what its planner names stand for."""
    policies: dict = field(default_factory=dict)
    """Outside policies: name → module:factory."""
    records: list[str] = field(default_factory=list)
    """Diffusion family: episode record files (.npz) written for animations."""

    def pair(self, a: str, b: str) -> PairTest | None:
        """The test of rows a and b (in either order)."""
        return next((p for p in self.pairwise if {p.a, p.b} == {a, b}), None)

    def to_json(self) -> dict:
        out: dict = {"protocol": self.protocol}
        if self.planner:
            out["planner"] = dict(self.planner)
        out["episodes"] = {"start": self.episodes.start, "count": self.episodes.count}
        if self.episodes.description:
            out["episodes"]["description"] = self.episodes.description
        out["results"] = {name: row.to_json() for name, row in self.rows.items()}
        out["pairwise"] = [dataclasses.asdict(p) for p in self.pairwise]
        out["per_episode"] = {"indices": list(self.indices), **{n: list(r.per_episode) for n, r in self.rows.items()}}
        if any(r.steps is not None for r in self.rows.values()):
            out["per_episode_steps"] = {n: list(r.steps) for n, r in self.rows.items() if r.steps is not None}
        for name in ("split", "planners", "policies", "records", "seconds"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, data: dict) -> "EvaluationResult":
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or "protocol" not in data:
            raise ResultFormatError("an evaluation result needs protocol and results")
        per_episode = data.get("per_episode") or {}
        steps = data.get("per_episode_steps") or {}
        rows = {name: Row.from_json(row, per_episode.get(name), steps.get(name)) for name, row in data["results"].items()}
        indices = [int(i) for i in per_episode.get("indices") or []]
        episodes = data.get("episodes") or {}
        count = episodes.get("count", len(indices) or max((r.episodes for r in rows.values()), default=0))
        pairs = [PairTest(p["a"], p["b"], int(p["a_only"]), int(p["b_only"]), float(p["p_value"]))
                 for p in data.get("pairwise") or []]
        return cls(str(data["protocol"]), EpisodeRange(int(episodes.get("start", 0)), int(count),
                                                      str(episodes.get("description", ""))),
                   rows, pairs, indices, planner=dict(data.get("planner") or {}), seconds=data.get("seconds"),
                   split=data.get("split"), planners=dict(data.get("planners") or {}),
                   policies=dict(data.get("policies") or {}), records=list(data.get("records") or []))


def summarize(outcomes: Mapping[str, Sequence[str]], *, protocol: str, indices: Sequence[int],
              vocabulary: Sequence[str], steps: Mapping[str, Sequence[int]] | None = None,
              description: str = "") -> EvaluationResult:
    """The one summariser: per row successes, rate, Wilson interval, outcome counts (every label of
    `vocabulary`), per-episode outcomes and end steps, mean end step of the successes; an exact McNemar
    test for every pair of rows. `outcomes`: row name → outcome label per episode (the episodes of
    `indices`, the same for every row)."""
    rows: dict[str, Row] = {}
    indices = [int(i) for i in indices]
    for name, labels in outcomes.items():
        labels = np.asarray([str(o) for o in labels], dtype=object)
        if len(labels) != len(indices):
            raise ValueError(f"row {name} has {len(labels)} outcomes for {len(indices)} episodes")
        unknown = set(labels) - set(vocabulary)
        if unknown:
            raise ValueError(f"row {name}: outcomes {sorted(unknown)} are not in {list(vocabulary)}")
        success = labels == SUCCESS
        n, k = len(labels), int(success.sum())
        row_steps = None if steps is None or name not in steps else np.asarray(steps[name])
        rows[name] = Row(
            successes=k, episodes=n, success_rate=k / n if n else 0.0, ci95=tuple(float(x) for x in wilson_interval(k, n)),
            outcomes={o: int((labels == o).sum()) for o in vocabulary}, per_episode=list(labels),
            steps=None if row_steps is None else [int(s) for s in row_steps],
            mean_steps_success=float(np.mean(row_steps[success])) if k and row_steps is not None else None)
    pairwise = [PairTest(a, b, **mcnemar_exact(rows[a].success(), rows[b].success()))
                for a, b in itertools.combinations(rows, 2)]
    start = indices[0] if indices else 0
    return EvaluationResult(protocol, EpisodeRange(start, len(indices), description), rows, pairwise, indices)


@dataclass
class RunResult:
    """A run's results.json: its evaluations (per protocol) and what the run trained and where."""

    preset: str
    evaluations: dict[str, EvaluationResult]
    primary_protocol: str
    family: str = "grid"
    description: str = ""
    provenance: str = ""
    published: dict = field(default_factory=dict)
    smoke: bool = False
    forecasters: dict = field(default_factory=dict)
    """Name → {checkpoint, rollout, precision} of each learned forecaster (how to rebuild it)."""
    training: dict = field(default_factory=dict)
    """Model name → its training stage's summary (checkpoint, parameters, seconds, metrics file, ...)."""
    records: list[str] = field(default_factory=list)
    """Episode record files (.npz, relative to the run directory) for animations."""
    seconds: float = 0.0
    details: dict = field(default_factory=dict)
    """What else the family records (stage keys, model, timings, ...): top-level keys of results.json."""

    @property
    def primary(self) -> EvaluationResult:
        return self.evaluations[self.primary_protocol]

    def to_json(self) -> dict:
        out = {"preset": self.preset, "family": self.family, "description": self.description,
               "provenance": self.provenance, "published": self.published, "smoke": self.smoke,
               "forecasters": self.forecasters, "training": self.training,
               "primary_protocol": self.primary_protocol,
               "evaluations": {p: e.to_json() for p, e in self.evaluations.items()}}
        if self.records:
            out["records"] = self.records
        out.update({k: v for k, v in self.details.items() if k not in out})
        out["seconds"] = self.seconds
        return out

    @classmethod
    def from_json(cls, data: dict, name: str = "") -> "RunResult":
        """A results.json; a bare evaluation (`hrmlab evaluate --json`) becomes a run of one protocol."""
        if not isinstance(data, dict):
            raise ResultFormatError("a results file holds a JSON object")
        if "evaluations" not in data and "results" in data and "protocol" in data:
            data = {"evaluations": {data["protocol"]: data}, "primary_protocol": data["protocol"]}
        evaluations = data.get("evaluations", {})  # none yet: a run that has not evaluated
        if not isinstance(evaluations, dict):
            raise ResultFormatError("`evaluations` of a results file maps protocols to evaluations")
        evals = {p: EvaluationResult.from_json(e) for p, e in evaluations.items()}
        primary = data.get("primary_protocol")
        if primary not in evals:
            primary = "standard" if "standard" in evals else next(iter(evals), "standard")
        known = {f.name for f in dataclasses.fields(cls)}
        # keys older diffusion runs repeated from their headline evaluation: not run details
        repeated = {"protocol", "episodes", "results", "pairwise"}
        details = {k: v for k, v in data.items() if k not in known and k not in repeated}
        return cls(preset=str(data.get("preset") or name), evaluations=evals, primary_protocol=primary,
                   family=str(data.get("family") or "grid"), description=str(data.get("description") or ""),
                   provenance=str(data.get("provenance") or ""), published=dict(data.get("published") or {}),
                   smoke=bool(data.get("smoke")), forecasters=dict(data.get("forecasters") or {}),
                   training=dict(data.get("training") or {}), records=list(data.get("records") or []),
                   seconds=float(data.get("seconds") or 0.0), details=details)
