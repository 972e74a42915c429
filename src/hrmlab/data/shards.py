"""On-disk storage of a dataset: atomic shard files, a JSON manifest, checksums, and the merge.

A dataset directory `cache_root/data/<key>/` holds

    manifest.json         key, full config, layout, one record per shard and per merged split
    shards/<name>.npy     one file per shard (removed after a successful merge unless kept)
    train.npy, val.npy    merged, memory-mappable arrays (one per split)
    DONE                  written last: the only sign that the dataset is finished

Every file is written under a temporary name and moved into place with `os.replace`, so a killed run
leaves either a whole file or nothing at the final name. Checksums (sha256) recorded in the manifest catch
files that were truncated or corrupted later; the caller regenerates what fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from hrmlab.fileio import atomic_open, sha256_file  # noqa: F401  (sha256_file: re-exported for callers)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DONE = "DONE"
SHARD_DIR = "shards"
_BLOCK_BYTES = 8 << 20


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def write_npy_atomic(path: Path, array: np.ndarray) -> dict:
    """Write `array` as .npy at `path` atomically; returns {"bytes", "sha256"} of the file."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    header = _npy_header(array.shape, array.dtype)
    payload = memoryview(array).cast("B")
    digest = hashlib.sha256(header)
    digest.update(payload)
    with atomic_open(path, "wb") as fh:  # a unique temporary name per writer: an orphaned worker of a
        fh.write(header)                 # killed run cannot clobber a new run's file
        fh.write(payload)
    return {"bytes": len(header) + payload.nbytes, "sha256": digest.hexdigest()}


def read_manifest(root: Path) -> dict | None:
    """The manifest of dataset directory `root`, or None if missing or unreadable (a new run starts over)."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable manifest %s (%s); the dataset is rebuilt", path, exc)
        return None


def remove_stale_temp_files(root: Path) -> None:
    """Delete temporary files left by a killed run (never at a final name, so never mistaken for data)."""
    for folder in (Path(root), Path(root) / SHARD_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp-*"):
                tmp.unlink(missing_ok=True)


def file_matches(path: Path, record: dict | None) -> tuple[bool, str]:
    """Whether `path` is the file `record` describes (size, then sha256); the reason when it is not."""
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
def directory_lock(root: Path):
    """Exclusive lock on a dataset directory: two collectors of the same dataset never interleave."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process collecting %s", root)
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:  # a filesystem without locks (some network volumes): go on unlocked
            log.debug("no lock on %s (%s)", root, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ShardCorrupted(Exception):
    """A shard changed between its verification and the merge; the caller regenerates it."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"shard {name}: {reason}")
        self.name = name


def merge_shards(shard_files: Iterable[tuple[Path, dict]], out_path: Path, shape: tuple[int, ...],
                 dtype=np.float32, progress: bool = True, desc: str = "merge") -> dict:
    """Concatenate shard .npy files (in order, along axis 0) into one .npy at `out_path`, atomically.

    Streams one shard at a time (memory ≈ one shard), re-checks each shard's sha256 on the bytes it copies
    (raises ShardCorrupted on a mismatch) and returns {"bytes", "sha256"} of the merged file.
    """
    shard_files = list(shard_files)
    out_path = Path(out_path)
    header = _npy_header(shape, dtype)
    digest = hashlib.sha256(header)
    rows = 0
    total = sum(rec["bytes"] for _, rec in shard_files)
    with atomic_open(out_path, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=desc,
                                                  disable=not progress, leave=False) as bar:
        out.write(header)
        for path, record in shard_files:
            blob = Path(path).read_bytes()
            if len(blob) != record["bytes"] or hashlib.sha256(blob).hexdigest() != record["sha256"]:
                raise ShardCorrupted(record["name"], "changed since it was verified")
            stream = io.BytesIO(blob)
            np.lib.format.read_magic(stream)
            part_shape, fortran, part_dtype = np.lib.format.read_array_header_1_0(stream)
            if fortran or part_dtype != np.dtype(dtype) or part_shape[1:] != tuple(shape[1:]):
                raise ShardCorrupted(record["name"], f"unexpected array {part_shape} {part_dtype}")
            payload = memoryview(blob)[stream.tell():]
            out.write(payload)
            digest.update(payload)
            rows += part_shape[0]
            bar.update(len(blob))
        if rows != shape[0]:
            raise ValueError(f"shards hold {rows} rows, expected {shape[0]}")
    return {"bytes": out_path.stat().st_size, "sha256": digest.hexdigest()}
