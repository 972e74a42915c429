"""`hrmlab suites`: run every scenario-suite preset and write the benchmark table (docs/suites.md).

Each suite is a world where forecasting matters (the `world` section of its preset file, SUITE_WORLDS).
The command runs the `suite-*` presets through the ordinary pipeline (so every stage is cached and resumable) and
tabulates, per suite: success with Wilson intervals for the oracle, the physics rules and the learned
models the presets train; forecast ADE/FDE measured at every planning step; and the share of the oracle's
lead over the best physics rule (the yardstick, usually bounce-aware) that the best learned model closes.
The fair comparison of learned models (equal budgets, recipes chosen on validation, several training
seeds) is `hrmlab study` (docs/study.md); with `--set models=[]` this command tabulates the worlds alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hrmlab.evaluate.protocols import SUITE_DESCRIPTIONS, SUITE_WORLDS
from hrmlab.evaluate.result import Row, RunResult

log = logging.getLogger("hrmlab.suites")

COLUMNS = ("oracle", "bounce-aware", "constant-velocity", "lstm", "hrm")


def _cell(row: Row | None) -> str:
    if row is None:
        return "—"
    lo, hi = row.ci95
    return f"{100 * row.success_rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _ade(row: Row | None) -> str:
    if row is None or row.forecast_ade is None:
        return "—"
    return f"{row.forecast_ade:.2f} / {row.forecast_fde:.2f}"


PHYSICS = ("ignore", "zero", "constant-velocity", "bounce-aware")
"""Physics rules without privileged knowledge; the best of them on a suite's episodes is its yardstick."""


def best_physics(results: dict[str, Row]) -> str | None:
    """The physics rule (not the oracle) with the highest success on these episodes."""
    rules = [r for r in PHYSICS if r in results]
    return max(rules, key=lambda r: results[r].success_rate) if rules else None


def gap_closed(results: dict[str, Row]) -> tuple[str, float | None]:
    """(best learned model, share of the oracle − best-physics gap it closes)."""
    yard = best_physics(results)
    learned = {m: r.success_rate for m, r in results.items() if m not in PHYSICS and m != "oracle"}
    if "oracle" not in results or yard is None or not learned:
        return "", None
    oracle, base = results["oracle"].success_rate, results[yard].success_rate
    if oracle <= base:
        return "", None
    best = max(learned, key=learned.get)
    return best, (learned[best] - base) / (oracle - base)


def meets_bar(results: dict[str, Row]) -> bool:
    """The scenario-suite bar, against the strongest physics rule: oracle ≥ 97 %, the best physics rule ≥ 15
    points below it, and the best learned model closes ≥ half of that gap with a 95 % interval that does
    not overlap the rule's."""
    best, share = gap_closed(results)
    if share is None:
        return False
    oracle, yard = results["oracle"], results[best_physics(results)]
    return (oracle.success_rate >= 0.97 and oracle.success_rate - yard.success_rate >= 0.15
            and share >= 0.5 and results[best].ci95[0] > yard.ci95[1])


def physics_gap(results: dict[str, Row]) -> str:
    """'bounce-aware: 26.4 points below the oracle' — how much a forecaster can win in this world."""
    yard = best_physics(results)
    if yard is None or "oracle" not in results:
        return "—"
    return f"{yard}: {100 * (results['oracle'].success_rate - results[yard].success_rate):.1f} points"


def suites_table(runs: dict[str, RunResult]) -> str:
    """Markdown for {suite protocol: results.json of its run}."""
    lines = ["| suite | episodes | " + " | ".join(COLUMNS) + " | best physics rule below the oracle | best learned "
             "closes | ADE / FDE (cells): " + ", ".join(c for c in COLUMNS[1:]) + " | meets the bar |",
             "|---|---|" + "---|" * len(COLUMNS) + "---|---|---|---|"]
    for protocol, run in runs.items():
        evaluation = run.evaluations[protocol]
        rows = evaluation.rows
        best, share = gap_closed(rows)
        closed = f"{best}: {100 * share:.0f}% of the gap" if share is not None else "—"
        ades = ", ".join(_ade(rows.get(c)) for c in COLUMNS[1:])
        lines.append(f"| `{protocol}` | {evaluation.episodes.count} | "
                     + " | ".join(_cell(rows.get(c)) for c in COLUMNS) + f" | {physics_gap(rows)} | {closed} | {ades} | "
                     + ("yes" if meets_bar(rows) else "no") + " |")
    return "\n".join(lines)


def learned_comparison(runs: dict[str, RunResult]) -> str:
    """One clause per suite: LSTM vs HRM on the same episodes (exact McNemar), from each run's pairwise tests."""
    clauses = []
    for protocol, run in runs.items():
        pair = run.evaluations[protocol].pair("lstm", "hrm")
        if pair is not None:
            clauses.append(f"`{protocol}` LSTM-only {pair.only('lstm')} vs HRM-only {pair.only('hrm')} successes, "
                           f"p = {pair.p_value:.2g}")
    return "; ".join(clauses)


def describe_suites() -> str:
    lines = ["| suite | world | what the history carries |", "|---|---|---|"]
    for name, world in SUITE_WORLDS.items():
        changed = {k: v for k, v in vars(world).items() if v != getattr(type(world)(), k)}
        lines.append(f"| `{name}` | " + ", ".join(f"`{k}={v}`" for k, v in changed.items())
                     + f" | {SUITE_DESCRIPTIONS[name]} |")
    return "\n".join(lines)


