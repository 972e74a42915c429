"""The training loop: learning, resume after SIGKILL, checkpoints errors, non-finite steps, precisions,
sampling, gradient accumulation, schedules."""

import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hrmlab.data.base import ArraySource
from hrmlab.errors import UserError
from hrmlab.forecast.hrm import HRMConfig
from hrmlab.forecast.models import build_model
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.train.checkpoint import load_checkpoint, save_checkpoint
from hrmlab.train.optim import Lamb


def cosine_lr(step: int, total_steps: int, max_lr: float, min_lr: float) -> float:
    """The cosine schedule's closed form for 0-based `step`: the oracle the trainer's schedule is checked against."""
    span = max(1, total_steps - 1)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * min(step, span) / span))
from hrmlab.train.precision import make_precision
from hrmlab.train.trainer import ShardedBatchSampler, TrainConfig, TrainHooks, read_metrics, train

HISTORY = 10


def straight_tracks(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Constant-velocity tracks in normalised units: the displacement is visible in the history."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0.2, 0.8, (n, 1, 2))
    vel = rng.normal(0.0, 0.05, (n, 1, 2))
    x = start + np.arange(HISTORY)[None, :, None] * vel
    return x.astype(np.float32), vel[:, 0].astype(np.float32)


@pytest.fixture(scope="module")
def sources():
    x, y = straight_tracks(1280)
    return ArraySource(x[:1024], y[:1024]), ArraySource(x[1024:], y[1024:])


def small_lstm():
    return build_model(LSTMConfig(hidden=16), seed=0)


def quick_cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=128, lr=1e-2, log_every_steps=1, checkpoint_every_steps=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def test_loss_decreases_on_toy_data(sources, tmp_path):
    train_src, val_src = sources
    result = train(small_lstm(), train_src, val_src, quick_cfg(epochs=6), tmp_path, progress=False)
    losses = train_losses(tmp_path)
    assert result.steps == 6 * 8 and sorted(losses) == list(range(1, 49))
    assert np.mean([losses[s] for s in range(44, 49)]) < 0.2 * np.mean([losses[s] for s in range(1, 5)])
    zero_motion_mse = float(np.mean(val_src.y ** 2))
    assert result.best_val_loss < 0.5 * zero_motion_mse
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    vals = [r for r in read_metrics(tmp_path) if r["kind"] == "val"]
    assert [r["epoch"] for r in vals] == list(range(6))


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {test_dir!r})
    from test_trainer import straight_tracks, small_lstm, quick_cfg
    from hrmlab.data.base import ArraySource
    from hrmlab.train.trainer import TrainHooks, train

    class KillAt(TrainHooks):
        def after_step(self, model, step):
            if step == {kill_step}:
                os.kill(os.getpid(), signal.SIGKILL)

    x, y = straight_tracks(1280)
    train(small_lstm(), ArraySource(x[:1024], y[:1024]), ArraySource(x[1024:], y[1024:]),
          quick_cfg(checkpoint_every_steps=4), {run_dir!r}, progress=False, hooks=KillAt())
