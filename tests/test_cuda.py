"""CUDA paths, skipped without a GPU (CI has none; they run on a lent GPU machine, docs/benchmarks.md says
when): every training precision on the GPU, a GPU-trained checkpoint evaluated on the CPU, forecasts that
agree with the CPU's, bf16 evaluation, one GPU per process, and NCCL DDP where a machine has two GPUs.

The rest of the suite runs on the GPU too on such a machine: training and evaluation default to
device `auto`, which picks CUDA there."""

import json

import numpy as np
import pytest
import torch

from hrmlab.data.base import ArraySource
from hrmlab.errors import UserError
from hrmlab.evaluate.episodes import make_episodes, warm_up
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.forecast.base import Observation
from hrmlab.forecast.learned import LearnedForecaster
from hrmlab.forecast.models import build_model
from hrmlab.presets import resolve
from hrmlab.experiments.study import StudyConfig
from hrmlab.train.checkpoint import load_checkpoint
from hrmlab.train.distributed import pick_device
from hrmlab.train.trainer import TrainConfig, read_metrics, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

STUDY_MODELS = StudyConfig().models
BF16_TOL = 0.15
"""bf16 autocast rounds the model's inputs, positions of ~0.5 normalised units, to 8 significant bits
(up to ~2e-3 absolute): against displacements of ~0.02 that is up to ~10% of the output before any
arithmetic (CPU bf16 measured 5.8% on an untrained TRM's first step). A wrong kernel or a missed cast
gives errors of order 1."""


