"""One training loop for every model: LSTM, HRM variants, and (through `loss_fn`) the diffusion planner.

What it does, in order of a step: fetch this rank's micro-batches of the global batch (a seeded
per-epoch permutation, sharded by rank) → forward/backward under the precision mode (gradient
accumulation keeps a preset's global batch on fewer GPUs) → all-reduce the loss and a non-finite flag
so every rank skips a bad step identically → clip → optimiser and schedule step → JSONL metrics,
progress bar, periodic `last.pt`. Each epoch ends with a validation loss, `best.pt` on improvement,
`last.pt`, and optional early stopping. A run started on a run directory that holds `last.pt` resumes
from it mid-epoch and continues the same loss curve.

The loss hook: `loss_fn(model, batch) -> scalar tensor`, where `batch` is the tuple returned by the
source's `get_batch` as float32 tensors on the training device, called inside the precision mode's
autocast. The default is MSE between model(X) and Y. In `bf16-pure` mode cast inputs to the model's
dtype yourself (see `mse_loss`). A model may bring its own objective (`training_loss`, which `mse_loss`
uses in training) and an `after_optimizer_step()` the loop calls after every step (TRM's EMA).
`TrainHooks` adds an after-step callback and state that is saved in and restored from checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hrmlab.config import NOT_IN_KEY
from hrmlab.fileio import write_text_atomic
from hrmlab.data.base import SampleSource
from hrmlab.errors import InvalidValue, TrainingDiverged, UserError
from hrmlab.progress import make_progress
from hrmlab.train import distributed as dist_utils
from hrmlab.train.checkpoint import load_checkpoint, save_checkpoint, unwrap_model
from hrmlab.train.optim import make_optimizer, make_scheduler
from hrmlab.train.precision import Precision, make_precision
from hrmlab.threads import flush_subnormals, use_cpu_threads

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_FILE = "metrics.jsonl"


def snapshot_name(step: int) -> str:
    """File name of the snapshot written at optimiser step `step` (`TrainConfig.snapshot_steps`)."""
    return f"snapshot-{int(step)}.pt"


@dataclass
class TrainConfig:
    """Training recipe; presets set the seed's values (SPEC §5)."""

    optimizer: Literal["adamw", "lamb", "lamb-torch-optimizer"] = "adamw"
    """adamw (fused kernel where available), lamb (the paper's, bias-corrected) or lamb-torch-optimizer
    (torch_optimizer.Lamb, the 8gpu_v2 script's: no bias correction, ‖w‖ clamped at 10 in the trust ratio)."""
    lr: float = 1e-3
    """Peak learning rate (OneCycle's max_lr; cosine's start)."""
    weight_decay: float = 0.01
    """Decoupled weight decay (PyTorch's AdamW default 0.01)."""
    schedule: Literal["constant", "onecycle", "cosine"] = "constant"
    """Per-step LR schedule; onecycle uses PyTorch defaults (pct_start 0.3)."""
    min_lr: float = 0.0
    """Cosine schedule's final learning rate."""
    epochs: int = 10
    """Passes over the training set."""
    batch_size: int = 1024
    """GLOBAL batch: samples per optimiser step summed over ranks and accumulation steps."""
    gpus: int = 1
    """GPUs the preset was designed for. On fewer ranks, gradients are accumulated over
    ceil(gpus / world_size) micro-batches so the global batch (and thus the recipe) is kept."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 turns clipping off (the norm is still logged)."""
    precision: Literal["fp32", "fp16", "bf16", "bf16-pure"] = "fp32"
    """fp32 | fp16 (autocast + GradScaler) | bf16 (autocast, fp32 master weights) | bf16-pure (bf16 weights)."""
    early_stopping_patience: int = 0
    """Stop after this many epochs without a better validation loss; 0 = never."""
    seed: int = 0
    """Seeds the per-epoch sample permutation (default_rng(seed + epoch)) and torch's RNG (dropout)."""
    checkpoint_every_steps: int = field(default=500, metadata=NOT_IN_KEY)
    """Write last.pt every this many optimiser steps (and at every epoch end); 0 = epoch ends only."""
    log_every_steps: int = field(default=50, metadata=NOT_IN_KEY)
    """Write a metrics row (means over the window) every this many steps."""
    tensorboard: bool = field(default=False, metadata=NOT_IN_KEY)
    """Also log to TensorBoard under run_dir/tensorboard (needs the `tensorboard` package)."""
    max_steps: int = 0
    """Stop after this many optimiser steps in total (smoke runs); 0 = no limit. The LR schedule spans
    min(max_steps, epochs × steps per epoch)."""
    val_batch_size: int = 0
    """Samples per validation forward per rank; 0 = the training micro-batch size."""
    max_consecutive_nonfinite: int = 20
    """Abort with a clear error after this many consecutive steps with a non-finite loss."""
    device: str = "auto"
    """auto (cuda:LOCAL_RANK if available, else cpu) or an explicit torch device string."""
    cpu_threads: int = field(default=1, metadata=NOT_IN_KEY)
    """Intra-op threads of a single-process CPU run; 0 = every CPU this process may use (hrmlab/threads.py).
    One by default: the study's models gain little from a second thread, and one thread neither collapses
    beside other work nor makes the weights depend on the machine's core count (docs/benchmarks.md,
    "Training beside other work"). The count changes the weights' last bits, so the training stage's key
    holds the resolved number (experiments/grid/stages.py: train_key), not this field. DDP ranks on CPU use
    one thread each."""
    compile: CompileSetting = field(default="auto", metadata=NOT_IN_KEY)
    """torch.compile the training forward/backward: on | off | auto (on where measured faster: `COMPILE_AUTO`,
    by model kind and device, for batches of at least AUTO_COMPILE_MIN_BATCH; true/false mean on/off).
    Compiled weights differ from eager ones in the last bits, so the training stage's key holds the resolved
    value when it is on (experiments/grid/stages.py: train_key), not this field: `off` is the eager path, with
    the keys of old. Needs a C++ compiler on CPU (auto stays off without one). Validation stays eager."""
    snapshot_steps: list[int] = field(default_factory=list, metadata=NOT_IN_KEY)
    """Optimiser steps (increasing, within the run) after which `snapshot-<step>.pt` is written: the weights of
    a shorter training budget, validated (its loss is in the file and in metrics.jsonl), for evaluation only
    (no optimiser state). Learning curves (experiments/study/budgets.py) take every budget from one run this
    way. Snapshots neither change training nor best.pt / last.pt, so they are not in the training key: a stage
    that needs them keys them itself. A resumed run writes the snapshots still ahead and keeps those on disk."""
    snapshot_ema: float = field(default=0.0, metadata=NOT_IN_KEY)
    """Decay of an exponential moving average of the weights that the snapshots hold (0: the live weights).
    The average starts at the first optimiser step with the warm-up min(decay, (1+t)/(10+t)) of TRM's weight
    EMA, is updated after every step, kept in every checkpoint (a resumed run continues it) and never feeds
    back: training, best.pt and last.pt are the live weights', so it is not in the training key either."""

    def __post_init__(self):
        self.compile = compile_setting(self.compile)