def stage_minutes(run: RunResult, protocol: str) -> str:
    """'HRM training 8.7 min, LSTM 9.2 min, evaluation 12.9 min' from a run's results."""
    parts = [f"{model.upper()} training {info['seconds'] / 60:.1f} min"
             for model, info in run.training.items() if info.get("seconds") is not None]
    seconds = run.evaluations[protocol].seconds
    if seconds is not None:
        parts.append(f"evaluation {seconds / 60:.1f} min")
    return ", ".join(parts) or "—"


def training_recipe(cfg) -> str:
    """One line saying how a suite preset trains its models (from its resolved config)."""
    def train(t) -> str:
        return (f"{t.epochs} epoch(s), {t.optimizer} lr {t.lr:g} ({t.schedule}), batch {t.batch_size}, "
                f"{t.precision}")
    return (f"{cfg.data.train_episodes:,} training episodes; LSTM hidden {cfg.lstm.hidden}: {train(cfg.train_lstm)}; "
            f"HRM {cfg.hrm.block} d_model {cfg.hrm.d_model}, {cfg.hrm.n_layers} block(s) per level: "
            f"{train(cfg.train_hrm)}")


def suites_document(runs: dict[str, RunResult], smoke: bool = False, recipes: dict[str, str] | None = None,
                    overrides=()) -> str:
    """The whole docs/suites.md: what each suite is, how it was run, the table and the verdict."""
    passing = [p for p, run in runs.items() if meets_bar(run.evaluations[p].rows)]
    command = "hrmlab suites" + (" --smoke" if smoke else "") + "".join(f" --set '{o}'" for o in overrides)
    trained = any(run.training for run in runs.values())
    parts = [
        "# Scenario suites\n\n"
        "Worlds where forecasting matters. With the aligned planner the seed's world is easy (constant velocity "
        "≈ 88 %, oracle ≈ 99 %), so learned forecasters have little to win there. Each suite below is a preset "
        "(`presets/suite-NAME.yaml`, whose `world` section is the world's one definition) that collects training "
        "data on that world, and a protocol of the same name (the `standard` rules — test split, crash test "
        "first, aligned planner — on that world) on which it "
        "evaluates the preset's learned models beside the oracle and the physics rules. The "
        "fair comparison of learned models (equal budget, recipes chosen on validation, several training "
        "seeds) is `hrmlab study`, docs/study.md.\n\n",
        describe_suites() + "\n\n",
        f"## Results\n\nGenerated by `{command}` (every stage cached: a rerun only re-tabulates). Success "
        "rates with 95 % Wilson intervals; ADE/FDE are forecast errors in cells against the true future, "
        "measured at every planning step of the evaluation. The yardstick is the best physics rule on the same "
        "episodes (not constant velocity). *Meets the bar*: oracle ≥ 97 %, the best physics rule ≥ 15 points "
        "below it, and the best learned model closes ≥ half of that gap with an interval that does not overlap "
        "the rule's.\n\n",
        suites_table(runs) + "\n\n",
        (f"{len(passing)} of {len(runs)} suites meet the bar" + (": " + ", ".join(f"`{p}`" for p in passing)
                                                                  if passing else "") + ".\n\n"
         if trained else "This run tabulated the worlds only (no learned models trained): the column *best physics "
         "rule below the oracle* is what a forecaster can still win in each world. Learned models: `hrmlab study` "
         "(docs/study.md).\n\n"),
    ]
    comparison = learned_comparison(runs)
    if comparison:
        parts.append(f"LSTM vs HRM on the same episodes (paired exact McNemar): {comparison}.\n\n")
    if not trained:
        return "".join(parts)
    parts += [
        "Training recipes (from the resolved presets):\n\n",
        "".join(f"- `{p}`: {r}\n" for p, r in (recipes or {}).items()),
        "\nCompute time of each stage when it ran (cached stages keep the time of the run that made them; "
        "a rerun with everything cached only re-tabulates and redraws the reports):\n\n",
        "".join(f"- `{p}`: {stage_minutes(run, p)}\n" for p, run in runs.items()),
    ]
    return "".join(parts)


def run_suites(out_md: Path, runs_dir: Path, cache: Path, smoke: bool = False, workers: int | None = None,
               overrides=(), progress: bool = True, only: list[str] | None = None) -> str:
    """Run every suite preset, or those in `only` (cached stages are reused), and write the table to `out_md`."""
    from hrmlab.errors import UserError, choose
    from hrmlab.experiments.grid.stages import RunOptions, run_experiment
    from hrmlab.presets import resolve

    runs, recipes = {}, {}
    if only is not None and not only:  # `--only ,,`: naming nothing is a mistake, not "every suite"
        raise UserError(f"--only names no suite; valid choices: {', '.join(SUITE_WORLDS)}")
    selected = [choose("suite", name, SUITE_WORLDS) for name in only] if only else list(SUITE_WORLDS)
    for protocol in selected:
        cfg = resolve(protocol, overrides, smoke=smoke)
        recipes[protocol] = training_recipe(cfg)
        opts = RunOptions(out=runs_dir / (protocol + ("-smoke" if smoke else "")), cache=cache, smoke=smoke,
                          workers=workers, progress=progress)
        log.info("suite %s: running preset %s", protocol, cfg.name)
        runs[protocol] = run_experiment(cfg, opts)
    text = suites_document(runs, smoke, recipes, overrides)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    return text
