"""Markdown tables of evaluation results: one run's results and tests, and several runs side by side.

Tables read the results dicts `hrmlab.evaluate.runner.evaluate` writes (and diffusion runs write in
the same shape); a missing metric shows as "—" instead of failing, since not every planner has
forecasts, oracle paths or timings.
"""

from __future__ import annotations

DASH = "—"
LABELS = {"seconds": "training time (s)", "one_step_mse": "one-step MSE", "ade": "ADE (cells)",
          "fde": "FDE (cells)", "samples": "windows", "epochs_completed": "epochs", "steps": "optimizer steps"}
"""Column headers for the summary keys whose plain names would need explaining."""


def label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return DASH
    return format(value * scale, spec)


def _ci(row: dict) -> str:
    ci = row.get("ci95")
    if not ci or len(ci) != 2:
        return DASH
    return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%"


def markdown_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A pipe table; `align` is one character per column: l (left) or r (right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: dict) -> str:
    """Per forecaster: successes, rate with its 95% Wilson CI, outcomes, path length, forecast error, time."""
    header = ["forecaster", "successes", "rate", "95% CI", "crash", "timeout", "length / oracle",
              "ADE (cells)", "FDE (cells)", "plan ms/step", "forecast ms/step"]
    rows = []
    for name, r in (results.get("results") or {}).items():
        outcomes = r.get("outcomes") or {}
        n = r.get("episodes")
        rows.append([
            f"**{name}**", f"{r.get('successes', DASH)}/{n if n is not None else DASH}",
            _fmt(r.get("success_rate"), ".1f", 100) + ("%" if r.get("success_rate") is not None else ""),
            _ci(r), str(outcomes.get("crash", DASH)), str(outcomes.get("timeout", DASH)),
            _fmt(r.get("path_length_vs_oracle"), ".3f"), _fmt(r.get("forecast_ade"), ".3f"),
            _fmt(r.get("forecast_fde"), ".3f"), _fmt(r.get("plan_ms_per_step"), ".3f"),
            _fmt(r.get("forecast_ms_per_step"), ".3f"),
        ])
    return markdown_table(header, rows)


def pairwise_table(results: dict, alpha: float = 0.05) -> str:
    """Exact McNemar test for every pair: episodes only A solved, only B solved, two-sided p."""
    pairs = results.get("pairwise") or []
    if not pairs:
        return ""
    rows = []
    for p in pairs:
        pv = p.get("p_value")
        verdict = DASH
        if isinstance(pv, (int, float)):
            if pv < alpha:
                winner = p["a"] if p.get("a_only", 0) > p.get("b_only", 0) else p["b"]
                verdict = f"{winner} better"
            else:
                verdict = "no significant difference"
        rows.append([p.get("a", "?"), p.get("b", "?"), str(p.get("a_only", DASH)), str(p.get("b_only", DASH)),
                     _fmt(pv, ".3g"), verdict])
    return markdown_table(["A", "B", "only A succeeded", "only B succeeded", "p (exact McNemar)",
                           f"at α = {alpha} (uncorrected)"], rows, "llrrrl")


def planner_line(results: dict) -> str:
    """One sentence naming the protocol, episode range and planner settings behind a table."""
    ep = results.get("episodes") or {}
    planner = results.get("planner") or {}
    parts = [f"protocol **{results.get('protocol', '?')}**"]
    if ep.get("count") is not None:
        start = ep.get("start", 0)
        parts.append(f"{ep['count']} paired episodes (indices {start}–{start + ep['count'] - 1})")
    if planner:
        parts.append("planner " + ", ".join(f"{k}={v}" for k, v in planner.items()))
    return " · ".join(parts)


def training_table(training: dict) -> str:
    """Per trained model: parameters and whatever scalar summaries the pipeline recorded."""
    rows, keys = [], []
    for info in training.values():
        if isinstance(info, dict):
            keys += [k for k, v in info.items() if k not in keys and k != "metrics" and _scalar(v)]
    if not keys:
        return ""
    for name, info in training.items():
        if isinstance(info, dict):
            rows.append([f"**{name}**"] + [format_number(info.get(k)) for k in keys])
    return markdown_table(["model"] + [label(k) for k in keys], rows)


def _scalar(value) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def format_number(value) -> str:
    """Integers with thousands separators, floats to 4 significant digits, None as —."""
    if isinstance(value, bool) or value is None:
        return DASH if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def comparison_table(runs: list[tuple[str, dict]], protocol: str) -> str:
    """Forecasters as rows, runs as columns: 'rate [CI] (k/n)' on `protocol`, for runs that have it."""
    present = [(label, ev[protocol]) for label, ev in runs if protocol in ev]
    if not present:
        return ""
    names: list[str] = []
    for _, res in present:
        names += [n for n in (res.get("results") or {}) if n not in names]
    rows = []
    for name in names:
        cells = [f"**{name}**"]
        for _, res in present:
            r = (res.get("results") or {}).get(name)
            if not r:
                cells.append(DASH)
                continue
            rate = r.get("success_rate")
            cells.append(f"{_fmt(rate, '.1f', 100)}% [{_ci(r)}] ({r.get('successes', '?')}/{r.get('episodes', '?')})"
                         if rate is not None else DASH)
        rows.append(cells)
    # what makes two columns comparable at all: the same episodes and the same planner
    rows.append(["*episodes (first index)*"] + [f"{(res.get('episodes') or {}).get('count', DASH)} "
                                               f"({(res.get('episodes') or {}).get('start', DASH)})" for _, res in present])
    rows.append(["*planner*"] + [", ".join(f"{k}={v}" for k, v in (res.get("planner") or {}).items()) or DASH
                                 for _, res in present])
    return markdown_table(["forecaster / planner"] + [label for label, _ in present], rows)
