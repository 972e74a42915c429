"""docs/scaling.md and its plots from the learning-curve records (budgets.py): per world, success and forecast ADE
against training FLOPs and wall seconds, one line per arm with its seed band, the oracle and the best physics rule as
horizontal lines; rate differences carrying seed and episode uncertainty (hrmlab.evaluate.stats, Holm-corrected per
family, as the study's: summary.py); and the answer in one paragraph per world. Every figure and word is computed from
the results and episodes files, so `--tabulate-only` recomputes the page (and the PNGs) with no cache.

Comparisons of one arm at two budgets use the same trained copies (a budget is a snapshot of the same run); the
bootstrap treats them as independent seed samples, which ignores that pairing: conservative, never flattering.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import numpy as np

from hrmlab.evaluate.stats import compare_family
from hrmlab.experiments.study.summary import ALPHA, BOOTSTRAP_SEED, REPLICATES, successes, yardstick

REACH = 0.95
"""The success rate the answer asks about (the issue's ≥ 95%)."""
PFLOP = 1e15


# ------------------------------------------------------------------------------------------ figures
def summarize_curves(record: dict, episodes: dict) -> dict:
    """A world's curves: per arm and budget the seeds' success rates and ADE (mean, sd, band), FLOPs, wall seconds;
    Holm families: every point against the best physics rule, every point against its arm's first budget, every
    pair of the main arms at the first and at the last budget, and the capacity point."""
    n = record["episodes"]
    physics = {name: {"successes": int(successes(episodes, name).sum()), "episodes": n,
                      "rate": float(successes(episodes, name).mean()), "ade": row.get("ade")}
               for name, row in record["physics"].items()}
    yard = yardstick(physics)
    arms, outcome = {}, {}
    for name, arm in record["arms"].items():
        runs = arm["runs"]
        budgets = sorted(int(b) for b in next(iter(runs.values()))["points"])
        points = {}
        for b in budgets:
            outcome[(name, b)] = np.vstack([successes(episodes, f"{lab}@b{b}") for lab in runs])
            rates = outcome[(name, b)].mean(axis=1)
            got = [run["points"][str(b)] for run in runs.values()]
            ades = [p["ade"] for p in got if p.get("ade") is not None]
            secs = [p["seconds"] for p in got]
            points[b] = {"step": got[0]["step"], "flops": got[0]["step"] * arm["flops_per_step"],
                         "mean": float(rates.mean()), "sd": _sd(rates), "low": float(rates.min()),
                         "high": float(rates.max()), "rates": [float(r) for r in rates],
                         "ade": _mean(ades), "ade_sd": _sd(ades), "ade_low": min(ades, default=None),
                         "ade_high": max(ades, default=None),
                         "seconds": None if None in secs else statistics.fmean(secs),
                         "val_loss": _mean([p["val_loss"] for p in got if p.get("val_loss") is not None])}
        arms[name] = {"model": arm["model"], "rollout": arm["rollout"], "width": arm.get("width", 1),
                      "base": arm.get("base"), "lr": arm["lr"], "selection": arm["selection"], "budgets": budgets,
                      "points": points, "steps_per_budget": arm["steps_per_budget"],
                      "flops_per_step": arm["flops_per_step"], "batch_size": arm.get("batch_size"),
                      "parameters": next(iter(runs.values())).get("parameters"), "seeds": len(runs)}
    family = dict(alpha=ALPHA, replicates=REPLICATES, seed=BOOTSTRAP_SEED)
    out = {key: record.get(key) for key in ("preset", "protocol", "machine", "backend", "minutes", "calls",
                                            "compute_minutes", "command", "budgets", "snapshot_ema", "selection_seeds", "seeds")}
    out.update(episodes=n, physics=physics, yardstick=yard, arms=arms, vs_yardstick={}, vs_first={}, ranking={},
               capacity=None)
    if yard is not None:
        y = successes(episodes, yard)
        out["vs_yardstick"] = compare_family({key: (m, y) for key, m in outcome.items()}, **family)
    out["vs_first"] = compare_family({(name, b): (outcome[(name, b)], outcome[(name, a["budgets"][0])])
                                      for name, a in arms.items() for b in a["budgets"][1:]}, **family)
    main = [name for name, a in arms.items() if not a["base"]]
    budgets = record["budgets"]
    for b in dict.fromkeys([budgets[0], budgets[-1]]):
        out["ranking"][b] = compare_family({(a, c): (outcome[(a, b)], outcome[(c, b)])
                                            for a, c in itertools.combinations(main, 2)}, **family)
    cap = record.get("capacity")
    if cap:
        wide, of, b = cap["arm"], cap["of"], cap["budget"]
        pairs = {"same budget": (outcome[(wide, b)], outcome[(of, b)])}
        if b != budgets[-1]:  # the narrow arm's longest training: similar FLOPs at width ×2, budget ≈ last / 4
            pairs["largest budget"] = (outcome[(wide, b)], outcome[(of, budgets[-1])])
        tests = compare_family(pairs, **family)
        out["capacity"] = {**cap, "tests": tests}
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _sd(values) -> float:
    values = [float(v) for v in values]
    return statistics.stdev(values) if len(values) > 1 else 0.0


# ------------------------------------------------------------------------------------------ the answer
def answer(world: str, s: dict) -> str:
    """One paragraph, generated: does any arm reach REACH and at what budget; which main arm improves fastest per
    FLOP; does the ranking at the first budget hold at the last."""
    arms, budgets = s["arms"], s["budgets"]
    first, last = budgets[0], budgets[-1]
    oracle = s["physics"].get("oracle")
    yard = s["yardstick"]
    ref = (f"the oracle {_pct(oracle['rate'])}%" if oracle else "no oracle row") + (
        f", the best physics rule ({yard}) {_pct(s['physics'][yard]['rate'])}%" if yard else "")
    reached = {name: min(b for b in a["budgets"] if a["points"][b]["mean"] >= REACH)
               for name, a in arms.items() if any(a["points"][b]["mean"] >= REACH for b in a["budgets"])}
    if reached:
        first_text = "; ".join(f"{name} reaches {REACH:.0%} at budget {b} ({_pct(arms[name]['points'][b]['mean'])}% "
                               f"± {_pct(arms[name]['points'][b]['sd'])})" for name, b in reached.items())
        parts = [f"In `{world}`, {first_text} ({ref})."]
    else:
        name, b = max(((n, b) for n, a in arms.items() for b in a["budgets"]),
                      key=lambda nb: arms[nb[0]]["points"][nb[1]]["mean"])
        p = arms[name]["points"][b]
        parts = [f"In `{world}` no model reaches {REACH:.0%} success at any budget up to {last}: the best point is "
                 f"{name} at budget {b}, {_pct(p['mean'])}% ± {_pct(p['sd'])} over {arms[name]['seeds']} seeds "
                 f"({ref})."]
    main = [n for n, a in arms.items() if not a["base"]]
    if last != first and main:
        rate = {n: (arms[n]["points"][last]["mean"] - arms[n]["points"][first]["mean"])
                / max(arms[n]["points"][last]["flops"] - arms[n]["points"][first]["flops"], 1) * PFLOP for n in main}
        best = max(main, key=rate.get)
        test = s["vs_first"].get((best, last))
        gains = ", ".join(f"{n} {_points(arms[n]['points'][last]['mean'] - arms[n]['points'][first]['mean'])}"
                          for n in main)
        detail = (f" ({100 * rate[best]:+.3g} points per 10¹⁵ training FLOPs; {_diff(test)} against budget "
                  f"{first}, {test['verdict']}, Holm p = {test['p_adjusted']:.2g})")
        parts.append(f"From budget {first} to {last} success changes by {gains} points; "
                     + (f"{best} improves fastest per FLOP{detail}." if rate[best] > 0
                        else f"no model improves (the least loss per FLOP: {best}{detail})."))
        order = {b: sorted(main, key=lambda n: -arms[n]["points"][b]["mean"]) for b in (first, last)}
        sig = [f"{a} {t['verdict']} than {c}" if t["verdict"] != "no significant difference" else None
               for (a, c), t in s["ranking"].get(last, {}).items()]
        sig = [x for x in sig if x]
        holds = order[first] == order[last]
        parts.append(f"The ranking at budget {first} ({' > '.join(order[first])}) "
                     + ("holds" if holds else "does not hold") + f" at budget {last} ({' > '.join(order[last])}); "
                     + (f"significant at budget {last} (Holm): {'; '.join(sig)}." if sig else
                        f"no pair differs significantly at budget {last} (Holm)."))
    cap = s.get("capacity")
    if cap:
        same, largest = cap["tests"]["same budget"], cap["tests"].get("largest budget")
        wide = arms[cap["arm"]]["points"][cap["budget"]]
        ratio = wide["flops"] / arms[cap["of"]]["points"][last]["flops"]
        text = (f"Width ×{cap['width']} for {cap['of']} at budget {cap['budget']}: {_pct(wide['mean'])}%, "
                f"{_diff(same)} against width ×1 at the same budget ({same['verdict']}, Holm)")
        if largest:
            text += (f" and {_diff(largest)} against width ×1 at budget {last} ({largest['verdict']}; "
                     f"{ratio:.2f}× its training FLOPs)")
        parts.append(text + ".")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ plots
def plot_curves(world: str, s: dict, out_md: Path) -> list[Path]:
    """Two PNGs beside the document: success and forecast ADE against training FLOPs, and against training wall
    seconds; one line per arm (mean over seeds, band from the worst to the best seed; the capacity point dashed in
    its arm's colour), the oracle and the best physics rule as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from hrmlab.report.plots import DPI, forecaster_colors

    stem = Path(out_md).with_suffix("")
    paths = []
    names = [n for n, a in s["arms"].items() if not a["base"]]
    colors = forecaster_colors(names + [n for n in (s["yardstick"], "oracle") if n])
    for x_key, suffix, xlabel in (("flops", "", "training FLOPs (log scale)"),
                                  ("seconds", "-wall", "training wall seconds per run (log scale)")):
        fig, (ax_s, ax_a) = plt.subplots(1, 2, figsize=(11.5, 4.4))
        for name, arm in s["arms"].items():
            pts = [arm["points"][b] for b in arm["budgets"] if arm["points"][b][x_key] is not None]
            if not pts:
                continue
            x = [p[x_key] for p in pts]
            style = dict(color=colors[arm["base"] or name], linestyle="--" if arm["base"] else "-",
                         marker="s" if arm["base"] else "o")
            ax_s.plot(x, [100 * p["mean"] for p in pts], label=f"{name} ({arm['seeds']} seeds)", **style)
            ax_s.fill_between(x, [100 * p["low"] for p in pts], [100 * p["high"] for p in pts],
                              color=style["color"], alpha=0.15, linewidth=0)
            ade = [p for p in pts if p["ade"] is not None]
            if ade:
                ax_a.plot([p[x_key] for p in ade], [p["ade"] for p in ade], label=name, **style)
                ax_a.fill_between([p[x_key] for p in ade], [p["ade_low"] for p in ade], [p["ade_high"] for p in ade],
                                  color=style["color"], alpha=0.15, linewidth=0)
        for rule, ls in (("oracle", ":"), (s["yardstick"], "-.")):
            row = s["physics"].get(rule) if rule else None
            if row is None:
                continue
            tag = "oracle" if rule == "oracle" else f"best physics rule ({rule})"
            ax_s.axhline(100 * row["rate"], color=colors[rule], linestyle=ls, label=tag)
            if row.get("ade") is not None:
                ax_a.axhline(row["ade"], color=colors[rule], linestyle=ls, label=tag)
        for ax, ylabel in ((ax_s, "closed-loop success (%)"), (ax_a, "forecast ADE (cells)")):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        ax_s.set_title(f"{world}: success, {s['episodes']} test episodes")
        ax_a.set_title(f"{world}: forecast error in the closed loop")
        ax_s.legend(fontsize=7, loc="best")
        path = Path(f"{stem}-{world}{suffix}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------ the document
def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _diff(t: dict) -> str:
    return f"{_points(t['estimate'])} [{_points(t['low'])}, {_points(t['high'])}]"


def _test(t: dict | None) -> str:
    return "—" if t is None else f"{_diff(t)}, {t['verdict']} (p = {t['p_adjusted']:.2g})"


def _flops(x: float) -> str:
    return f"{x:.3g}"


def world_section(world: str, s: dict, out_md: Path) -> list[str]:
    yard = s["yardstick"]
    engine = f" ({s['backend']})" if s.get("backend") else ""
    lines = [f"## `{world}` (protocol `{s['protocol']}`, {s['episodes']} test episodes, budgets "
             f"{', '.join(map(str, s['budgets']))}; {s.get('minutes')} min wall time on {s.get('machine')}{engine}, "
             f"{s.get('compute_minutes')} compute-minutes)", ""]
    stem = Path(out_md).with_suffix("").name
    lines += [f"![success and ADE against training FLOPs]({stem}-{world}.png)",
              f"![success and ADE against training wall seconds]({stem}-{world}-wall.png)", ""]
    lines += [f"Produced by `{s.get('command')}`.", ""] if s.get("command") else []
    lines += ["| arm | budget | steps | training FLOPs | wall s | success % (mean ± sd; seeds) | "
              f"forecast ADE (cells) | − {yard or 'best physics'} [95% CI], verdict (Holm p) | − budget {s['budgets'][0]} [95% CI], "
              "verdict (Holm p) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, a in s["arms"].items():
        for b in a["budgets"]:
            p = a["points"][b]
            rates = ", ".join(_pct(r) for r in p["rates"])
            ade = "—" if p["ade"] is None else f"{p['ade']:.2f} ± {p['ade_sd']:.2f}"
            secs = "—" if p["seconds"] is None else f"{p['seconds']:.0f}"
            lines.append(f"| {name} | {b} | {p['step']:,} | {_flops(p['flops'])} | {secs} | {_pct(p['mean'])} ± "
                         f"{_pct(p['sd'])} ({rates}) | {ade} | {_test(s['vs_yardstick'].get((name, b)))} | "
                         f"{_test(s['vs_first'].get((name, b)))} |")
    phys = ", ".join(f"{n} {_pct(r['rate'])}%" + ("" if r.get("ade") is None else f" (ADE {r['ade']:.2f})")
                     for n, r in s["physics"].items())
    lines += ["", f"Physics rules on the same episodes: {phys}. Yardstick: the best rule other than the oracle "
                  f"({yard}).", ""]
    for b, tests in s["ranking"].items():
        if tests:
            lines.append(f"Every pair of arms at budget {b} (Holm over the pairs): "
                         + "; ".join(f"{x} − {y} {_test(t)}" for (x, y), t in tests.items()) + ".")
    lines.append("")
    lines.append("| arm | model | roll-out | width | parameters | batch | steps per budget | FLOPs per step | "
                 "rate (chosen on budget-1 validation loss) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for name, a in s["arms"].items():
        sel = ", ".join(f"{lr}: " + ("diverged" if any(v is None for v in vals) else f"{statistics.fmean(vals):.3g}")
                        for lr, vals in a["selection"]["val_loss"].items())
        params = "—" if a["parameters"] is None else f"{a['parameters']:,}"
        lines.append(f"| {name} | {a['model']} | {a['rollout']} | ×{a['width']} | {params} | {a['batch_size']} | "
                     f"{a['steps_per_budget']:,} | {_flops(a['flops_per_step'])} | {a['lr']:g} ({sel}) |")
    return lines + [""]


def document(worlds: dict, out_md: Path, out_json: Path) -> str:
    ema = next((s.get("snapshot_ema") for s in worlds.values()), None)
    lines = ["# Learning curves: does more training close the gap?", ""]
    lines += [answer(world, s) for world, s in worlds.items()] or ["No world measured yet."]
    lines += ["", "## How it was measured", "",
              "A budget b is b × S optimiser steps, S the optimiser steps of the study's equal recipe in the world "
              "(one pass over its training data at batch 512 in the suites); data are held, so budget b passes b "
              "times over the same training set, each epoch in its own seeded order. One run per arm and seed trains "
              "to the largest budget at a constant learning rate and writes a snapshot at every budget: with a "
              "constant rate its first b·S steps are exactly a run trained to budget b alone (tests/test_budgets.py "
              "checks budget 1 parameter for parameter). Every budget point, arm and seed is evaluated with the "
              f"same weights: an exponential moving average of the weights (decay {ema}) at the snapshot's step. "
              "Each arm's rate is chosen at budget 1 on that average's validation loss by selection seeds that are "
              "never evaluated (the grid extended at an edge, as in docs/study.md); the evaluated seeds train fresh. "
              "The capacity point doubles the width of the arm with the best mean success at its budget and selects "
              "its own rate the same way.", "",
              "Training FLOPs = budget × S × the FLOPs of one training step (forward and backward of one batch, deep "
              "supervision included), counted by torch.utils.flop_counter.FlopCounterMode on the model and a batch "
              "of the world's data: matrix products, convolutions and attention; element-wise work, validation and "
              "the optimiser are not counted. Wall seconds: the training loop's time to reach the snapshot's step "
              "(mean over seeds; one torch thread per run, compilation included). Success: closed-loop planning "
              "success on the same test episodes for every row; ADE: the forecast's mean displacement error in "
              "the closed loop.", "",
              "Differences: success rate of an arm averaged over its seeds minus the other's, with a 95% interval "
              "from a paired bootstrap over the episodes plus a t-distributed seed term (hrmlab.evaluate.stats), "
              "verdicts from Holm-adjusted p-values within each family: every point against the best physics rule; "
              "every point against its arm's first budget (the same trained copies, treated as independent seed "
              "samples: conservative); every pair of arms at the first and at the last budget; the capacity point.",
              "",
              f"Regenerate the page and its plots from `{Path(out_json).name}` and "
              f"`{Path(out_json).stem}-episodes.json` alone: `hrmlab study --budgets 1 --tabulate-only"
              + (f" --out {out_md}" if Path(out_md) != Path("docs/scaling.md") else "") + "`; each world's section "
              "names the command that measured it.", ""]
    for world, s in worlds.items():
        lines += world_section(world, s, out_md)
    return "\n".join(lines).rstrip() + "\n"


def write_document(records: dict, episodes: dict, out_md: Path, out_json: Path) -> str:
    """Summarise every stored world, write the document and each world's plots; returns the document."""
    worlds = {world: summarize_curves(record, episodes[world]) for world, record in records.items()}
    text = document(worlds, out_md, out_json)
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    for world, s in worlds.items():
        plot_curves(world, s, out_md)
    Path(out_md).write_text(text)
    return text