# ------------------------------------------------------------------------------------------ compile
CompileSetting = Literal["auto", "on", "off"] | bool

COMPILE_AUTO: dict[tuple[str, str], bool] = {
    ("cpu", "lstm"): False,  # 0.99-1.0x (111 → 112 ms): nn.LSTM is already one oneDNN kernel per layer
    ("cpu", "hrm"): False,  # 1.29-1.32x (93 → 72 ms) a step, but ~50 s to compile: a quick-sized run
    # (~1,200 steps) gains less than it pays from an empty compile cache; `compile: on` where it pays
    ("cpu", "hrm-act"): True,  # 1.70-1.82x (152 → 87 ms)
    ("cpu", "trm"): True,  # 1.68-1.73x (347 → 207 ms)
}
"""Where `compile: auto` compiles: (device type, model kind) → on. Measured by `hrmlab bench --only
train_step` (docs/benchmarks.md, "Compiled training (train_step)"; AMD EPYC, 2026-12-07, three runs): one
CPU thread, batch 512, the suite-rush models with the study's direct roll-out head, minimum ms per training
step eager vs compiled. Pairs not listed (CUDA: not measured yet; other kinds, the diffusion planner) are off."""

AUTO_COMPILE_MIN_BATCH = 256
"""`auto` compiles only runs with at least this global batch: the compile costs tens of seconds to minutes
per model shape (less from the on-disk cache), which a study's runs of hundreds of steps at batch 256-512 win
back and a smoke run or a test (batch 16-32, a few steps) never would."""


def compile_setting(value) -> str:
    """A `compile` setting as auto | on | off (true/false, as YAML and older configs write it, are on/off)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    aliases = {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}
    text = aliases.get(text, text)
    if text not in ("auto", "on", "off"):
        raise InvalidValue(f"compile={value!r} is invalid; valid choices: auto, on, off")
    return text


def _have_cpp_compiler() -> bool:
    """Inductor's CPU backend builds C++: is a compiler on PATH (CXX, or g++ / c++ / clang++)?"""
    import os
    import shutil

    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(name and shutil.which(name) for name in names)


