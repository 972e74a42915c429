"""The study's markdown (docs/study.md): the overview README copies, a section per world, and the worlds stored
under the previous design (format 1) apart, with only what their records support. Every figure comes from
`summary.py`; this module only words and formats them, and names the command that regenerates the page.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hrmlab.experiments.study.config import StudyConfig, smoke_study_defaults
from hrmlab.experiments.study.summary import (ALPHA, FORMAT_1_FAILED_SEED_GAP, OUTLIER_FACTOR, REPLICATES, best_arm,
                                              format_1_seed_stability, summarize_world)

DEFAULT_OUT, DEFAULT_JSON = Path("docs/study.md"), Path("docs/study.json")


# ------------------------------------------------------------------------------------------ the command
def option_text(value) -> str:
    """A setting as `hrmlab study` spells it: lists comma-separated ('' when empty), floats in %g."""
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "''"
    return str(value)


OPTIONS = (("--only", "worlds"), ("--models", "models"), ("--stateful-arms", "stateful_arms"), ("--lrs", "lrs"),
           ("--grid-extensions", "grid_extensions"), ("--seeds", "seeds"), ("--selection-seeds", "selection_seeds"),
           ("--episodes", "episodes"), ("--compute-scales", "compute_scales"), ("--compute-worlds", "compute_worlds"))
"""`hrmlab study` options and the StudyConfig fields they set."""

SIDE_STUDY_OPTIONS = ("--models", "--stateful-arms", "--lrs", "--grid-extensions", "--seeds", "--selection-seeds",
                      "--episodes", "--compute-scales")
"""Options that change what a world's figures mean: a study with any of them changed is a side study
(--only and --compute-worlds only select worlds)."""


def changed_options(study: StudyConfig, smoke: bool = False) -> list[tuple[str, str]]:
    """(flag, value) of every option whose setting differs from the default (of --smoke when smoke)."""
    default = StudyConfig()
    if smoke:
        default = dataclasses.replace(default, **smoke_study_defaults())
    return [(flag, option_text(getattr(study, name))) for flag, name in OPTIONS
            if getattr(study, name) != getattr(default, name)]


def study_command(study: StudyConfig, out_md: Path = DEFAULT_OUT, out_json: Path = DEFAULT_JSON,
                  smoke: bool = False) -> str:
    """The `hrmlab study` call that regenerates a document: only the options that differ from the defaults."""
    parts = ["hrmlab study"] + (["--smoke"] if smoke else [])
    parts += [f"{flag} {value}" for flag, value in changed_options(study, smoke)]
    if Path(out_md) != DEFAULT_OUT:
        parts.append(f"--out {out_md}")
    if Path(out_json) != DEFAULT_JSON:
        parts.append(f"--json {out_json}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ formatting
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _ci(row: dict) -> str:
    return f"{_pct(row['rate'])}% [{_pct(row['ci95'][0])}, {_pct(row['ci95'][1])}]"


def _p(p: float) -> str:
    return f"{p:.2g}"


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _diff(t: dict) -> str:
    """A rate difference in points with its 95% interval: `+6.8 [+4.1, +9.5]`."""
    return f"{_points(t['estimate'])} [{_points(t['low'])}, {_points(t['high'])}]"


def _test(t: dict) -> str:
    """Difference, interval, verdict and Holm-adjusted p of one comparison."""
    return f"{_diff(t)}, {t['verdict']} (Holm p = {_p(t['p_adjusted'])})"


def _mcnemar(seed: str, t: dict) -> str:
    """One seed's exact McNemar test against the yardstick: `s1 16:37 p 0.0055`."""
    return f"{seed} {t['a_only']}:{t['b_only']} p {_p(t['p_value'])}"


def _ade(row: dict) -> str:
    return "—" if row.get("ade") is None else f"{row['ade']:.2f} / {row['fde']:.2f}"


def _seeds_range(seeds: list[int]) -> str:
    if not seeds:
        return "none"
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"


def _selection_seeds(k: int) -> str:
    return "seed 0" if k == 1 else f"mean over seeds 0–{k - 1}"


