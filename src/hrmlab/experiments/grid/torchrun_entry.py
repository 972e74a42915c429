"""Training entry point for torchrun: `python -m hrmlab.experiments.grid.torchrun_entry --spec SPEC.json|yaml`.

Every rank reads the same spec, builds the model (same seed, so identical weights; DDP also broadcasts
rank 0's) and the data sources, and calls `train`. Rank 0 writes run_dir/train_result.json, including a
digest of every rank's final parameters: a run whose ranks diverged is an error, not a silent result.

Spec keys:
  run_dir: output folder (checkpoints, metrics.jsonl, train_result.json)
  model: {"kind": "hrm" | "lstm", ...HRMConfig / LSTMConfig fields}
  model_seed: weight-init seed (default 0)
  train: TrainConfig fields
  data: {"kind": "npy", "train_x", "train_y", "val_x"?, "val_y"?}  (memory-mapped .npy files)
      | {"kind": "callable", "target": "package.module:function", "kwargs": {...}}  → (train_source, val_source)
  progress: show the progress bar (default true)
  config: resolved run config to store in checkpoints (optional)

`launch_torchrun(spec_path, nproc)` starts it on `nproc` local processes (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from hrmlab.threads import PROCESS_DEFAULTS, configure_process

configure_process()  # a rank started by a user's own torchrun: OpenMP waits passively (before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from hrmlab.config import from_dict, load_yaml  # noqa: E402
from hrmlab.data.base import ArraySource  # noqa: E402
from hrmlab.errors import UserError  # noqa: E402
from hrmlab.forecast.models import build_model  # noqa: E402
from hrmlab.train import distributed as dist_utils  # noqa: E402
from hrmlab.train.trainer import TrainConfig, train

log = logging.getLogger(__name__)

RESULT_FILE = "train_result.json"


def load_spec(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training spec {path} does not exist")
    if path.suffix == ".json":
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"cannot parse {path}: {exc}") from None
    return load_yaml(path)


def build_sources(data: dict):
    """(train_source, val_source | None) from the spec's `data` section."""
    kind = data.get("kind")
    if kind == "npy":
        def pair(xk, yk):
            if not data.get(xk):
                return None
            return ArraySource(np.load(data[xk], mmap_mode="r"), np.load(data[yk], mmap_mode="r"))

        return pair("train_x", "train_y"), pair("val_x", "val_y")
    if kind == "callable":
        module_name, _, func_name = str(data.get("target", "")).partition(":")
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError, ValueError):
            raise UserError(f"data target {data.get('target')!r} is not an importable 'module:function'") from None
        return func(**data.get("kwargs", {}))
    raise UserError(f"unknown data kind {kind!r} in training spec; valid choices: callable, npy")


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters' bytes, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_spec(spec: dict) -> dict:
    run_dir = Path(spec["run_dir"])
    model = build_model(spec["model"], seed=int(spec.get("model_seed", 0)))
    cfg = from_dict(TrainConfig, spec.get("train", {}), "train")
    train_source, val_source = build_sources(spec["data"])
    config = spec.get("config") or {"model": spec["model"], "data": spec["data"]}
    result = train(model, train_source, val_source, cfg, run_dir, config_dict=config,
                   progress=bool(spec.get("progress", True))).to_dict()
    digest = parameter_digest(model)
    digests = [digest]
    if dist.is_available() and dist.is_initialized():
        digests = [None] * dist.get_world_size()
        dist.all_gather_object(digests, digest)
    result["rank_param_digests"] = digests
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks finished with different parameters: {digests}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON or YAML training spec")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        run_spec(load_spec(args.spec))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist_utils.cleanup()
    return 0


def launch_torchrun(spec_path, nproc: int, *, timeout: float | None = None, env: dict | None = None,
                    capture: bool = False) -> subprocess.CompletedProcess:
    """Run `torchrun_entry` on `nproc` local processes via `python -m torch.distributed.run --standalone`.
    Raises RuntimeError (with the tail of the output when captured) if any rank fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", "hrmlab.experiments.grid.torchrun_entry", "--spec", str(spec_path)]
    full_env = {**PROCESS_DEFAULTS, **os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, env=full_env, timeout=timeout, capture_output=capture, text=True)
    if proc.returncode != 0:
        tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).splitlines()[-30:]) if capture else ""
        raise RuntimeError(f"torchrun with {nproc} processes failed (exit {proc.returncode})\n{tail}".rstrip())
    return proc


if __name__ == "__main__":
    code = main()
    # Leave without running interpreter teardown: native threads of the process group or of the
    # data loader can abort ("terminate called without an active exception") while modules unload,
    # after all work and files are already complete and flushed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