def resolve_compile(setting, kind: str | None, device_type: str, batch_size: int) -> bool:
    """Whether a run of model `kind` (None: not a registered forecaster) on `device_type` compiles.

    on / off are taken as they are; auto is `COMPILE_AUTO[(device_type, kind)]` for a global batch of at
    least AUTO_COMPILE_MIN_BATCH, and off on CPU without a C++ compiler. Deterministic per machine: the
    training key (experiments/grid/stages.py: train_key) and the trainer resolve it alike."""
    setting = compile_setting(setting)
    if setting != "auto":
        return setting == "on"
    if batch_size < AUTO_COMPILE_MIN_BATCH or not COMPILE_AUTO.get((device_type, kind or ""), False):
        return False
    return device_type != "cpu" or _have_cpp_compiler()


def model_kind(model: nn.Module) -> str | None:
    """The registered forecaster kind of `model` (behind any wrapper), else None."""
    from hrmlab.forecast.models import kind_of

    cfg = getattr(unwrap_model(model), "cfg", None)
    try:
        return kind_of(cfg) if cfg is not None else None
    except TypeError:
        return None


COMPILE_CACHE_FOLDER = "torch_compile"
"""Inductor's on-disk cache (compiled kernels, FX graphs, AOT autograd graphs) under the stage cache."""


def use_compile_cache() -> Path:
    """Point inductor's on-disk cache (compiled kernels, FX and AOT-autograd graphs) at
    $HRMLAB_CACHE/torch_compile (else .hrmlab_cache/torch_compile: `stage_cache.default_cache`), so the runs of
    one model shape (in this process, in pool workers, in a later study) compile it once and load it after:
    minutes become seconds. A TORCHINDUCTOR_CACHE_DIR set by the user wins; torch's own default (a per-user
    folder under /tmp, which torch writes into the environment once it compiled) does not count as set.
    Returns the folder in use."""
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from hrmlab.stage_cache import default_cache

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        return Path(current)
    folder = (default_cache() / COMPILE_CACHE_FOLDER).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