def _train_seconds(m: dict) -> str:
    """Mean training seconds per seed; seeds resumed from a checkpoint without their earlier time are left out."""
    if m.get("train_seconds") is None:
        return "—"
    text = f"{m['train_seconds']:.0f}"
    if "train_seconds_timed" not in m:
        return text
    timed = m["train_seconds_timed"]
    return f"≥ {text}" if timed == 0 else f"{text} ({timed} of {len(m['seeds'])} seeds)"


def _untimed_note(n: int) -> str:
    return (f"Timing: {n} training run{'s' if n > 1 else ''} of this world resumed after an interruption from a "
            "checkpoint written before checkpoints recorded their training time, so only the resuming call's "
            "seconds are known: train s averages the seeds timed whole (a count says how many), and "
            "compute-minutes are a lower bound.")


def _heading(world: str, s: dict) -> str:
    where = f" on {s['machine']}" if s.get("machine") else ""
    where += f" ({s['backend']})" if s.get("backend") else ""
    calls = (" (the finishing call's; measured before the wall ledger)" if s.get("calls") is None
             else f" over {s['calls']} calls" if s["calls"] > 1 else "")
    bound = "≥ " if s.get("untimed_runs") else ""
    return (f"### `{world}` (protocol `{s['protocol']}`, {s['episodes']} test episodes; {s['minutes']} min wall "
            f"time{calls}{where}, {bound}{s['compute_minutes']} compute-minutes)\n")


# ------------------------------------------------------------------------------------------ overview
def _arm_names(study: StudyConfig, worlds: dict, previous: dict) -> list[str]:
    present = {a for s in worlds.values() for a in s["arms"]} | {m for s in previous.values() for m in s["models"]}
    return [arm.name for arm in study.arms() if arm.name in present]


def overview_table(study: StudyConfig, worlds: dict, previous: dict) -> list[str]:
    """One row per world: each arm's mean ± sd, the yardstick, the oracle, the best arm's difference from the
    yardstick and the arms significantly better / worse than it (Holm), the wall time. README copies it."""
    arms = _arm_names(study, worlds, previous)
    lines = ["| world | " + " | ".join(arms) + " | best physics rule | oracle | best arm − best physics [95% CI] | "
             "better than best physics | worse than best physics | wall min |", "|---|" + "---|" * (len(arms) + 6)]
    for world in study.worlds:
        if world in worlds:
            s = worlds[world]
            cells = [f"{_pct(s['arms'][a]['mean'])} ± {_pct(s['arms'][a]['sd'])}" if a in s["arms"] else "—"
                     for a in arms]
            yard = s["yardstick"]
            best = best_arm(s)
            test = s["arms"][best].get("vs_yardstick") if best else None
            verdicts = {v: [a for a in s["arms"] if (s["arms"][a].get("vs_yardstick") or {}).get("verdict") == v]
                        for v in ("better", "worse")}
            tail = [f"{best} {_diff(test)}" if test else "—",
                    ", ".join(verdicts["better"]) or "none", ", ".join(verdicts["worse"]) or "none"]
            name = f"`{world}`"
        elif world in previous:
            s = previous[world]
            cells = [f"{_pct(s['models'][a]['mean'])} ± {_pct(s['models'][a]['sd'])}" if a in s["models"] else "—"
                     for a in arms]
            yard = s["best_physics"]
            tail = ["—", "—", "—"]
            name = f"`{world}` (previous design)"
        else:
            continue
        yard_text = f"{yard} {_pct(s['physics'][yard]['rate'])}" if yard else "—"
        oracle = _pct(s["physics"]["oracle"]["rate"]) if "oracle" in s["physics"] else "—"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {yard_text} | {oracle} | " + " | ".join(tail)
                     + f" | {s['minutes']} |")
    return lines