def tracks(n: int, history: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    start = rng.uniform(0.2, 0.8, (n, 1, 2))
    vel = rng.normal(0.0, 0.02, (n, 1, 2))
    x = (start + np.arange(history)[None, :, None] * vel).astype(np.float32)
    return x, vel[:, 0].astype(np.float32)


@pytest.fixture(scope="module")
def quick():
    """quick's models with the plain displacement output: the forecast is the network's own output, not a
    small correction to constant velocity that would dominate every comparison below."""
    return resolve("quick", ["forecast.rollout=stateful"] +
                   [f"{kind.replace('-', '_')}.output=displacement" for kind in STUDY_MODELS])


@pytest.fixture(scope="module")
def observation(quick):
    protocol = get_protocol("standard")
    state = make_episodes(protocol, quick.world, np.arange(64))
    return Observation(warm_up(quick.world, state, protocol.warmup, quick.data.history), state, quick.world)


def displacement(forecaster, obs, horizon):
    """The forecast relative to the last observed position: positions themselves are tens of cells, so a
    relative error on them would hide an error in the motion."""
    return forecaster.forecast(obs, horizon) - obs.history[:, :, -1:, :]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-pure", "fp16"])
@pytest.mark.parametrize("kind", STUDY_MODELS)
def test_every_study_model_trains_on_cuda_in_every_precision(kind, precision, quick, tmp_path):
    x, y = tracks(2048, quick.data.history)
    model = build_model(quick.model_config(kind), seed=0)
    cfg = TrainConfig(epochs=3, batch_size=256, lr=3e-3, precision=precision, device="cuda", log_every_steps=1,
                      checkpoint_every_steps=0, seed=0)
    result = train(model, ArraySource(x[:1792], y[:1792]), ArraySource(x[1792:], y[1792:]), cfg, tmp_path,
                   progress=False)
    assert next(model.parameters()).device.type == "cuda"
    assert next(model.parameters()).dtype == (torch.bfloat16 if precision == "bf16-pure" else torch.float32)
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert len(losses) == 21 and all(np.isfinite(losses)) and np.isfinite(result.best_val_loss)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns


def test_a_gpu_trained_checkpoint_forecasts_the_same_on_the_cpu(quick, observation, tmp_path):
    x, y = tracks(2048, quick.data.history)
    model = build_model(quick.model_config("lstm"), seed=0)
    cfg = TrainConfig(epochs=1, batch_size=256, lr=3e-3, device="cuda", checkpoint_every_steps=0)
    result = train(model, ArraySource(x[:1792], y[:1792]), ArraySource(x[1792:], y[1792:]), cfg, tmp_path,
                   progress=False)
    on_cpu = build_model(quick.model_config("lstm"), seed=1)
    load_checkpoint(result.checkpoint_path, model=on_cpu)  # map_location cpu: a laptop evaluates it
    on_gpu = build_model(quick.model_config("lstm"), seed=1)
    load_checkpoint(result.checkpoint_path, model=on_gpu)
    args = (quick.world.grid_size, quick.data.history)
    cpu = displacement(LearnedForecaster(on_cpu, *args, device="cpu", rollout="stateful"), observation, 20)
    gpu = displacement(LearnedForecaster(on_gpu, *args, device="cuda", rollout="stateful"), observation, 20)
    # fp32 on both; cuDNN may use TF32 (10-bit mantissa) inside the LSTM: ~1e-3 relative at most
    assert np.linalg.norm(gpu - cpu) / np.linalg.norm(cpu) < 2e-3


def perturbed(quick, kind: str, scale: float):
    """An untrained model moved away from its zero-initialised head, so that its output depends on every weight."""
    model = build_model(quick.model_config(kind), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("kind", STUDY_MODELS)
def test_cuda_one_step_outputs_match_the_cpu_and_bf16_stays_close(kind, quick, observation):
    """Every kernel of one forward, without a roll-out's compounding: fp32 agrees to TF32 precision at most
    (cuDNN), bf16 autocast within BF16_TOL."""
    model = perturbed(quick, kind, 0.02)
    x = torch.as_tensor(observation.history[:, :, -quick.data.history:].reshape(-1, quick.data.history, 2)
                        / quick.world.grid_size, dtype=torch.float32)
    with torch.no_grad():
        cpu = model(x).numpy()
        gpu_model = model.to("cuda")
        gpu = gpu_model(x.cuda()).cpu().numpy()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            bf16 = gpu_model(x.cuda()).float().cpu().numpy()
    assert np.linalg.norm(cpu) > 0 and np.isfinite(gpu).all() and np.isfinite(bf16).all()
    assert rel_err(gpu, cpu) < 2e-3
    assert rel_err(bf16, cpu) < BF16_TOL


@pytest.mark.parametrize("kind", STUDY_MODELS)
@pytest.mark.parametrize("rollout", ["window", "stateful"])
def test_cuda_roll_outs_match_the_cpu(kind, rollout, quick, observation):
    """The forecaster's device path (one copy in, the roll-out on the GPU, one copy out) gives the CPU's
    forecast; bf16 evaluation keeps the first step, which the planner weighs most, close."""
    model = perturbed(quick, kind, 0.005)  # small: a random model's 20-step roll-out must not be chaotic
    args = (quick.world.grid_size, quick.data.history)
    try:
        cpu_fc = LearnedForecaster(model, *args, device="cpu", rollout=rollout)
    except UserError:
        pytest.skip(f"{kind} has no {rollout} roll-out")
    cpu = displacement(cpu_fc, observation, 20)
    gpu = displacement(LearnedForecaster(model, *args, device="cuda", rollout=rollout), observation, 20)
    bf16 = displacement(LearnedForecaster(model, *args, device="cuda", dtype="bf16", rollout=rollout), observation, 20)
    assert np.linalg.norm(cpu) > 0 and np.isfinite(gpu).all() and np.isfinite(bf16).all()
    assert rel_err(gpu, cpu) < 2e-3
    assert rel_err(bf16[:, :, 0], cpu[:, :, 0]) < BF16_TOL


def test_more_processes_than_gpus_is_one_clear_error():
    gpus = torch.cuda.device_count()
    assert pick_device("auto", gpus - 1) == torch.device(f"cuda:{gpus - 1}")
    with pytest.raises(UserError, match=f"has no GPU: the node has {gpus}"):
        pick_device("auto", gpus)
    assert pick_device("cpu", gpus) == torch.device("cpu")  # gloo on CPU needs no GPU per process


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank: 2 GPUs")
def test_two_process_nccl_ddp_keeps_ranks_identical(tmp_path):
    from hrmlab.experiments.grid.torchrun_entry import RESULT_FILE, launch_torchrun

    x, y = tracks(768, 10)
    for name, arr in (("tx", x[:640]), ("ty", y[:640]), ("vx", x[640:]), ("vy", y[640:])):
        np.save(tmp_path / f"{name}.npy", arr)
    spec = {"run_dir": str(tmp_path / "ddp"),
            "model": {"kind": "hrm", "variant": "deep", "d_model": 16, "heads": 2, "block": "gated", "init_std": 0.02},
            "train": {"epochs": 2, "batch_size": 128, "lr": 3e-3, "max_steps": 6, "device": "auto"},
            "data": {"kind": "npy", **{k: str(tmp_path / f"{n}.npy") for k, n in
                                       (("train_x", "tx"), ("train_y", "ty"), ("val_x", "vx"), ("val_y", "vy"))}},
            "progress": False}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    launch_torchrun(tmp_path / "spec.json", nproc=2, timeout=300, capture=True)
    result = json.loads((tmp_path / "ddp" / RESULT_FILE).read_text())
    assert result["world_size"] == 2 and result["steps"] == 6
    assert len(set(result["rank_param_digests"])) == 1
