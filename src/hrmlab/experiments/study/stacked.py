"""Stacked study runs: the study's runs of one model shape trained together as one `StackedEnsemble`.

WHY. On a CUDA GPU the study's models are launch-bound: one run leaves the card mostly idle. The runs of one
world that share data and model shape — training seeds, candidate learning rates of one arm — can train as the
members of one stacked model (train/ensemble.py), each kernel doing M runs' work. On a CPU that is a loss
(docs/benchmarks.md, "Stacked ensembles": 0.60-0.98x), so `can_stack` says yes for CUDA only by default.

API.
* `groups(runs, max_members=None)`: a partition of the study's `TrainRun`s. A list of two or more runs may
  train stacked; every other run is a list of one — a run already in the stage cache (it is a cache hit), a
  run with a partial run folder (`last.pt`: it resumes separately, as `stage_train` resumes it), a run the
  ensemble cannot train exactly (`why_separate` names the reason), and a run with no partner.
* `train_stacked(runs)`: what `[train_run(r) for r in runs]` returns (study/run.py: a stage summary, or
  {"diverged": why, "best_val_loss": None}), with each stackable group trained as one ensemble. Each member's
  result is stored in the stage cache exactly where and as `stage_train` stores it: its training key
  (`train_key`), its folder `models/<kind>-<key>` holding `best.pt` / `last.pt` (the trainer's checkpoint
  format: model, AdamW, scheduler, progress), `metrics.jsonl`, `train_result.json`, the summary document with
  its done marker (checksum of the checkpoint), and the link OUT/train/<model>. Afterwards `stage_train` of
  each run is a cache hit returning that summary. Runs that are not stacked (or that the ensemble refuses
  once built, `EnsembleUnsupported`) go through `train_run` as before.
* `can_stack(device, setting="auto")`: the policy — auto: CUDA only; on / off: always / never.

WHAT IS MIRRORED (train/trainer.py `_Trainer`, one process, as `stage_train` → `train_forecaster` → `run_spec`
runs it for the study). Per member: the model built by `build_model({"kind", **model config}, seed=seed)` as
`run_spec` builds it (so its initial weights are a separate run's, bit for bit); its own data order
(`ShardedBatchSampler` seeded by its seed, world size 1, no accumulation) and validation data; the trainer's
step (loss → backward → non-finite check → clip → AdamW → schedule step → the model's after-step hook, all
per member in `EnsembleStep`); `total_steps` (epochs × steps per epoch, capped by max_steps); the epoch loop
(a max_steps cut mid-epoch still validates); validation after every epoch with the trainer's batches and
float64 sums (eval mode, the trainer's loss); `best.pt` on improvement, `last.pt` every
checkpoint_every_steps steps and at epoch ends by the trainer's rule; early stopping by its patience (a member
that stops keeps its files as of its stop; its slot idles along); divergence after max_consecutive_nonfinite
consecutive skipped steps (the member's result is what `train_run` returns for TrainingDiverged; its folder is
left as a diverged separate run leaves it); metrics.jsonl rows (train windows, val rows); the summary's
fields (TrainResult, rank_param_digests, kind, checkpoint, parameters, forecast_metrics scored on validation
episodes, seconds, key). The checkpoints' optimiser and scheduler states are `EnsembleStep.export_member`'s:
a separate run can resume from a stacked run's `last.pt`.

WHAT DIFFERS. Weights equal separate runs' to float32 rounding, not bit for bit (train/ensemble.py, "WHAT IS
EXACT"), under the same stage key. Measured on smoke `quick` runs against stage_train on CPU: max |Δ weight| of
best.pt 6e-8 (lstm, 8 and 24 steps), 9e-8 (trm, 12), 2.4e-7 (hrm-act, 6), 4.6e-7 (hrm at lr 3e-3, 6 steps; the
recursive models amplify rounding most); best validation loss to 3e-8 relative (hrm: 2e-6); tests/test_stacked.py.
Time: a member's seconds (summary `seconds`, checkpoints' progress seconds, metrics rows' step times and
samples/s) are its share, 1/M, of the group's wall time (setup, training, validation, checkpoints), plus its
own validation-episode scoring, so a study's compute minutes (the sum over runs) stay the group's real wall
time. No progress bar.

REFUSED (the run trains separately through `train_run`; `why_separate` says why): a run with a partial run
folder (resume is the trainer's); torch.compile resolved on (CPU hrm-act/trm at batch ≥ 256; the key says
compiled); gradient accumulation (hardware.gpus > 1); DDP / torchrun (a distributed environment: the study's
stage_train trains in one process, the only case mirrored); non-fp32 precision (autocast, GradScaler);
optimisers other than AdamW; TensorBoard; snapshots (snapshot_steps, snapshot_ema: the learning-curve stage's
own); and what `ensemble.check_supported` refuses (dropout > 0, HRM random initial states, non-float32
parameters, other after-step hooks than TRM's EMA). Members may differ in seed, lr, weight_decay, grad_clip,
min_lr, schedule, early_stopping_patience, max_consecutive_nonfinite and the logging/checkpoint intervals;
everything else of the recipe, the model config, roll-out, data, device and hardware must be equal.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("hrmlab.study.stacked")

MEMBER_FIELDS = ("seed", "lr", "weight_decay", "grad_clip", "min_lr", "schedule", "early_stopping_patience",
                 "max_consecutive_nonfinite", "log_every_steps", "checkpoint_every_steps")
"""TrainConfig fields in which the members of one stack may differ (EnsembleStep keeps them per member, or the
loop here does); every other field must be equal."""

STACK_SETTINGS = ("auto", "on", "off")


def can_stack(device, setting: str = "auto") -> bool:
    """Whether runs on `device` (a torch device or its name; "auto" is resolved as the trainer resolves it)
    should train stacked: `auto` on CUDA only (on a CPU stacking is a measured loss, docs/benchmarks.md
    "Stacked ensembles"), `on` always, `off` never."""
    from hrmlab.errors import InvalidValue
    from hrmlab.train.distributed import pick_device

    setting = str(setting).strip().lower()
    if setting not in STACK_SETTINGS:
        raise InvalidValue(f"stacking setting {setting!r} is invalid; valid choices: {', '.join(STACK_SETTINGS)}")
    if setting != "auto":
        return setting == "on"
    return pick_device(str(device)).type == "cuda"


# ------------------------------------------------------------------------------------------ planning
@dataclass
class _Prepared:
    """One run as `stage_train` / `train_forecaster` / `run_spec` would set it up."""

    run: object
    key: str
    stage: object
    stage_dir: Path
    kind: str
    model_cfg: object
    train_cfg: object
    """The TrainConfig the trainer sees (gpus, device, precision rewritten as train_forecaster does)."""
    future: int
    trained: str
    has_val: bool


def _prepare(run) -> _Prepared:
    from hrmlab.config import from_dict, to_dict
    from hrmlab.experiments.grid.stages import model_dir, train_key
    from hrmlab.forecast.learned import TRAINED_FOR
    from hrmlab.stage_cache import Stage
    from hrmlab.train.distributed import pick_device
    from hrmlab.train.trainer import TrainConfig

    cfg, kind = run.cfg, run.model
    key = train_key(cfg, kind)
    stage_dir = model_dir(run.opts.cache, kind, key)
    stage = Stage(f"train/{kind}", stage_dir / "summary.json", key, folder=stage_dir)
    trained = TRAINED_FOR[cfg.forecast.rollout]
    future = cfg.planner.horizon if trained == "direct" else 1
    recipe = dataclasses.replace(cfg.train_config(kind), gpus=max(1, cfg.hardware.gpus), device=cfg.device)
    if kind == "lstm" and recipe.precision == "fp16" and pick_device(cfg.device).type != "cuda":
        recipe = dataclasses.replace(recipe, precision="fp32")  # as train_forecaster: no fp16 LSTM on CPU
    recipe = from_dict(TrainConfig, to_dict(recipe), "train")  # the trainer's copy, as run_spec makes it
    return _Prepared(run, key, stage, stage_dir, kind, cfg.model_config(kind), recipe, future, trained,
                     "val" in run.data_paths.files)


def _is_cached(p: _Prepared) -> bool:
    """The stage has a done marker for this key (stage_train then checks it fully; a corrupt one is redone)."""
    try:
        return json.loads(p.stage.marker.read_text()).get("key") == p.key
    except (OSError, ValueError, AttributeError):
        return False


_SUPPORT: dict[str, str | None] = {}


def _model_refusal(kind: str, model_cfg, seed: int) -> str | None:
    from hrmlab.config import config_hash, to_dict
    from hrmlab.forecast.models import build_model
    from hrmlab.train.ensemble import EnsembleUnsupported, check_supported

    memo = config_hash({"kind": kind, "model": to_dict(model_cfg)})
    if memo not in _SUPPORT:
        try:
            check_supported(build_model({"kind": kind, **to_dict(model_cfg)}, seed=seed))
            _SUPPORT[memo] = None
        except EnsembleUnsupported as exc:
            _SUPPORT[memo] = str(exc)
    return _SUPPORT[memo]


def _refusal(p: _Prepared) -> str | None:
    from hrmlab.experiments.grid.stages import compiled_training
    from hrmlab.train.trainer import LAST_CHECKPOINT, grad_accum_steps

    tc = p.train_cfg
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "a distributed (torchrun) environment: the stacked loop runs in one process"
    if (p.stage_dir / LAST_CHECKPOINT).exists():
        return f"its run folder holds {LAST_CHECKPOINT} of an interrupted run, which resumes separately"
    if compiled_training(p.run.cfg, p.kind):
        return "it trains compiled here (train.compile), which the stacked forward is not"
    if grad_accum_steps(tc.gpus, 1) > 1:
        return f"its preset's {tc.gpus} GPUs mean gradient accumulation on one process"
    if tc.precision != "fp32":
        return f"precision {tc.precision}: the ensemble trains fp32 only"
    if tc.optimizer != "adamw":
        return f"optimizer {tc.optimizer}: the ensemble implements adamw only"
    if tc.tensorboard:
        return "train.tensorboard: the stacked loop writes metrics.jsonl only"
    if tc.snapshot_steps or tc.snapshot_ema:
        return "snapshots (train.snapshot_steps / snapshot_ema) are written by the trainer only"
    return _model_refusal(p.kind, p.model_cfg, tc.seed)


def why_separate(run) -> str | None:
    """Why `run` cannot train as a stacked member (None: it can). A cached run is not refused: see groups."""
    return _refusal(_prepare(run))


def _signature(p: _Prepared) -> str:
    """Equal for runs that may share an ensemble: everything but the per-member recipe fields."""
    from hrmlab.config import to_dict
    from hrmlab.data.collect import store_config

    cfg = p.run.cfg
    recipe = {k: v for k, v in to_dict(p.train_cfg).items() if k not in MEMBER_FIELDS}
    doc = {"kind": p.kind, "rollout": cfg.forecast.rollout, "trained": p.trained, "future": p.future,
           "arch": to_dict(p.model_cfg), "train": recipe, "data": store_config(cfg.world, cfg.data),
           "history": cfg.data.history, "position_scale": cfg.world.position_scale,
           "root": str(Path(p.run.data_paths.root).resolve()), "has_val": p.has_val, "device": cfg.device,
           "key_extras": _key_extras(cfg, p.kind)}
    return json.dumps(doc, sort_keys=True, default=str)


def _key_extras(cfg, kind: str) -> list:
    from hrmlab.experiments.grid.stages import compiled_training, cpu_training_threads

    return [cpu_training_threads(cfg, kind), compiled_training(cfg, kind)]


def _try_prepare(run) -> _Prepared | None:
    """`_prepare`, or None for a run whose config the trainer would refuse: `train_run` raises its error."""
    from hrmlab.errors import UserError

    try:
        return _prepare(run)
    except UserError:
        return None


def _plan(runs: list, max_members: int | None = None) -> tuple[list[list[int]], list[_Prepared | None]]:
    prepared = [_try_prepare(r) for r in runs]
    out: list[list[int]] = []
    open_groups: dict[str, list[int]] = {}
    seen_keys: set[tuple] = set()
    for i, p in enumerate(prepared):
        if p is None:
            out.append([i])
            continue
        stage_id = (str(p.stage.document.resolve()), p.key)
        if stage_id in seen_keys or _is_cached(p) or _refusal(p) is not None:
            out.append([i])  # a duplicate of a run listed earlier is a cache hit after it
            seen_keys.add(stage_id)
            continue
        seen_keys.add(stage_id)
        sig = _signature(p)
        group = open_groups.get(sig)
        if group is None or (max_members and len(group) >= max_members):
            group = open_groups[sig] = []
            out.append(group)
        group.append(i)
    return out, prepared


def groups(runs: list, max_members: int | None = None) -> list[list]:
    """A partition of `runs` (order kept within and across lists): lists of two or more runs that may train
    as one stacked ensemble (same model kind, roll-out, architecture, data, device and recipe but for
    `MEMBER_FIELDS`; at most `max_members` each), and single runs — cached ones, those `why_separate` refuses,
    a second run of one stage, and runs without a partner."""
    plan, _ = _plan(list(runs), max_members)
    return [[runs[i] for i in group] for group in plan]


# ------------------------------------------------------------------------------------------ training
def train_stacked(runs: list, max_members: int | None = None) -> list[dict]:
    """Train `runs` (study `TrainRun`s), each stackable group as one ensemble, the rest through `train_run`;
    returns what `train_run` returns for each run, in order. See the module docstring."""
    from hrmlab.experiments.study.train_runs import train_run

    runs = list(runs)
    plan, prepared = _plan(runs, max_members)
    results: list[dict | None] = [None] * len(runs)
    for group in plan:
        if len(group) > 1:
            for i, summary in zip(group, _train_group([prepared[i] for i in group])):
                results[i] = summary
    from hrmlab.experiments.study.evaluation import with_evaluation

    for i, run in enumerate(runs):  # single runs, and members the group handed back (cache hits by now, or not)
        if results[i] is None:
            results[i] = train_run(run)  # evaluated there
        else:
            results[i] = with_evaluation(results[i], run.evaluation, run.opts)
    return results


def _try_lock(path: Path):
    """The stage lock `cached` takes (an open file holding it), or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    except OSError:  # a filesystem without locks: go on unlocked, as fileio.file_lock does
        pass
    return fh


