"""Markdown tables of evaluation results: one run's results and tests, and several runs side by side.

Tables read `EvaluationResult`s (every family's evaluations); a metric a row does not have shows as "—",
since not every planner has forecasts, oracle paths or timings.
"""

from __future__ import annotations

from hrmlab.evaluate.result import EvaluationResult, Row

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


def _ci(row: Row) -> str:
    return f"{100 * row.ci95[0]:.1f}–{100 * row.ci95[1]:.1f}%"


def markdown_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A pipe table; `align` is one character per column: l (left) or r (right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: EvaluationResult) -> str:
    """Per row: successes, rate with its 95% Wilson CI, outcomes, path length, forecast error, time."""
    header = ["forecaster", "successes", "rate", "95% CI", "crash", "timeout", "length / oracle",
              "ADE (cells)", "FDE (cells)", "plan ms/step", "forecast ms/step"]
    rows = []
    for name, r in results.rows.items():
        rows.append([
            f"**{name}**", f"{r.successes}/{r.episodes}", _fmt(r.success_rate, ".1f", 100) + "%", _ci(r),
            str(r.outcomes.get("crash", DASH)), str(r.outcomes.get("timeout", DASH)),
            _fmt(r.path_length_vs_oracle, ".3f"), _fmt(r.forecast_ade, ".3f"), _fmt(r.forecast_fde, ".3f"),
            _fmt(r.plan_ms_per_step, ".3f"), _fmt(r.forecast_ms_per_step, ".3f"),
        ])
    return markdown_table(header, rows)


def pairwise_table(results: EvaluationResult, alpha: float = 0.05) -> str:
    """Exact McNemar test for every pair: episodes only A solved, only B solved, two-sided p."""
    if not results.pairwise:
        return ""
    rows = []
    for p in results.pairwise:
        if p.p_value < alpha:
            verdict = f"{p.a if p.a_only > p.b_only else p.b} better"
        else:
            verdict = "no significant difference"
        rows.append([p.a, p.b, str(p.a_only), str(p.b_only), _fmt(p.p_value, ".3g"), verdict])
    return markdown_table(["A", "B", "only A succeeded", "only B succeeded", "p (exact McNemar)",
                           f"at α = {alpha} (uncorrected)"], rows, "llrrrl")


def _episode_range(results: EvaluationResult) -> str:
    start, count = results.episodes.start, results.episodes.count
    return f"{count} paired episodes (indices {start}–{start + count - 1})"


def _planner_settings(results: EvaluationResult) -> str:
    return ", ".join(f"{k}={v}" for k, v in results.planner.items())


def planner_line(results: EvaluationResult) -> str:
    """One sentence naming the protocol, episode range and planner settings behind a table."""
    parts = [f"protocol **{results.protocol}**", _episode_range(results)]
    if results.planner:
        parts.append("planner " + _planner_settings(results))
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


def comparison_table(runs: list[tuple[str, dict[str, EvaluationResult]]], protocol: str) -> str:
    """Forecasters as rows, runs as columns: 'rate [CI] (k/n)' on `protocol`, for runs that have it."""
    present = [(label, ev[protocol]) for label, ev in runs if protocol in ev]
    if not present:
        return ""
    names: list[str] = []
    for _, res in present:
        names += [n for n in res.rows if n not in names]
    rows = []
    for name in names:
        cells = [f"**{name}**"]
        for _, res in present:
            r = res.rows.get(name)
            cells.append(DASH if r is None else
                         f"{_fmt(r.success_rate, '.1f', 100)}% [{_ci(r)}] ({r.successes}/{r.episodes})")
        rows.append(cells)
    # what makes two columns comparable at all: the same episodes and the same planner
    rows.append(["*episodes (first index)*"] + [f"{res.episodes.count} ({res.episodes.start})" for _, res in present])
    rows.append(["*planner*"] + [_planner_settings(res) or DASH for _, res in present])
    return markdown_table(["forecaster / planner"] + [label for label, _ in present], rows)
