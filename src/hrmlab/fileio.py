"""Atomic file writes, file checksums and file locks: the one implementation every stage, cache and report uses.

A write goes to a temporary file in the same directory, is flushed to disk, and is moved into place
with `os.replace`: a killed process leaves either the whole new file or the old one, never half a file.
A checksum record (`file_record`: size and sha256) is what a manifest or a stage's done marker keeps of a
file, and `file_matches` checks a file against it. `file_lock` keeps two processes from building the same
thing at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, data, indent: int = 2) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=indent)
        fh.write("\n")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | Path) -> dict:
    """What a manifest or done marker keeps of a file: {"bytes", "sha256"}."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def file_matches(path: str | Path, record: dict | None) -> tuple[bool, str]:
    """Whether `path` is the file `record` describes (size, then sha256); the reason when it is not."""
    path = Path(path)
    if record is None or not record.get("sha256"):
        return False, "no checksum recorded"
    if not path.exists():
        return False, "missing"
    size = path.stat().st_size
    if size != record["bytes"]:
        return False, f"size {size} bytes, expected {record['bytes']} (truncated or overwritten)"
    if sha256_file(path) != record["sha256"]:
        return False, "sha256 mismatch (corrupted)"
    return True, ""


@contextlib.contextmanager
def file_lock(path: str | Path):
    """Exclusive lock on lock file `path` (created): a second holder waits, so two processes never build
    the same dataset or stage at once. On a filesystem without locks (some network volumes) it goes on
    unlocked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process holding %s", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:
            log.debug("no lock on %s (%s)", path, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