""")


def test_resume_after_sigkill_mid_epoch_continues_the_loss_curve(sources, tmp_path):
    train_src, val_src = sources
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    train(small_lstm(), train_src, val_src, quick_cfg(checkpoint_every_steps=4), reference_dir, progress=False)

    script = KILLED_RUN.format(test_dir=os.path.dirname(__file__), kill_step=6, run_dir=str(killed_dir))
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL
    assert max(train_losses(killed_dir)) == 5  # it logged step 5 after the step-4 checkpoint, died in step 6
    assert load_checkpoint(killed_dir / "last.pt", model=small_lstm())["step"] == 4

    killed_progress = torch.load(killed_dir / "last.pt", weights_only=False)["extra"]["progress"]
    assert killed_progress["step"] == 4 and killed_progress["seconds"] > 0  # the killed call's time to step 4

    result = train(small_lstm(), train_src, val_src, quick_cfg(checkpoint_every_steps=4), killed_dir, progress=False)
    assert result.resumed_from_step == 4 and result.steps == 16
    assert result.earlier_seconds == killed_progress["seconds"]  # the run's cost = this call + the killed call's
    resumed, reference = train_losses(killed_dir), train_losses(reference_dir)
    assert sorted(resumed) == sorted(reference) == list(range(1, 17))  # no duplicated or missing steps
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-9), step
    assert result.final_val_loss == pytest.approx(
        [r for r in read_metrics(reference_dir) if r["kind"] == "val"][-1]["val_loss"], rel=1e-5)


def test_resume_finished_run_does_nothing_more(sources, tmp_path):
    train_src, val_src = sources
    first = train(small_lstm(), train_src, val_src, quick_cfg(epochs=1), tmp_path, progress=False)
    assert first.earlier_seconds == 0.0 and first.resumed_from_step is None
    again = train(small_lstm(), train_src, val_src, quick_cfg(epochs=1), tmp_path, progress=False)
    assert again.steps == first.steps and again.resumed_from_step == first.steps
    recorded = torch.load(tmp_path / "last.pt", weights_only=False)["extra"]["progress"]["seconds"]
    assert again.earlier_seconds == recorded > 0


def test_resume_from_a_checkpoint_without_training_time_says_the_time_is_unknown(sources, tmp_path):
    """Checkpoints written before progress recorded `seconds` still resume; the earlier time is None, not 0."""
    train_src, val_src = sources
    train(small_lstm(), train_src, val_src, quick_cfg(epochs=1), tmp_path, progress=False)
    payload = torch.load(tmp_path / "last.pt", weights_only=False)
    del payload["extra"]["progress"]["seconds"]
    torch.save(payload, tmp_path / "last.pt")
    again = train(small_lstm(), train_src, val_src, quick_cfg(epochs=2), tmp_path, progress=False)
    assert again.resumed_from_step == 8 and again.steps == 16 and again.earlier_seconds is None
    assert torch.load(tmp_path / "last.pt", weights_only=False)["extra"]["progress"]["seconds"] is None


def test_checkpoint_errors_are_user_errors(tmp_path):
    model = small_lstm()
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", model=model)
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(tmp_path / "corrupt.pt", model=model)
    save_checkpoint(tmp_path / "lstm.pt", model=model, step=3, epoch=1, config={"a": 1}, extra={"b": 2})
    meta = load_checkpoint(tmp_path / "lstm.pt", model=small_lstm())
    assert meta == {"step": 3, "epoch": 1, "config": {"a": 1}, "extra": {"b": 2}}
    with pytest.raises(UserError, match="different model"):
        load_checkpoint(tmp_path / "lstm.pt", model=build_model(LSTMConfig(hidden=32)))
    with pytest.raises(UserError, match="different model"):
        load_checkpoint(tmp_path / "lstm.pt", model=build_model(HRMConfig(d_model=16)))


def test_resume_with_an_incompatible_model_is_a_user_error(sources, tmp_path):
    train_src, val_src = sources
    train(small_lstm(), train_src, val_src, quick_cfg(epochs=1), tmp_path, progress=False)
    with pytest.raises(UserError, match="different model"):
        train(build_model(LSTMConfig(hidden=8)), train_src, val_src, quick_cfg(epochs=2), tmp_path, progress=False)


def test_non_finite_losses_are_skipped(sources, tmp_path):
    train_src, val_src = sources
    x, y = train_src.x.copy(), train_src.y.copy()
    x[:2] = np.nan  # at most two batches per epoch contain a poisoned sample
    model = small_lstm()
    result = train(model, ArraySource(x, y), val_src, quick_cfg(epochs=2), tmp_path, progress=False)
    rows = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    skipped = [r for r in rows if r["skipped"]]
    assert skipped and all(r["loss"] is None for r in skipped)
    assert len(skipped) < len(rows)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(result.best_val_loss)


def test_persistent_non_finite_losses_abort_with_a_clear_error(sources, tmp_path):
    train_src, val_src = sources
    x = np.full_like(train_src.x, np.nan)
    with pytest.raises(UserError, match="diverged"):
        train(small_lstm(), ArraySource(x, train_src.y), val_src, quick_cfg(max_consecutive_nonfinite=3), tmp_path,
              progress=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-pure", "fp16"])
def test_precision_modes_train_on_cpu(precision, sources, tmp_path):
    try:
        make_precision(precision, torch.device("cpu"))
    except UserError as exc:
        pytest.skip(str(exc))
    train_src, val_src = sources
    model = build_model(HRMConfig(variant="deep", d_model=16, heads=2, block="gated", init_std=0.02), seed=0)
    result = train(model, train_src, val_src, quick_cfg(epochs=2, lr=3e-3, precision=precision), tmp_path,
                   progress=False)
    expected_dtype = torch.bfloat16 if precision == "bf16-pure" else torch.float32
    assert next(model.parameters()).dtype == expected_dtype
    losses = [loss for _, loss in sorted(train_losses(tmp_path).items())]
    assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert result.final_val_loss < float(np.mean(val_src.y ** 2))  # beats predicting zero motion


def test_sampler_is_seeded_and_world_size_independent():
    def global_batch(world, accum, epoch, step):
        parts = []
        for rank in range(world):
            sampler = ShardedBatchSampler(1000, 96, world, rank, accum, seed=5)
            sampler.set_epoch(epoch)
            parts += sampler.micro_batches(step)
        return np.sort(np.concatenate(parts))

    one = global_batch(1, 1, 0, 3)
    assert len(one) == 96 and len(np.unique(one)) == 96
    np.testing.assert_array_equal(one, global_batch(2, 1, 0, 3))
    np.testing.assert_array_equal(one, global_batch(4, 2, 0, 3))
    assert not np.array_equal(one, global_batch(1, 1, 1, 3))  # set_epoch reshuffles
    with pytest.raises(UserError):
        ShardedBatchSampler(10, 96, 1, 0, 1, seed=0)


def test_gradient_accumulation_keeps_the_global_batch(sources, tmp_path):
    """A preset for 4 GPUs on one process accumulates 4 micro-batches: same curve as one big batch."""
    train_src, val_src = sources
    full = train(small_lstm(), train_src, val_src, quick_cfg(epochs=1), tmp_path / "full", progress=False)
    accum = train(small_lstm(), train_src, val_src, quick_cfg(epochs=1, gpus=4), tmp_path / "accum", progress=False)
    assert full.grad_accum == 1 and accum.grad_accum == 4
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "accum")
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4), step


def test_lamb_cosine_and_onecycle_schedules(sources, tmp_path):
    train_src, val_src = sources
    cfg = quick_cfg(epochs=1, optimizer="lamb", weight_decay=0.01, schedule="cosine", lr=3e-3, min_lr=1e-5)
    result = train(small_lstm(), train_src, val_src, cfg, tmp_path / "lamb", progress=False)
    rows = [r for r in read_metrics(tmp_path / "lamb") if r["kind"] == "train"]
    assert rows[0]["lr"] == pytest.approx(3e-3) and rows[-1]["lr"] == pytest.approx(1e-5, rel=1e-6)
    assert [r["lr"] for r in rows] == pytest.approx([cosine_lr(i, 8, 3e-3, 1e-5) for i in range(8)])
    assert math.isfinite(result.final_val_loss)
    cfg = quick_cfg(epochs=2, schedule="onecycle", lr=3e-3)
    train(small_lstm(), train_src, val_src, cfg, tmp_path / "onecycle", progress=False)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "onecycle") if r["kind"] == "train"]
    peak = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(3e-3 / 25)  # PyTorch defaults: div_factor 25, pct_start 0.3
    assert lrs[peak] == pytest.approx(3e-3, rel=0.05) and peak == round(0.3 * 16) - 1 and lrs[-1] < 1e-6


def test_lamb_trust_ratio_step():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = Lamb([w], lr=0.1, weight_decay=0.0)
    w.grad = torch.tensor([1.0, 0.0])
    opt.step()
    # first Adam step: update = sign(grad) = [1, 0] (‖u‖ = 1), trust = ‖w‖ / ‖u‖ = 5
    torch.testing.assert_close(w.detach(), torch.tensor([3.0 - 0.5, 4.0]), rtol=1e-4, atol=1e-4)


def test_early_stopping_and_custom_loss_hook(sources, tmp_path):
    train_src, val_src = sources
    calls = []

    def zero_lr_loss(model, batch):
        calls.append(len(batch))
        return torch.nn.functional.l1_loss(model(batch[0]), batch[1])

    class Counter(TrainHooks):
        def __init__(self):
            self.steps = 0

        def after_step(self, model, step):
            self.steps += 1

        def state_dict(self):
            return {"steps": self.steps}

    hooks = Counter()
    cfg = quick_cfg(epochs=10, lr=0.0, early_stopping_patience=2)
    result = train(small_lstm(), train_src, val_src, cfg, tmp_path, progress=False, loss_fn=zero_lr_loss, hooks=hooks)
    assert result.stopped_early and result.epochs_completed == 3 and hooks.steps == 24
    assert calls and all(n == 2 for n in calls)
    assert load_checkpoint(tmp_path / "last.pt", model=small_lstm())["extra"]["hooks"] == {"steps": 24}


def test_without_a_progress_bar_progress_goes_to_the_log(sources, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("hrmlab.progress.LOG_EVERY_S", 0.0)
    train_src, val_src = sources
    with caplog.at_level("INFO", logger="hrmlab.progress"):
        train(small_lstm(), train_src, val_src, quick_cfg(epochs=1), tmp_path, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "hrmlab.progress"]
    # one line per step but the last (the epoch's validation line reports the end), with loss and lr
    assert [line.split(",")[0] for line in lines] == [f"train: {step}/8 steps" for step in range(1, 8)]
    assert all(" s left (loss=" in line and ", lr=" in line for line in lines)
