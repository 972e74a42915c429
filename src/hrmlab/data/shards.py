"""On-disk storage of a dataset: atomic shard files, a JSON manifest, checksums, and the merge.

A dataset directory `cache_root/data/<key>/` holds

    manifest.json         key, full config, layout, one record per shard and per merged split
    shards/<name>.npy     one file per shard (removed after a successful merge unless kept)
    train.npy, val.npy    merged, memory-mappable arrays (one per split)
    DONE                  written last: the only sign that the dataset is finished

Every file is written under a temporary name and moved into place with `os.replace`, so a killed run
leaves either a whole file or nothing at the final name. Checksums (sha256) recorded in the manifest catch
files that were truncated or corrupted later; the caller regenerates what fails.

`build_shard_set` / `load_shard_set` are the same store for a set of named arrays per shard (the diffusion
families' expert data): made through `backend.map`, under the directory lock, resumable, verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from hrmlab.errors import UserError
from hrmlab.fileio import atomic_open, file_lock, file_matches, sha256_file, write_json_atomic  # noqa: F401
from hrmlab.progress import make_progress

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
            for pattern in (".*.tmp", ".*.tmp-*"):  # fileio.atomic_open's temporary names, and older ones
                for tmp in folder.glob(pattern):
                    tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def directory_lock(root: Path):
    """Exclusive lock on a dataset directory: two collectors of the same dataset never interleave."""
    with file_lock(Path(root) / ".lock"):
        yield


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


# ---------------------------------------------------------------------------------- sets of array shards
def _shard_intact(root: Path, record: dict | None, arrays: tuple[str, ...]) -> bool:
    return record is not None and all(file_matches(root / SHARD_DIR / record[a]["file"], record[a])[0]
                                      if a in record else False for a in arrays)


def build_shard_set(root: Path, key: str, config: dict, tasks: dict[int, dict], worker, arrays: tuple[str, ...],
                    backend, progress: bool = True, desc: str = "shards") -> dict:
    """Make, finish or verify the shard set `key` in `root` under its lock; returns the finished manifest.

    tasks: shard number → picklable backend task; `worker(task)` returns the shard's arrays (named in
    `arrays`) and its "shard" number. Each array is one atomic .npy (`shards/shard-NNNNN-<array>.npy`) with
    its size and sha256 in the manifest, written as results arrive; a shard with a missing or corrupt file
    is made again, the rest kept; DONE is written last. A manifest of another key starts the set over."""
    root = Path(root)
    with directory_lock(root):
        remove_stale_temp_files(root)
        manifest = read_manifest(root)
        if manifest is None or manifest.get("key") != key:
            manifest = {"key": key, "config": config, "shards": {}}
            (root / DONE).unlink(missing_ok=True)
        todo = [task for s, task in tasks.items() if not _shard_intact(root, manifest["shards"].get(str(s)), arrays)]
        if not todo and (root / DONE).exists():
            return manifest
        (root / DONE).unlink(missing_ok=True)
        (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        if todo:
            log.info("%s %s: %d of %d shards to make", desc, key, len(todo), len(tasks))
        bar = make_progress(len(todo), desc, bar=progress, unit="shards")
        for result in backend.map(worker, todo):
            s = result.pop("shard")
            record = {}
            for name in arrays:
                file = f"shard-{s:05d}-{name}.npy"
                record[name] = {"file": file, "name": f"{s}/{name}",
                                **write_npy_atomic(root / SHARD_DIR / file, result[name])}
            manifest["shards"][str(s)] = record
            write_json_atomic(root / MANIFEST, manifest)
            bar.update(1)
        bar.close()
        manifest["rows"] = int(sum(np.load(root / SHARD_DIR / manifest["shards"][str(s)][arrays[0]]["file"],
                                           mmap_mode="r").shape[0] for s in tasks))
        write_json_atomic(root / MANIFEST, manifest)
        (root / DONE).write_text(key + "\n")
    return manifest


def load_shard_set(root: Path, arrays: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """Every array of a finished shard set, concatenated in shard order, each file checked against its
    checksum; an incomplete or corrupt set is a UserError (a rerun of the stage finishes or repairs it)."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None or not (root / DONE).exists():
        raise UserError(f"{what} {root} is incomplete; rerun to finish it")
    parts = {a: [] for a in arrays}
    for s in sorted(manifest["shards"], key=int):
        for a in arrays:
            path = root / SHARD_DIR / manifest["shards"][s][a]["file"]
            ok, reason = file_matches(path, manifest["shards"][s][a])
            if not ok:
                raise UserError(f"{what} shard {path} is {reason}; rerun to regenerate it")
            parts[a].append(np.load(path))
    return {a: np.concatenate(parts[a]) for a in arrays}