# ------------------------------------------------------------------------------------------ a world
def world_section(world: str, s: dict) -> str:
    """A format-2 world: per arm and physics rule the rates and costs, the tests, selection and flags."""
    lines = [_heading(world, s)]
    lines.append("| arm | roll-out | success (mean ± sd over seeds) | each seed [95% Wilson] | lr (chosen on val) | "
                 "ADE / FDE (cells) | params | train s | forecast ms/step | − best physics [95% CI], verdict | "
                 "per-seed McNemar vs best physics (episodes won only by the arm : only by the rule, p) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, m in s["arms"].items():
        seeds = "; ".join(f"s{r['seed']} {_ci(r)}" + (" ⚑" if "outlier" in r else "") for r in m["seeds"].values())
        vs = m.get("vs_yardstick")
        mcnemar = "; ".join(_mcnemar(f"s{t['seed']}", t) for t in m.get("mcnemar", [])) or "—"
        params = "—" if m["parameters"] is None else f"{m['parameters']:,}"
        ms = "—" if m["forecast_ms_per_step"] is None else f"{m['forecast_ms_per_step']:.2f}"
        lines.append(f"| **{name}** | {m['rollout']} | {_pct(m['mean'])}% ± {_pct(m['sd'])} | {seeds} | {m['lr']:g} | "
                     f"{_ade(m)} | {params} | {_train_seconds(m)} | {ms} | {_test(vs) if vs else '—'} | {mcnemar} |")
    for name, row in s["physics"].items():
        mark = " (yardstick)" if name == s["yardstick"] else ""
        lines.append(f"| {name}{mark} | | {_ci(row)} | | | {_ade(row)} | | | | | |")
    best = best_arm(s)
    if best and s["arms"][best].get("vs_yardstick"):
        yard = s["yardstick"]
        lines.append(f"\nBest arm: **{best}** ({_pct(s['arms'][best]['mean'])}% mean over seeds). Against the best "
                     f"physics rule, {yard} ({_pct(s['physics'][yard]['rate'])}%), in points: "
                     f"{_test(s['arms'][best]['vs_yardstick'])}.")
    if s["between"]:
        lines += [f"\nBetween arms (Holm over the {len(s['between'])} pairs; difference in points, first minus "
                  "second):\n", "| pair | difference [95% CI] | Holm p | verdict |", "|---|---|---|---|"]
        lines += [f"| {t['a']} − {t['b']} | {_diff(t)} | {_p(t['p_adjusted'])} | {t['verdict']} |"
                  for t in s["between"]]
    lines += compute_lines(s.get("test_time_compute") or {})
    lines.append("\n" + selection_text(s))
    lines.append("\n" + outlier_text(s))
    if s.get("untimed_runs"):
        lines.append("\n" + _untimed_note(s["untimed_runs"]))
    return "\n".join(lines) + "\n"


def compute_lines(ttc: dict) -> list[str]:
    """The test-time-compute table of one world: recursion × the trained amount at inference."""
    if not ttc:
        return []
    scales = sorted({k for table in ttc.values() for k in table}, key=float)
    lines = ["\nTest-time compute (every evaluated seed run with × its trained recursion at inference; success "
             "mean ± sd over seeds, ADE cells, forecast ms/step; the difference from ×1 in points with its 95% CI "
             "and verdict, Holm over the arm's scales):\n",
             "| arm | " + " | ".join(f"×{k}" for k in scales) + " |", "|---|" + "---|" * len(scales)]
    for arm, table in ttc.items():
        cells = []
        for k in scales:
            e = table.get(k)
            if e is None:
                cells.append("—")
                continue
            text = f"{_pct(e['mean'])}% ± {_pct(e['sd'])}, ADE {e['ade']:.2f}, {e['forecast_ms_per_step']:.2f} ms"
            if e.get("vs_trained"):
                text += f", {_test(e['vs_trained'])}"
            cells.append(text)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def selection_text(s: dict) -> str:
    """Validation loss per candidate rate and arm, the grid's extensions and the choices still at an edge."""
    k = s.get("selection_seeds") or 1
    parts = []
    for name, m in s["arms"].items():
        extended = {f"{lr:g}" for lr in m["extended"]}
        parts.append(f"{name}: " + ", ".join(f"{lr}{' (extension)' if lr in extended else ''} → "
                                              + ("diverged" if v is None else f"{v:.3g}")
                                              for lr, v in m["selection"].items()))
    text = (f"Recipe selection (validation loss per candidate lr, {_selection_seeds(k)}; these runs are not "
            "evaluated): " + "; ".join(parts) + ".")
    grown = [f"{name} by {', '.join(f'{lr:g}' for lr in m['extended'])}" for name, m in s["arms"].items()
             if m["extended"]]
    text += " Grid extended at an edge: " + ("; ".join(grown) if grown else "none") + "."
    edge = [f"{name} ({m['lr']:g})" for name, m in s["arms"].items() if m["at_edge"]]
    if edge:
        text += (f" Still chosen at an edge of its grid: {', '.join(edge)} — no further extension was allowed "
                 "(--grid-extensions), so these arms may be under-tuned.")
    return text


def outlier_text(s: dict) -> str:
    flagged = [f"{lab} (×{r['outlier']:.1f})" for m in s["arms"].values() for lab, r in m["seeds"].items()
               if "outlier" in r]
    return (f"Flagged seeds (⚑: best validation loss ≥ {OUTLIER_FACTOR:g}× the median of the arm's other "
            "evaluated seeds; kept in every figure): " + (", ".join(flagged) if flagged else "none") + ".")


# ------------------------------------------------------------------------------------------ format 1
def previous_design_section(previous: dict) -> str:
    """Worlds measured under the previous design (format 1): what their records support, and no verdicts."""
    parts = ["## Measured under the previous design (format 1)\n\n",
             "These worlds were measured before the study's corrected design and have not been rerun. Their records "
             "hold each seed's success count but not the per-episode outcomes, so no rate difference, interval or "
             "verdict can be computed from them, and their stored verdicts came from a pooled sign test that is "
             "withdrawn (it called a model with the yardstick's exact rate significantly worse): none is given "
             "here. The selection seed (seed 0, or 0 … k−1) trained at every candidate rate and, at the chosen "
             "rate, was also evaluated, so its win on validation may flatter the mean. Shown: each seed's rate with "
             "its Wilson interval, mean ± sd, the chosen rate, and each seed's exact McNemar p against the best "
             "physics rule as stored (unadjusted). Every model was rolled out `direct`; trm kept its weight EMA.\n\n"]
    parts += [_previous_world(world, s) + "\n" for world, s in previous.items()]
    stability = _previous_stability(previous)
    if stability:
        parts.append(stability)
    return "".join(parts)


def _previous_world(world: str, s: dict) -> str:
    lines = [_heading(world, s)]
    lines.append("| model | success (mean ± sd over seeds) | each seed [95% Wilson] | lr (chosen on val) | ADE / FDE "
                 "(cells) | params | train s | forecast ms/step | per-seed McNemar vs best physics (episodes won only "
                 "by the model : only by the rule, p) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for model, m in s["models"].items():
        seeds = "; ".join(f"s{lab.rsplit('@s', 1)[1]} {_ci(r)}" for lab, r in m["seeds"].items())
        per_seed = (m.get("vs_best_physics") or {}).get("per_seed") or {}
        mcnemar = "; ".join(_mcnemar(f"s{lab.rsplit('@s', 1)[1]}", t) for lab, t in per_seed.items()) or "—"
        lines.append(f"| **{model}** | {_pct(m['mean'])}% ± {_pct(m['sd'])} | {seeds} | {m['lr']:g} | {_ade(m)} | "
                     f"{m['parameters']:,} | {_train_seconds(m)} | {m['forecast_ms_per_step']:.2f} | {mcnemar} |")
    for name, row in s["physics"].items():
        mark = " (yardstick)" if name == s["best_physics"] else ""
        lines.append(f"| {name}{mark} | {_ci(row)} | | | {_ade(row)} | | | | |")
    ttc = s.get("test_time_compute") or {}
    if ttc:
        scales = sorted({k for table in ttc.values() for k in table}, key=float)
        lines += ["\nTest-time compute (success mean ± sd over seeds, ADE cells, forecast ms/step; no test):\n",
                  "| model | " + " | ".join(f"×{k}" for k in scales) + " |", "|---|" + "---|" * len(scales)]
        for model, table in ttc.items():
            cells = [f"{_pct(e['mean'])}% ± {_pct(e['sd'])}, ADE {e['ade']:.2f}, {e['forecast_ms_per_step']:.2f} ms"
                     if (e := table.get(k)) else "—" for k in scales]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    k = s.get("selection_seeds", 1)
    lines.append(f"\nRecipe selection (validation loss per candidate lr, {_selection_seeds(k)}, evaluated too): "
                 + "; ".join(f"{m}: " + ", ".join(f"{lr} → " + ("diverged" if v is None else f"{v:.3g}")
                                                  for lr, v in info["selection"].items())
                             for m, info in s["models"].items() if info.get("selection")) + ".")
    if s.get("untimed_runs"):
        lines.append("\n" + _untimed_note(s["untimed_runs"]))
    return "\n".join(lines) + "\n"


def _previous_stability(previous: dict) -> str:
    st = format_1_seed_stability(previous)
    if not st["count"]:
        return ""
    gap = f"{100 * FORMAT_1_FAILED_SEED_GAP:.0f}"
    lines = ["### Seed stability (previous design)\n",
             f"A training seed counts as failed when its success is more than {gap} points below the best seed of "
             "the same model in the same world. The selection seeds are left out (they won the selection on "
             "validation). Each model chose its own rate, so rate and model are confounded: this is an association, "
             f"not a controlled comparison; and the {gap}-point line was set after seeing these gaps, so the counts "
             "describe this study.\n",
             "| chosen lr | seeds trained after the selection | failed |", "|---|---|---|"]
    lines += [f"| {lr:g} | {n} | {f} |" for lr, (n, f) in st["count"].items()]
    failed = [f"`{w}` {m}@s{seed} at {lr:g} ({-100 * g:.1f} points)" for w, m, seed, lr, g in st["failed"]]
    text = "\nFailed: " + ("; ".join(failed) if failed else "none") + "."
    if st["near"] is not None:
        w, m, seed, lr, g = st["near"]
        text += f" Largest gap of a seed that did not fail: {100 * g:.1f} points (`{w}` {m}@s{seed} at {lr:g})."
    if st["fisher_p"] is not None:
        text += f" Fisher exact test, failed vs not, between the two rates: p = {_p(st['fisher_p'])}."
    return "\n".join(lines + [text + "\n"])


# ------------------------------------------------------------------------------------------ the document
def _design_text(study: StudyConfig, out_json: Path, outcomes_kept: bool) -> str:
    k = study.selection_seeds
    arms = ", ".join(f"{a.name} (`{a.rollout}`)" for a in study.arms())
    times = "once" if study.grid_extensions == 1 else f"up to {study.grid_extensions} times"
    grow = (f"a rate chosen at an edge of the grid adds the next rate beyond it ({times}) and the choice is redone"
            if study.grid_extensions else "the grid is fixed")
    return (
        f"Arms: {arms}. Every arm trains on the same data with the same recipe (the preset's LSTM recipe: "
        "optimiser, schedule, gradient clipping, batch, epochs, precision: the same optimiser steps) and no weight EMA "
        "(trm's is switched off: every model is evaluated with its live weights). Its learning rate is chosen from "
        f"{', '.join(f'{lr:g}' for lr in study.lrs)} on its own validation loss, "
        + ("training seed 0" if k == 1 else f"mean over training seeds 0–{k - 1}")
        + f" at every candidate rate; {grow}. The selection runs are never evaluated: "
        f"{study.seeds} fresh training seeds ({_seeds_range(study.evaluated_seeds())}) train at the chosen rate and "
        "run on the same held-out test episodes as the physics rules and the oracle. A seed whose best validation "
        f"loss is ≥ {OUTLIER_FACTOR:g}× the median of its arm's other evaluated seeds is flagged (⚑), never "
        "dropped. The yardstick is the best physics rule on those episodes other than the oracle.\n\n"
        "The statistic: each comparison is the difference of success rates (an arm averaged over its seeds, minus "
        "the yardstick or another arm), with a 95% interval from a paired bootstrap over the episodes plus a "
        f"t-distributed training-seed term ({REPLICATES:,} replicates, fixed seed), so it carries both sources of "
        "uncertainty. A verdict (better, worse, no significant difference) comes from the bootstrap p-value, "
        f"Holm-corrected over a world's family of comparisons (the arms against the yardstick; all pairs of arms), "
        f"at level {ALPHA:g}; per-seed exact McNemar p-values against the yardstick are shown beside it, unadjusted."
        + (f" Every evaluated row's per-episode outcomes are kept in "
           f"`{Path(out_json).with_name(Path(out_json).stem + '-episodes.json')}`." if outcomes_kept else "")
        + "\n\n")


def study_document(study: StudyConfig, worlds: dict, previous: dict | None = None, smoke: bool = False,
                   out_md: Path = DEFAULT_OUT, out_json: Path = DEFAULT_JSON) -> str:
    """The whole page: `worlds` are format-2 summaries (`summary.summarize_world`), `previous` format-1 records."""
    previous = previous or {}
    command = study_command(study, out_md, out_json, smoke)
    parts = ["# The study: learned forecasters vs physics, over seeds, at equal budget\n\n",
             f"Generated by `{command}` (resumable: every stage is cached; `{out_json}` holds each finished world's "
             "record; `--tabulate-only` recomputes this page from it and its episodes file alone).\n\n",
             _design_text(study, out_json, bool(worlds))]
    if previous and not worlds:
        parts.append("No world on this page is measured under this design yet: those below were measured under the "
                     "previous one, and their section says what that means for their figures.\n\n")
    side = [flag for flag, _ in changed_options(study, smoke) if flag in SIDE_STUDY_OPTIONS]
    if side and not smoke:
        parts.append(f"**A side study** ({', '.join(side)} differ from the defaults): the study README quotes, "
                     "with the default settings, is docs/study.md.\n\n")
    shown = {**worlds, **previous}
    missing = [w for w in study.worlds if w not in shown]
    if shown:
        wall = sum(s["minutes"] for s in shown.values())
        before = [f"`{w}`" for w, s in shown.items() if s.get("calls") is None]
        what = ("predates the ledger and gives the call that finished it" if len(before) == 1
                else "predate the ledger and give the call that finished them")
        note = f"; {', '.join(before)} {what}" if before else ""
        parts.append("## Overview\n\nSuccess in % (mean ± sd over the evaluated training seeds). The best arm's "
                     "difference from the best physics rule in points with its 95% interval; better / worse: the "
                     "arms whose verdict against it is significant after Holm's correction over the world's arms"
                     + (" (worlds of the previous design: the selection seed among the evaluated ones and no "
                        "verdicts; see their section)" if previous else "")
                     + ".\n\n" + "\n".join(overview_table(study, worlds, previous)) + "\n\n"
                     f"Measured wall time: {wall:.1f} min ({wall / 60:.2f} h) for {len(shown)} of {len(study.worlds)} "
                     "worlds, each on the machine (and engine) that ran it and summed over every call that worked on the world (an "
                     "interrupted world resumes from its stage cache; its wall ledger keeps the earlier calls' time)"
                     + note + ".\n\n")
    if missing:
        parts.append("Not yet run: " + ", ".join(f"`{w}`" for w in missing) + ".\n\n")
    if worlds:
        parts.append("## Per world\n\n")
        parts += [world_section(w, s) + "\n" for w, s in worlds.items()]
    if previous:
        parts.append(previous_design_section(previous))
    return "".join(parts)


def tabulate(study: StudyConfig, records: dict, episodes: dict, previous: dict | None = None, smoke: bool = False,
             out_md: Path = DEFAULT_OUT, out_json: Path = DEFAULT_JSON) -> str:
    """The document from stored records alone: format-2 `records` with their `episodes` (world → episodes
    record), format-1 records in `previous`."""
    summaries = {w: summarize_world(records[w], episodes[w]) for w in records}
    return study_document(study, summaries, previous, smoke, out_md, out_json)