def _unlock(fh) -> None:
    try:
        fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:
        pass
    fh.close()


def _train_group(members: list[_Prepared]) -> list[dict | None]:
    """Train `members` as one ensemble under their stage locks; None for a member left to `train_run` (its lock
    was busy, it became cached or partial meanwhile, too few members remained, or the ensemble refused)."""
    from hrmlab.experiments.grid.stages import link_model
    from hrmlab.stage_cache import LOCK_SUFFIX
    from hrmlab.train.ensemble import EnsembleUnsupported

    results: list[dict | None] = [None] * len(members)
    locks, chosen = [], []
    try:
        for i in sorted(range(len(members)), key=lambda j: str(members[j].stage.document)):
            p = members[i]
            fh = _try_lock(p.stage.document.with_name(p.stage.document.name + LOCK_SUFFIX))
            if fh is None:
                log.info("stage %s: another process is training it; it is not stacked", p.stage.label)
                continue
            locks.append(fh)
            found = p.stage.read(lambda doc: doc) if p.stage.marker.exists() else None
            if found is not None:  # finished by another process meanwhile
                log.info("stage %s: cached (%s)", p.stage.label, p.stage.document)
                link_model(p.run.opts, p.kind, found)
                results[i] = found
            elif _refusal(p) is None:
                chosen.append(i)
        if len(chosen) < 2:
            return results
        chosen.sort()
        t0 = time.perf_counter()
        try:
            summaries = _StackedRun([members[i] for i in chosen]).run()
        except EnsembleUnsupported as exc:
            log.warning("stacked training of %s refused (%s); training them separately",
                        ", ".join(members[i].run.describe() for i in chosen), exc)
            return results
        for i, summary in zip(chosen, summaries):
            p = members[i]
            if "diverged" not in summary:
                p.stage.write(summary, [summary["checkpoint"]])
                log.info("stage %s: done stacked (%d members) in %.1fs (%s)", p.stage.label, len(chosen),
                         time.perf_counter() - t0, p.stage.document)
                link_model(p.run.opts, p.kind, summary)
            results[i] = summary
        return results
    finally:
        for fh in locks:
            _unlock(fh)


