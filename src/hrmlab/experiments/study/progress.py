"""A long world's finished work, kept in a small file beside its results so that it resumes on another machine.

The stage cache resumes an interrupted world on the machine that holds it; a world longer than one sitting
(the learning curves: hours of training) must also survive a move to a fresh machine, where the cache is gone.
`Progress` keeps what each finished unit of work produced that the world's record needs (a selection run's
validation loss, a long run's snapshot losses and its evaluated per-episode outcomes, the physics rows), a
few kB per unit, in `<results stem>-progress/<world>.json`, rewritten atomically as each unit finishes; commit
it with the results and a rerun anywhere trains and evaluates only the units it does not hold. Each unit is
stored with the stage key it was produced under, and used only where this code computes the same key. The
file is removed once the world's record is written (the record then holds everything).

Units are recorded as the backend hands results back: a process pool's one by one, in submission order; a
Slurm array's when the whole array has ended (there the shared stage cache is what resumes a cut-off array).
One process writes a world's file: two calls working on the same world at once would drop each other's units.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hrmlab.fileio import write_text_atomic

log = logging.getLogger("hrmlab.study.progress")

PROGRESS_FORMAT = 1


def progress_dir(out_json: Path) -> Path:
    """Where a results file's in-flight worlds keep their progress: docs/scaling.json → docs/scaling-progress/."""
    out_json = Path(out_json)
    return out_json.with_name(out_json.stem + "-progress")


class Progress:
    """World `key`'s finished units in `path` (unit name → {"key": stage key, "value": what it produced}).

    A file written for another world key (other settings) is ignored and overwritten by this world's units; one
    that cannot be read is an error naming it, never silently replaced (it may hold hours of work). path None:
    kept in memory only."""

    def __init__(self, path: Path | None, key: str):
        self.path, self.key = (Path(path) if path is not None else None), key
        self.units: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            from hrmlab.errors import UserError

            try:
                data = json.loads(self.path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UserError(f"{self.path} is not a progress file ({exc}); move it aside to start the world "
                                "afresh") from None
            units = data.get("units") if isinstance(data, dict) else None
            if not isinstance(units, dict) or data.get("format") != PROGRESS_FORMAT or not all(
                    isinstance(e, dict) and isinstance(e.get("key"), str) and "value" in e for e in units.values()):
                raise UserError(f"{self.path} is not a progress file of format {PROGRESS_FORMAT} (another version's, "
                                "or damaged); move it aside to start the world afresh")
            if data.get("key") == key:
                self.units = units
                log.info("%s: %d finished units of this world", self.path, len(units))

    def get(self, unit: str, key: str):
        """What `unit` produced under stage `key`, or None (not finished, or produced under another key)."""
        entry = self.units.get(unit)
        return entry["value"] if entry is not None and entry.get("key") == key else None

    def put(self, unit: str, key: str, value) -> None:
        """Record a finished unit and rewrite the file (one line per unit, so it diffs by unit)."""
        self.units[unit] = {"key": key, "value": value}
        if self.path is None:
            return
        lines = ["{", f' "format": {PROGRESS_FORMAT},', f' "key": {json.dumps(self.key)},', ' "units": {']
        items = list(self.units.items())
        lines += [f"  {json.dumps(name)}: {json.dumps(entry, separators=(',', ':'))}" + ("," if i < len(items) - 1 else "")
                  for i, (name, entry) in enumerate(items)]
        write_text_atomic(self.path, "\n".join(lines + [" }", "}"]) + "\n")

    def remove(self) -> None:
        """The world is finished: its record holds everything, the progress file goes (and its folder if empty)."""
        if self.path is None:
            return
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass

    def remove_if_held(self) -> None:
        """Remove the file if it holds this world's units (a world finished elsewhere leaves no progress behind)."""
        if self.units:
            self.remove()


PORTABLE_FIELDS = ("key", "best_val_loss", "seconds", "earlier_seconds", "resumed_from_step", "parameters", "rows",
                   "eval_seconds")
"""What a world's record uses of a training task's result (its stage summary plus evaluated rows)."""


def portable(summary: dict) -> dict:
    """A training task's result as a unit keeps it: `PORTABLE_FIELDS` and the snapshots' step, loss and time —
    nothing of this machine (no checkpoint paths) — or that it diverged."""
    if "diverged" in summary:
        return {"diverged": summary["diverged"], "best_val_loss": None}
    out = {k: summary[k] for k in PORTABLE_FIELDS if summary.get(k) is not None}
    if "snapshots" in summary:
        out["snapshots"] = [{k: s.get(k) for k in ("step", "val_loss", "seconds")} for s in summary["snapshots"]]
    return out


def run_units(progress: Progress, tasks: list[tuple], run) -> dict:
    """{item: value} for tasks (item, unit, key, job): the value `progress` holds for the unit under `key`, else
    the job's result — `run(jobs)` yields (job, result) as each finishes — made `portable` and recorded as it
    comes back (an interruption loses only the unfinished jobs)."""
    out, pending = {}, {}
    for item, unit, key, job in tasks:
        stored = progress.get(unit, key)
        if stored is not None:
            out[item] = stored
        else:
            pending[id(job)] = (item, unit, key, job)
    if out:
        log.info("%d of %d runs come from the progress file", len(out), len(tasks))
    for job, result in run([task[3] for task in pending.values()]):
        item, unit, key, _ = pending[id(job)]
        out[item] = portable(result)
        progress.put(unit, key, out[item])
        spent = (out[item].get("seconds") or 0) + (out[item].get("eval_seconds") or 0)
        log.info("%s %s (%d of %d runs done)", unit,
                 "diverged" if "diverged" in out[item] else f"finished in {spent / 60:.1f} min", len(out), len(tasks))
    return out