@dataclass
class TrainResult:
    best_val_loss: float
    """Lowest validation loss seen (NaN without a validation source)."""
    final_val_loss: float
    """Validation loss after the last epoch run."""
    steps: int
    """Optimiser steps taken in total (including those of a resumed run)."""
    epochs_completed: int
    samples_per_s: float
    """Mean global training throughput of this invocation."""
    checkpoint_path: str
    """best.pt (or last.pt when there is no validation source)."""
    last_checkpoint_path: str
    stopped_early: bool
    resumed_from_step: int | None
    world_size: int
    grad_accum: int
    earlier_seconds: float | None = 0.0
    """Training-loop wall seconds that earlier calls spent reaching the checkpoint this call resumed from (0 for
    a run trained in one call; None when that checkpoint predates this record): a run's cost is this call's
    time plus these, not this call's alone."""
    snapshots: list[dict] = field(default_factory=list)
    """The snapshots written (`TrainConfig.snapshot_steps`), by step: {step, checkpoint, val_loss, seconds,
    weights ("ema" or "live")}; `seconds` are the training-loop seconds spent reaching the step (None when a
    resumed run's earlier time is unknown)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TrainHooks:
    """Optional callbacks; subclass and override what you need. `state_dict` is stored in every
    checkpoint and handed back to `load_state_dict` on resume."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after every optimiser step (skipped steps included) with the unwrapped model."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def mse_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Default loss: MSE between model(X) and the target displacement Y — or, in training, the model's
    own objective when it defines `training_loss` (deep supervision, ACT; forecast/models.py). That one is
    reached as `model(X, target=Y)`, through the forward, so DDP and torch.compile wrappers see the call."""
    x, y = batch[0], batch[1]
    dtype = next(model.parameters()).dtype
    if model.training and hasattr(unwrap_model(model), "training_loss"):
        return model(x.to(dtype), target=y).float()
    return F.mse_loss(model(x.to(dtype)).float(), y.float())


def grad_accum_steps(preset_gpus: int, world_size: int) -> int:
    """Micro-batches per rank per step so that world_size ranks do the work of `preset_gpus` GPUs."""
    return max(1, math.ceil(max(1, preset_gpus) / max(1, world_size)))


class ShardedBatchSampler:
    """Deterministic, world-size-independent batches with DistributedSampler's `set_epoch` semantics.

    Epoch e shuffles with np.random.default_rng(seed + e), identically on every rank. Global batch i is
    perm[i·B:(i+1)·B] (the incomplete tail is dropped), split into world_size × accum micro-batches;
    rank r takes micro-batches r·accum … r·accum + accum − 1. The global batches, and so the loss curve,
    do not depend on how many ranks share them."""

    def __init__(self, num_samples: int, global_batch: int, world_size: int, rank: int, accum: int, seed: int):
        if global_batch > num_samples:
            raise UserError(f"batch_size {global_batch} is larger than the training set ({num_samples} samples); "
                            "lower train.batch_size or collect more data")
        if global_batch < world_size * accum:
            raise UserError(f"batch_size {global_batch} is smaller than ranks × accumulation steps "
                            f"({world_size} × {accum})")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.world_size, self.rank, self.accum, self.seed = world_size, rank, accum, seed
        self.steps_per_epoch = num_samples // global_batch
        self.epoch = -1
        self._perm: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._perm = np.random.default_rng(self.seed + epoch).permutation(self.num_samples)

    def micro_batches(self, step_in_epoch: int) -> list[np.ndarray]:
        start = step_in_epoch * self.global_batch
        chunks = np.array_split(self._perm[start:start + self.global_batch], self.world_size * self.accum)
        mine = chunks[self.rank * self.accum:(self.rank + 1) * self.accum]
        return [np.sort(c) for c in mine]  # sorted: memory-mapped reads stay sequential; the mean is unchanged


def _to_device(arrays, device: torch.device) -> tuple[torch.Tensor, ...]:
    pin = device.type == "cuda"
    out = []
    for a in arrays:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if t.is_floating_point():
            t = t.float()
        if pin:
            t = t.pin_memory()
        out.append(t.to(device, non_blocking=pin))
    return tuple(out)


class _MetricsWriter:
    """JSONL rows on rank 0 (plus TensorBoard when asked and installed)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard requested but not installed (pip install tensorboard); JSONL only")

    def truncate_after(self, step: int, epoch: int) -> None:
        """On resume, drop rows the killed run wrote after its last checkpoint."""
        if not (self.enabled and self.path.exists()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if row.get("kind") in ("train", "snapshot") and row.get("step", 0) > step:
                continue
            if row.get("kind") == "val" and row.get("epoch", 0) >= epoch:
                continue
            kept.append(line)
        write_text_atomic(self.path, "".join(k + "\n" for k in kept))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None and "step" in row:
            for key, value in row.items():
                if key not in ("step", "kind", "epoch") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{row.get('kind', 'train')}/{key}", value, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class _Progress:
    """Everything that must survive a kill besides model/optimizer/scheduler/scaler (checkpoint `extra`)."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    final_val_loss: float = math.nan
    seconds: float | None = 0.0
    """Training-loop wall seconds spent reaching `step`, summed over the calls that trained this run (None:
    resumed from a checkpoint written before this was recorded). A killed call's seconds after its last
    checkpoint are not counted: the resuming call redoes, and counts, those steps."""
    snapshots: list[dict] = field(default_factory=list)
    """The snapshots written up to `step` (TrainResult.snapshots)."""


def note_validation(st: _Progress, val: float) -> bool:
    """An end-of-epoch validation loss into a run's progress (final, best, epochs without improvement, which
    early stopping reads); True when it is the best so far (best.pt is then rewritten)."""
    st.final_val_loss = val
    improved = math.isfinite(val) and val < st.best_val_loss
    if improved:
        st.best_val_loss = val
        st.epochs_without_improvement = 0
    elif math.isfinite(val):
        st.epochs_without_improvement += 1
    return improved


def train(model: nn.Module, train_source: SampleSource, val_source: SampleSource | None, cfg: TrainConfig,
          run_dir, *, config_dict: dict | None = None, progress: bool = True,
          loss_fn: Callable[[nn.Module, tuple], torch.Tensor] | None = None,
          hooks: TrainHooks | None = None) -> TrainResult:
    """Train `model` on `train_source`, validating on `val_source` every epoch; see the module docstring.

    Works unchanged in one process and under torchrun (DDP over all ranks of the environment)."""
    return _Trainer(model, train_source, val_source, cfg, Path(run_dir), config_dict or {}, progress,
                    loss_fn or mse_loss, hooks or TrainHooks()).run()


class _Trainer:
    def __init__(self, model, train_source, val_source, cfg: TrainConfig, run_dir: Path, config_dict: dict,
                 progress: bool, loss_fn, hooks: TrainHooks):
        self.cfg, self.run_dir, self.loss_fn, self.hooks = cfg, run_dir, loss_fn, hooks
        self.show_progress = progress
        self.train_source, self.val_source = train_source, val_source
        self.info = dist_utils.init_distributed(cfg.device)
        self.device = self.info.device
        if self.device.type == "cpu":
            flush_subnormals()
            if not self.info.distributed:
                use_cpu_threads(cfg.cpu_threads)
        if self.info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        dist_utils.barrier()
        self.precision: Precision = make_precision(cfg.precision, self.device)
        self.model = self.precision.prepare_model(model)
        self.accum = grad_accum_steps(cfg.gpus, self.info.world_size)
        self.sampler = ShardedBatchSampler(len(train_source), cfg.batch_size, self.info.world_size, self.info.rank,
                                           self.accum, cfg.seed)
        spe = self.sampler.steps_per_epoch
        self.total_steps = cfg.epochs * spe if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * spe)
        self.snapshot_steps = check_snapshots(cfg, self.total_steps)
        self.ema = WeightAverage(self.model, cfg.snapshot_ema) if cfg.snapshot_ema > 0 else None
        self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.weight_decay, self.device)
        self.scheduler = make_scheduler(cfg.schedule, self.optimizer, self.total_steps, cfg.lr, cfg.min_lr)
        self.config = {"train": dataclasses.asdict(cfg), **config_dict}
        self.metrics = _MetricsWriter(run_dir, self.info.is_main, cfg.tensorboard)
        self.state = _Progress()
        self.resumed_from: int | None = None
        self._resume_if_possible()
        self.ddp_model = dist_utils.wrap_model(self.model, self.info)
        self.compiled = resolve_compile(cfg.compile, model_kind(self.model), self.device.type, cfg.batch_size)
        if self.compiled:
            # static shapes: every training micro-batch has one size (the sampler drops the epoch's incomplete
            # tail; an uneven split over ranks × accumulation adds at most one more), so this compiles once
            # or twice per run, never per epoch; validation runs the eager model, any batch size
            use_compile_cache()
            self.ddp_model = torch.compile(self.ddp_model, dynamic=False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.model_step_hooks = [m for m in self.model.modules() if hasattr(m, "after_optimizer_step")]
        self._log_setup()

    # ------------------------------------------------------------------------------------ setup

    def _log_setup(self) -> None:
        cfg, info = self.cfg, self.info
        if not info.is_main:
            return
        micro = cfg.batch_size // (info.world_size * self.accum)
        if self.accum > 1:
            log.info("preset designed for %d GPUs, running on %d rank(s): accumulating %d micro-batches of ~%d "
                     "per rank to keep the global batch of %d", cfg.gpus, info.world_size, self.accum, micro,
                     cfg.batch_size)
        log.info("training %s params on %s ×%d, %s%s, %d steps/epoch, %d steps total",
                 f"{sum(p.numel() for p in self.params):,}", self.device, info.world_size, cfg.precision,
                 ", compiled" if self.compiled else "", self.sampler.steps_per_epoch, self.total_steps)

    def _resume_if_possible(self) -> None:
        last = self.run_dir / LAST_CHECKPOINT
        if last.exists():
            meta = load_checkpoint(last, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                   scaler=self.precision.scaler, map_location=self.device,
                                   restore_rng=self.info.is_main)
            extra = meta["extra"]
            self.state = _Progress(**{"seconds": None, **extra.get("progress", {})})  # older: time unknown
            self.hooks.load_state_dict(extra.get("hooks", {}))
            if self.ema is not None:
                self.ema.load_state_dict(extra.get("ema"), last)
            self.resumed_from = self.state.step
            saved_train = (meta.get("config") or {}).get("train", {})
            changed = sorted(k for k, v in dataclasses.asdict(self.cfg).items()
                             if k in saved_train and saved_train[k] != v and k not in ("epochs", "max_steps"))
            if changed and self.info.is_main:
                log.warning("resuming %s with changed training settings: %s", last, ", ".join(changed))
            self.metrics.truncate_after(self.state.step, self.state.epoch)
            if self.info.is_main:
                log.info("resuming from %s: step %d, epoch %d, step %d of the epoch", last, self.state.step,
                         self.state.epoch, self.state.step_in_epoch)
        else:
            torch.manual_seed(self.cfg.seed)
        if not self.info.is_main:  # other ranks get their own deterministic stream (dropout)
            torch.manual_seed(self.cfg.seed + 7919 * self.info.rank + self.state.step)

    def _save(self, name: str) -> None:
        if not self.info.is_main:
            return
        started, carried = self._clock
        self.state.seconds = None if carried is None else carried + time.perf_counter() - started
        extra = {"progress": dataclasses.asdict(self.state), "hooks": self.hooks.state_dict(),
                 "world_size": self.info.world_size, "grad_accum": self.accum}
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        save_checkpoint(self.run_dir / name, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        scaler=self.precision.scaler, step=self.state.step, epoch=self.state.epoch,
                        config=self.config, extra=extra)

    # ------------------------------------------------------------------------------------ steps

    def _fetch(self, step_in_epoch: int) -> list[tuple[np.ndarray, ...]]:
        return [self.train_source.get_batch(idx) for idx in self.sampler.micro_batches(step_in_epoch)]

    def _train_step(self, micro_batches: list[tuple[np.ndarray, ...]]) -> tuple[bool, float, float]:
        """One optimiser step; returns (skipped, global mean loss, grad norm)."""
        cfg, info = self.cfg, self.info
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for j, arrays in enumerate(micro_batches):
            batch = _to_device(arrays, self.device)
            n = len(batch[0])
            last = j == len(micro_batches) - 1
            sync = contextlib.nullcontext() if (last or not info.distributed) else self.ddp_model.no_sync()
            with sync:
                with self.precision.autocast():
                    loss = self.loss_fn(self.ddp_model, batch).float()
                # DDP averages gradients over ranks, so weight each micro-batch by its share of the global batch
                self.precision.backward(loss * (n * info.world_size / cfg.batch_size))
            loss_sum += loss.detach() * n
        stats = torch.stack([loss_sum, (~torch.isfinite(loss_sum)).float()])
        dist_utils.all_reduce_sum(stats)  # the same verdict on every rank: no rank can skip alone
        mean_loss = stats[0].item() / cfg.batch_size
        if stats[1].item() > 0:
            if self.precision.scaler is not None:
                scaler = self.precision.scaler
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
            self.optimizer.zero_grad(set_to_none=True)
            return True, math.nan, math.nan
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm).item()
        if scaler is not None:
            scaler.step(self.optimizer)  # skips by itself on overflowing gradients and lowers the scale
            scaler.update()
            return False, mean_loss, grad_norm
        if not math.isfinite(grad_norm):  # gradients are all-reduced, so every rank sees the same norm
            self.optimizer.zero_grad(set_to_none=True)
            return True, math.nan, grad_norm
        self.optimizer.step()
        return False, mean_loss, grad_norm

    def _snapshot(self) -> None:
        """Write snapshot-<step>.pt: the weight average (or the live weights) at this step, validated. Every rank
        validates (the loss is all-reduced); the main rank writes. The live model is not touched."""
        st = self.state
        model = copy.deepcopy(unwrap_model(self.model))
        if self.ema is not None:
            self.ema.copy_to(model)
        val = self.validate(model)
        started, carried = self._clock
        seconds = None if carried is None else round(carried + time.perf_counter() - started, 3)
        entry = {"step": st.step, "checkpoint": str(self.run_dir / snapshot_name(st.step)), "val_loss": _num(val),
                 "seconds": seconds, "weights": "ema" if self.ema is not None else "live"}
        st.snapshots = [s for s in st.snapshots if s["step"] != st.step] + [entry]
        if self.info.is_main:
            save_checkpoint(self.run_dir / snapshot_name(st.step), model=model, step=st.step, epoch=st.epoch,
                            config=self.config, extra={"snapshot": entry})
            log.info("step %d: snapshot (%s weights), val loss %.4g", st.step, entry["weights"], val)
        # its own field name: the report's loss chart reads `val_loss` rows as the live model's epoch-end losses
        self.metrics.write({"kind": "snapshot", "step": st.step, "epoch": st.epoch,
                            "snapshot_val_loss": entry["val_loss"], "weights": entry["weights"], "seconds": seconds})

    @torch.no_grad()
    def validate(self, model: nn.Module | None = None) -> float:
        """Mean validation loss of `model` (default: the live model), all-reduced over ranks."""
        if self.val_source is None or len(self.val_source) == 0:
            return math.nan
        model = self.model if model is None else model
        model.eval()
        mine = np.array_split(np.arange(len(self.val_source)), self.info.world_size)[self.info.rank]
        size = self.cfg.val_batch_size or max(1, self.cfg.batch_size // (self.info.world_size * self.accum))
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for start in range(0, len(mine), size):
            batch = _to_device(self.val_source.get_batch(mine[start:start + size]), self.device)
            with self.precision.autocast():
                loss = self.loss_fn(model, batch).float()
            total[0] += loss.double() * len(batch[0])
            total[1] += len(batch[0])
        dist_utils.all_reduce_sum(total)
        model.train()
        return (total[0] / total[1]).item() if total[1] > 0 else math.nan

    # ------------------------------------------------------------------------------------ loop

    def run(self) -> TrainResult:
        cfg, st = self.cfg, self.state
        spe = self.sampler.steps_per_epoch
        bar = make_progress(self.total_steps, "train", bar=self.show_progress, unit="steps",
                            initial=min(st.step, self.total_steps), enabled=self.info.is_main)
        run_start, run_steps = time.perf_counter(), 0
        self._clock = (run_start, st.seconds)  # what earlier calls spent; _save adds this call's time
        window = _Window()
        consecutive_bad = 0
        stopped_early = False
        pool = ThreadPoolExecutor(max_workers=1)  # prefetches the next step's batches during this step
        self.model.train()
        try:
            while st.epoch < cfg.epochs and st.step < self.total_steps:
                self.sampler.set_epoch(st.epoch)
                pending = pool.submit(self._fetch, st.step_in_epoch) if st.step_in_epoch < spe else None
                while st.step_in_epoch < spe and st.step < self.total_steps:
                    t0 = time.perf_counter()
                    batches = pending.result()
                    nxt = st.step_in_epoch + 1
                    pending = pool.submit(self._fetch, nxt) if nxt < spe and st.step + 1 < self.total_steps else None
                    lr = self.optimizer.param_groups[0]["lr"]  # the rate this step trains with
                    skipped, loss, grad_norm = self._train_step(batches)
                    with warnings.catch_warnings():  # a skipped first step is deliberate, not a misuse
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                        self.scheduler.step()  # also on skipped steps: the schedule follows the data position
                    st.step += 1
                    st.step_in_epoch = nxt
                    run_steps += 1
                    consecutive_bad = consecutive_bad + 1 if skipped else 0
                    if consecutive_bad >= cfg.max_consecutive_nonfinite:
                        raise TrainingDiverged(f"training diverged: {consecutive_bad} consecutive non-finite losses up to "
                                        f"step {st.step}; lower train.lr, set train.grad_clip, or use fp32/bf16")
                    if skipped and self.info.is_main:
                        log.warning("step %d: non-finite loss or gradient, step skipped on every rank", st.step)
                    for module in self.model_step_hooks:  # a model's own per-step update (e.g. TRM's EMA)
                        module.after_optimizer_step()
                    if self.ema is not None:
                        self.ema.update(self.model)
                    self.hooks.after_step(self.model, st.step)
                    if st.step in self.snapshot_steps:
                        self._snapshot()
                    window.add(loss, grad_norm, lr, skipped, time.perf_counter() - t0)
                    if st.step % max(1, cfg.log_every_steps) == 0 or st.step == 1:
                        self._log_window(window, bar)
                        window = _Window()
                    bar.update(1)
                    if cfg.checkpoint_every_steps and st.step % cfg.checkpoint_every_steps == 0:
                        self._save(LAST_CHECKPOINT)
                if pending is not None:
                    pending.cancel()
                if window.steps:
                    self._log_window(window, bar)
                    window = _Window()
                epoch_finished = st.step_in_epoch >= spe
                stopped_early = self._end_of_epoch(epoch_finished)
                if stopped_early or not epoch_finished:
                    break
        finally:
            pool.shutdown(wait=True)
            bar.close()
            self.metrics.close()
        dist_utils.barrier()
        elapsed = time.perf_counter() - run_start
        best = self.run_dir / BEST_CHECKPOINT
        last = self.run_dir / LAST_CHECKPOINT
        return TrainResult(
            best_val_loss=st.best_val_loss if math.isfinite(st.best_val_loss) else math.nan,
            final_val_loss=st.final_val_loss, steps=st.step, epochs_completed=st.epoch,
            samples_per_s=run_steps * cfg.batch_size / elapsed if elapsed > 0 else 0.0,
            checkpoint_path=str(best if best.exists() else last), last_checkpoint_path=str(last),
            stopped_early=stopped_early, resumed_from_step=self.resumed_from, world_size=self.info.world_size,
            grad_accum=self.accum, earlier_seconds=self._clock[1],
            # paths from this call's run directory: a run resumed elsewhere (another cache path) names its own files
            snapshots=[{**s, "checkpoint": str(self.run_dir / snapshot_name(s["step"]))}
                       for s in sorted(st.snapshots, key=lambda s: s["step"])])

    def _end_of_epoch(self, epoch_finished: bool) -> bool:
        """Validate, keep best.pt, write last.pt; True when early stopping ends the run."""
        st, cfg = self.state, self.cfg
        val = self.validate()
        improved = note_validation(st, val)
        self.metrics.write({"kind": "val", "step": st.step, "epoch": st.epoch, "val_loss": _num(val),
                            "best_val_loss": _num(st.best_val_loss), "epoch_finished": epoch_finished})
        if self.info.is_main and math.isfinite(val):
            log.info("epoch %d step %d: val loss %.4g (best %.4g)", st.epoch, st.step, val, st.best_val_loss)
        if epoch_finished:
            st.epoch += 1
            st.step_in_epoch = 0
        if improved:
            self._save(BEST_CHECKPOINT)
        stop = bool(cfg.early_stopping_patience) and st.epochs_without_improvement >= cfg.early_stopping_patience
        # last.pt at every epoch end, except when epochs are shorter than the checkpoint interval (full-batch
        # training: an epoch is one step) — then the step interval decides, plus the run's final step.
        every = cfg.checkpoint_every_steps
        short_epochs = every and self.sampler.steps_per_epoch < every
        saved_this_step = every and st.step % every == 0
        if stop or st.step >= self.total_steps or not (short_epochs or saved_this_step):
            self._save(LAST_CHECKPOINT)
        if stop and self.info.is_main:
            log.info("early stopping: %d epochs without improvement", st.epochs_without_improvement)
        return stop

    def _log_window(self, window: "_Window", bar) -> None:
        st = self.state
        row = {"kind": "train", "step": st.step, "epoch": st.epoch, "loss": _num(window.mean_loss()),
               "lr": window.lr, "grad_norm": _num(window.mean_grad_norm()),
               "samples_per_s": window.steps * self.cfg.batch_size / window.seconds if window.seconds else 0.0,
               "step_ms": 1000 * window.seconds / max(1, window.steps), "skipped": window.skipped}
        self.metrics.write(row)
        bar.set_postfix(loss=f"{row['loss']:.3g}" if row["loss"] is not None else "nan", lr=f"{row['lr']:.2g}",
                        refresh=False)


def check_snapshots(cfg: TrainConfig, total_steps: int) -> frozenset[int]:
    """The snapshot steps of a run of `total_steps` steps; out-of-range settings are one clear error."""
    steps = [int(s) for s in cfg.snapshot_steps]
    if any(s < 1 or s > total_steps for s in steps) or steps != sorted(set(steps)):
        raise UserError(f"train.snapshot_steps must be increasing steps in 1 … {total_steps} (this run's optimiser "
                        f"steps), got {cfg.snapshot_steps}")
    if not 0.0 <= cfg.snapshot_ema < 1.0:
        raise UserError(f"train.snapshot_ema must be in [0, 1), got {cfg.snapshot_ema}")
    return frozenset(steps)


class WeightAverage:
    """Exponential moving average of a model's parameters (float32 copies), for snapshots.

    The same rule as TRM's weight EMA (forecast/trm.WeightEMA), applied from outside the model so that every
    model gets it alike: the first update copies the weights, update t uses decay min(decay, (1+t)/(10+t))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.weights = {name: p.detach().float().clone() for name, p in unwrap_model(model).named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        t = self.updates
        decay = 0.0 if t == 0 else min(self.decay, (1 + t) / (10 + t))
        for name, p in unwrap_model(model).named_parameters():
            self.weights[name].lerp_(p.detach().float(), 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Put the average into `model`'s parameters (a copy of the trained model; buffers stay its own)."""
        for name, p in unwrap_model(model).named_parameters():
            p.copy_(self.weights[name].to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "weights": {k: v.detach().cpu().clone() for k, v in self.weights.items()}}

    def load_state_dict(self, state: dict | None, path) -> None:
        if not state or set(state.get("weights", {})) != set(self.weights):
            raise UserError(f"checkpoint {path} holds no weight average of this model (train.snapshot_ema was "
                            "changed after it was written); delete the run directory and retrain")
        device = next(iter(self.weights.values())).device
        self.weights = {k: v.to(device=device, dtype=torch.float32) for k, v in state["weights"].items()}
        self.updates = int(state["updates"])


class _Window:
    """Running means between two metrics rows."""

    def __init__(self):
        self.steps = self.skipped = 0
        self.seconds = 0.0
        self.lr = math.nan
        self.losses: list[float] = []
        self.grad_norms: list[float] = []

    def add(self, loss: float, grad_norm: float, lr: float, skipped: bool, seconds: float) -> None:
        self.steps += 1
        self.lr = lr  # the latest step's
        self.skipped += int(skipped)
        self.seconds += seconds
        if not skipped:
            self.losses.append(loss)
            self.grad_norms.append(grad_norm)

    def mean_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else math.nan

    def mean_grad_norm(self) -> float:
        return float(np.mean(self.grad_norms)) if self.grad_norms else math.nan


def _num(value: float) -> float | None:
    """JSON has no NaN/inf: write null."""
    return float(value) if value is not None and math.isfinite(value) else None


def read_metrics(run_dir) -> list[dict[str, Any]]:
    """Rows of run_dir/metrics.jsonl (for tests, reports and plots)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
