"""The one stage cache: how every stage of every family stores, finds, checks and redoes its output.

A stage's output is a JSON document at a path named by its key — the hash of exactly the settings that
produce it plus the stage's format version (`stage_key`), so a changed setting or a changed output layout
never reuses an old file. The document is written atomically (`fileio`); then a done marker beside it
(`<document>.done`) records the key and the size and sha256 of the document and of every file the stage
names (its checkpoints). A stage is finished only when its marker says so and every checksum matches.

`cached(stage, compute, parse)` returns the finished output, or computes it under the stage's lock (two
processes never build one stage at once). A cached output that fails a check — its marker, a checksum,
unreadable JSON, the caller's `parse` — is logged, its files (and the stage's folder, for a training
stage) are removed, and the stage is redone: never a traceback, never a silent reuse. An interrupted
stage (no marker yet) keeps its folder, so training resumes from its last checkpoint.
Data stages are shard stores with the same guarantees per shard (`data/shards.py`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from hrmlab.config import config_hash
from hrmlab.errors import UserError
from hrmlab.fileio import file_lock, file_matches, file_record, write_json_atomic

log = logging.getLogger("hrmlab.stage")

T = TypeVar("T")

CACHE_ENV = "HRMLAB_CACHE"
"""The environment variable naming the cache folder of every command (`--cache` wins over it)."""


def default_cache() -> Path:
    """Where stages are cached when no `--cache` is given: $HRMLAB_CACHE, else .hrmlab_cache here."""
    return Path(os.environ.get(CACHE_ENV, ".hrmlab_cache"))

MARKER_SUFFIX = ".done"
LOCK_SUFFIX = ".lock"


class StageCorrupt(Exception):
    """A cached stage output failed a check; the stage is redone."""


def stage_key(fields: dict, format: int) -> str:
    """The cache key of a stage: `fields` (exactly what changes its output) and its format version."""
    return config_hash({"format": format, **fields})


@dataclass(frozen=True)
class Stage:
    """Where one stage's output lives and how it is named in log lines (`stage <label>: cached`)."""

    label: str
    document: Path
    """The stage's JSON output."""
    key: str
    folder: Path | None = None
    """A folder the stage owns (training): kept while unfinished, removed with a corrupt output."""

    @property
    def marker(self) -> Path:
        return self.document.with_name(self.document.name + MARKER_SUFFIX)

    def _path(self, name: str) -> Path:
        return Path(name) if Path(name).is_absolute() else self.document.parent / name

    def read(self, parse: Callable[[dict], T]) -> T | None:
        """The finished, intact output through `parse`; None when the stage is to be (re)done."""
        if not self.marker.exists():
            if self.document.exists():
                log.warning("stage %s: %s has no done marker (unfinished or of an older format); redoing",
                            self.label, self.document)
            return None
        try:
            marker = json.loads(self.marker.read_text())
            if not isinstance(marker, dict) or marker.get("key") != self.key:
                raise StageCorrupt(f"its done marker {self.marker} belongs to another key")
            for name, record in {self.document.name: marker.get("document"), **marker.get("files", {})}.items():
                ok, reason = file_matches(self._path(name), record)
                if not ok:
                    raise StageCorrupt(f"{self._path(name)}: {reason}")
            return parse(json.loads(self.document.read_text()))
        except (StageCorrupt, OSError, ValueError, KeyError, TypeError, AttributeError, UserError) as exc:
            log.warning("stage %s: cached output is corrupt or unreadable (%s); redoing", self.label, exc)
            self.clear()
            return None

    def write(self, payload: dict, files: Iterable = ()) -> None:
        """Write the output document, then the done marker with the checksums of it and of `files`."""
        write_json_atomic(self.document, payload)
        named = {}
        for f in files:
            rel = os.path.relpath(Path(f).resolve(), self.document.parent.resolve())
            named[Path(f).resolve().as_posix() if rel.startswith("..") else rel] = file_record(f)
        write_json_atomic(self.marker, {"key": self.key, "document": file_record(self.document), "files": named})

    def clear(self) -> None:
        """Remove the stage's output, marker and folder: the next run starts it over."""
        self.marker.unlink(missing_ok=True)
        self.document.unlink(missing_ok=True)
        if self.folder is not None and self.folder.is_dir():
            shutil.rmtree(self.folder)


def _identity(doc: dict):
    return doc


def _no_files(doc: dict) -> list:
    return []


def cached(stage: Stage, compute: Callable[[], dict], parse: Callable[[dict], T] = _identity,
           files: Callable[[dict], Iterable] = _no_files) -> T:
    """The stage's output: the cached one when finished and intact, else `compute()` (a JSON-able dict,
    stored with the checksums of `files(doc)`). Either way it comes back through `parse`, so a fresh and a
    cached output are the same type."""
    found = stage.read(parse)
    if found is not None:
        log.info("stage %s: cached (%s)", stage.label, stage.document)
        return found
    with file_lock(stage.document.with_name(stage.document.name + LOCK_SUFFIX)):
        # another process may have finished it while this one waited for the lock
        found = stage.read(parse) if stage.marker.exists() else None
        if found is not None:
            log.info("stage %s: cached (%s)", stage.label, stage.document)
            return found
        t0 = time.perf_counter()
        doc = compute()
        stage.write(doc, files(doc))
    log.info("stage %s: done in %.1fs (%s)", stage.label, time.perf_counter() - t0, stage.document)
    return parse(doc)