@dataclass
class _Member:
    """One member's trainer state: what `_Trainer` keeps per run."""

    prep: _Prepared
    run_dir: Path
    cfg: object
    config: dict
    sampler: object
    metrics: object
    state: object
    window: object
    active: bool = True
    consecutive_bad: int = 0
    stopped_early: bool = False
    diverged: str | None = None
    digest: str | None = None
    exported: dict = field(default_factory=dict)


class _StackedRun:
    """The trainer's loop (`_Trainer.run`) for M members at once; see the module docstring."""

    def __init__(self, preps: list[_Prepared]):
        self.preps = preps

    # ------------------------------------------------------------------------------ setup
    def _setup(self):
        import torch

        from hrmlab.config import to_dict
        from hrmlab.errors import UserError
        from hrmlab.experiments.grid.training import open_sources
        from hrmlab.forecast.learned import check_rollout
        from hrmlab.forecast.loading import model_metadata
        from hrmlab.forecast.models import build_model
        from hrmlab.threads import flush_subnormals, use_cpu_threads
        from hrmlab.train.distributed import pick_device
        from hrmlab.train.ensemble import EnsembleStep, StackedEnsemble
        from hrmlab.train.trainer import ShardedBatchSampler, _MetricsWriter, _Progress, _Window

        first = self.preps[0]
        cfg = first.run.cfg
        check_rollout(build_model(first.model_cfg), cfg.forecast.rollout)
        if getattr(first.model_cfg, "out_steps", 1) != first.future:
            raise UserError(f"{cfg.forecast.rollout} roll-out: the model predicts {first.model_cfg.out_steps} steps "
                            f"per call, it needs {first.future}")
        self.device = device = pick_device(first.train_cfg.device)
        if device.type == "cpu":
            flush_subnormals()
            use_cpu_threads(first.train_cfg.cpu_threads)
        self.train_source, self.val_source = open_sources(str(first.run.data_paths.root), cfg.data.history,
                                                          first.has_val, future=first.future)
        models, self.members = [], []
        for p in self.preps:
            tc = p.train_cfg
            run_dir = p.stage_dir
            run_dir.mkdir(parents=True, exist_ok=True)
            meta = model_metadata(p.kind, p.model_cfg, p.run.cfg.world.position_scale, p.run.cfg.data.history,
                                  p.trained)
            model = build_model({"kind": p.kind, **to_dict(p.model_cfg)}, seed=int(tc.seed))  # as run_spec
            models.append(model.to(device=device, dtype=torch.float32))  # the fp32 precision's prepare_model
            sampler = ShardedBatchSampler(len(self.train_source), tc.batch_size, 1, 0, 1, tc.seed)
            self.members.append(_Member(p, run_dir, tc, {"train": dataclasses.asdict(tc), "forecaster": meta},
                                        sampler, _MetricsWriter(run_dir, True, False), _Progress(), _Window()))
        tc = first.train_cfg
        self.spe = self.members[0].sampler.steps_per_epoch
        self.total_steps = tc.epochs * self.spe if not tc.max_steps else min(tc.max_steps, tc.epochs * self.spe)
        self.ensemble = StackedEnsemble(models, device=device)
        self.step = EnsembleStep(self.ensemble, [m.cfg for m in self.members], self.total_steps)
        log.info("training %d stacked %s runs of %s params on %s, fp32, %d steps/epoch, %d steps total",
                 len(self.members), first.kind, f"{self.ensemble.num_parameters():,}", device, self.spe,
                 self.total_steps)

    # ------------------------------------------------------------------------------ helpers
    def _seconds(self) -> float:
        """A member's share of the group's training-loop wall time so far (see the module docstring)."""
        return (time.perf_counter() - self.t0) / len(self.members)

    def _fetch(self, step_in_epoch: int):
        from hrmlab.train.trainer import _to_device

        arrays = [self.train_source.get_batch(m.sampler.micro_batches(step_in_epoch)[0]) for m in self.members]
        return _to_device([np.stack(parts) for parts in zip(*arrays)], self.device)

    def _validate(self) -> list[float]:
        """The trainer's `validate` for every member: eval mode, its batches, float64 sums of loss × samples."""
        import torch

        from hrmlab.train.trainer import _to_device, mse_loss

        if self.val_source is None or len(self.val_source) == 0:
            return [math.nan] * len(self.members)
        cfg = self.members[0].cfg
        size = cfg.val_batch_size or max(1, cfg.batch_size)
        order = np.arange(len(self.val_source))
        m = len(self.members)
        total = torch.zeros(m, device=self.device, dtype=torch.float64)
        count = 0
        self.ensemble.eval()
        with torch.no_grad():
            for start in range(0, len(order), size):
                batch = _to_device(self.val_source.get_batch(order[start:start + size]), self.device)
                stacked = tuple(t.unsqueeze(0).expand(m, *t.shape) for t in batch)
                losses = self.ensemble.losses(stacked, mse_loss).float()
                total += losses.double() * len(batch[0])
                count += len(batch[0])
        self.ensemble.train()
        return (total / count).tolist() if count > 0 else [math.nan] * m

    def _save(self, i: int, name: str) -> None:
        from hrmlab.train.checkpoint import save_checkpoint

        member = self.members[i]
        st = member.state
        st.seconds = self._seconds()
        if st.step not in member.exported:  # best.pt and last.pt of one step share one export
            member.exported = {st.step: self.step.export_member(i)}
        model, optimizer, scheduler = member.exported[st.step]
        extra = {"progress": dataclasses.asdict(st), "hooks": {}, "world_size": 1, "grad_accum": 1}
        save_checkpoint(member.run_dir / name, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None,
                        step=st.step, epoch=st.epoch, config=member.config, extra=extra)

    def _log_window(self, member: _Member) -> None:
        from hrmlab.train.trainer import _num, _Window

        st, window = member.state, member.window
        row = {"kind": "train", "step": st.step, "epoch": st.epoch, "loss": _num(window.mean_loss()),
               "lr": window.lr, "grad_norm": _num(window.mean_grad_norm()),
               "samples_per_s": window.steps * member.cfg.batch_size / window.seconds if window.seconds else 0.0,
               "step_ms": 1000 * window.seconds / max(1, window.steps), "skipped": window.skipped}
        member.metrics.write(row)
        member.window = _Window()

    def _finish(self, i: int) -> None:
        """The member's training ended (run end, early stop, divergence): its final weights' digest."""
        from hrmlab.experiments.grid.torchrun_entry import parameter_digest

        member = self.members[i]
        member.active = False
        member.metrics.close()
        if member.diverged is None:
            member.digest = parameter_digest(self.ensemble.member(i))

    def _end_of_epoch(self, i: int, val: float, epoch_finished: bool) -> bool:
        """The trainer's `_end_of_epoch` for member i: validate (given), best.pt, last.pt; True on early stop."""
        from hrmlab.train.trainer import BEST_CHECKPOINT, LAST_CHECKPOINT, _num, note_validation

        member = self.members[i]
        st, cfg = member.state, member.cfg
        improved = note_validation(st, val)
        member.metrics.write({"kind": "val", "step": st.step, "epoch": st.epoch, "val_loss": _num(val),
                              "best_val_loss": _num(st.best_val_loss), "epoch_finished": epoch_finished})
        if epoch_finished:
            st.epoch += 1
            st.step_in_epoch = 0
        if improved:
            self._save(i, BEST_CHECKPOINT)
        stop = bool(cfg.early_stopping_patience) and st.epochs_without_improvement >= cfg.early_stopping_patience
        every = cfg.checkpoint_every_steps
        short_epochs = every and self.spe < every
        saved_this_step = every and st.step % every == 0
        if stop or st.step >= self.total_steps or not (short_epochs or saved_this_step):
            self._save(i, LAST_CHECKPOINT)
        return stop

    # ------------------------------------------------------------------------------ the loop
    def run(self) -> list[dict]:
        import torch

        from hrmlab.train.trainer import LAST_CHECKPOINT

        self.started = time.perf_counter()
        self._setup()
        self.t0 = time.perf_counter()  # the trainer's clock: its loop's wall time
        pool = ThreadPoolExecutor(max_workers=1)  # prefetches the next step's batches, as the trainer does
        step = epoch = step_in_epoch = 0
        spe, total = self.spe, self.total_steps
        epochs = self.members[0].cfg.epochs
        try:
            while epoch < epochs and step < total and any(m.active for m in self.members):
                for m in self.members:
                    m.sampler.set_epoch(epoch)
                pending = pool.submit(self._fetch, step_in_epoch) if step_in_epoch < spe else None
                while step_in_epoch < spe and step < total:
                    t0 = time.perf_counter()
                    batch = pending.result()
                    nxt = step_in_epoch + 1
                    pending = pool.submit(self._fetch, nxt) if nxt < spe and step + 1 < total else None
                    lrs = [schedule.current()[0] for schedule in self.step.schedules]  # the trainer logs these
                    result = self.step(batch)
                    step, step_in_epoch = step + 1, nxt
                    rows = torch.stack([result.loss, result.grad_norm, result.skipped.float()]).double().cpu().numpy()
                    seconds = (time.perf_counter() - t0) / len(self.members)
                    for i, member in enumerate(self.members):
                        if member.active:
                            self._after_step(i, step, step_in_epoch, (*rows[:, i], lrs[i]), seconds)
                    if not any(m.active for m in self.members):
                        break
                if pending is not None:
                    pending.cancel()
                epoch_finished = step_in_epoch >= spe
                vals = self._validate() if any(m.active for m in self.members) else []
                for i, member in enumerate(self.members):
                    if not member.active:
                        continue
                    if member.window.steps:
                        self._log_window(member)
                    if self._end_of_epoch(i, vals[i], epoch_finished):
                        member.stopped_early = True
                        log.info("%s: early stopping: %d epochs without improvement", member.prep.run.describe(),
                                 member.state.epochs_without_improvement)
                        self._finish(i)
                if epoch_finished:
                    epoch, step_in_epoch = epoch + 1, 0
                else:
                    break
        finally:
            pool.shutdown(wait=True)
            for m in self.members:
                m.metrics.close()
        for i, member in enumerate(self.members):
            if member.active:
                self._finish(i)
        loop, shared = time.perf_counter() - self.t0, time.perf_counter() - self.started
        return [self._summary(i, loop, shared, LAST_CHECKPOINT) for i in range(len(self.members))]

    def _after_step(self, i: int, step: int, step_in_epoch: int, row, seconds: float) -> None:
        """The trainer's per-step bookkeeping for member i: divergence, metrics window, periodic last.pt."""
        from hrmlab.train.trainer import LAST_CHECKPOINT

        member = self.members[i]
        st, cfg = member.state, member.cfg
        loss, grad_norm, skipped, lr = float(row[0]), float(row[1]), bool(row[2]), float(row[3])
        st.step, st.step_in_epoch = step, step_in_epoch
        member.consecutive_bad = member.consecutive_bad + 1 if skipped else 0
        if member.consecutive_bad >= cfg.max_consecutive_nonfinite:
            member.diverged = (f"training diverged: {member.consecutive_bad} consecutive non-finite losses up to "
                               f"step {step}; lower train.lr, set train.grad_clip, or use fp32/bf16")
            log.warning("%s at lr %g, seed %d: %s", member.prep.kind, cfg.lr, cfg.seed, member.diverged)
            self._finish(i)
            return
        if skipped:
            log.warning("%s step %d: non-finite loss or gradient, step skipped", member.prep.run.describe(), step)
        member.window.add(loss, grad_norm, lr, skipped, seconds)
        if step % max(1, cfg.log_every_steps) == 0 or step == 1:
            self._log_window(member)
        if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
            self._save(i, LAST_CHECKPOINT)

    def _summary(self, i: int, loop: float, shared: float, last_name: str) -> dict:
        """What stage_train stores for member i (train_forecaster's summary plus seconds and key)."""
        from hrmlab.experiments.grid.torchrun_entry import RESULT_FILE
        from hrmlab.experiments.grid.training import score_on_validation
        from hrmlab.forecast.models import build_model, count_parameters
        from hrmlab.train.trainer import BEST_CHECKPOINT, TrainResult

        member = self.members[i]
        p, st = member.prep, member.state
        if member.diverged is not None:
            return {"diverged": member.diverged, "best_val_loss": None}  # what train_run returns
        t0 = time.perf_counter()
        share, loop_share = shared / len(self.members), loop / len(self.members)
        best, last = member.run_dir / BEST_CHECKPOINT, member.run_dir / last_name
        result = TrainResult(
            best_val_loss=st.best_val_loss if math.isfinite(st.best_val_loss) else math.nan,
            final_val_loss=st.final_val_loss, steps=st.step, epochs_completed=st.epoch,
            samples_per_s=st.step * member.cfg.batch_size / loop_share if loop_share > 0 else 0.0,
            checkpoint_path=str(best if best.exists() else last), last_checkpoint_path=str(last),
            stopped_early=member.stopped_early, resumed_from_step=None, world_size=1, grad_accum=1,
            earlier_seconds=0.0).to_dict()
        result["rank_param_digests"] = [member.digest]
        (member.run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
        summary = dict(result)
        summary.update(kind=p.kind, checkpoint=summary["checkpoint_path"],
                       parameters=count_parameters(build_model(p.model_cfg)))
        if p.has_val:
            summary["forecast_metrics"] = score_on_validation(summary["checkpoint"], p.run.cfg.world, p.run.cfg.data)
        summary["seconds"] = round(share + time.perf_counter() - t0, 1)
        summary["key"] = p.key
        return summary
