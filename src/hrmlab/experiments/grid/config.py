"""The grid family's config: one dataclass tree per preset, loaded from `presets/*.yaml`.

A preset file only states what differs from the defaults below, plus its description, provenance and
the number the seed published. `--set key=value` overrides any field; unknown keys are errors.
`smoke()` shrinks any preset to seconds (tiny data, tiny widths, a few steps) for tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from hrmlab.config import NOT_IN_KEY, apply_overrides, from_dict
from hrmlab.data.collect import DataConfig
from hrmlab.evaluate.runner import EvalConfig
from hrmlab.forecast.hrm import HRMConfig
from hrmlab.forecast.hrm_act import HRMActConfig
from hrmlab.forecast.lstm import LSTMConfig
from hrmlab.forecast.trm import TRMConfig
from hrmlab.planning.spacetime_astar import PlannerConfig
from hrmlab.train.trainer import TrainConfig
from hrmlab.worlds.bounce_grid import BounceGridConfig


@dataclass
class HardwareConfig:
    """What the preset was designed for."""

    gpus: int = 0
    """GPUs the recipe expects (0 = CPU). With fewer, the global batch is kept by gradient accumulation."""
    gpu_type: str = ""
    """GPU model the seed used (A10G, A100, H100); informational, and the Modal GPU type."""


@dataclass
class CloudConfig:
    """Resources per stage on Modal (the adapter reads these; nothing is hard-coded there)."""

    collect_cpu: float = 2.0
    """CPU cores per data-collection container."""
    collect_memory_mb: int = 4096
    """Memory per data-collection container (MiB)."""
    collect_timeout_s: int = 3600
    """Timeout of one collection shard (s)."""
    train_gpu: str = ""
    """Modal GPU string for training, e.g. 'H100:8'; empty = derived from hardware (gpu_type:gpus)."""
    train_memory_mb: int = 65536
    """Memory of the training container (MiB)."""
    train_timeout_s: int = 86400
    """Timeout of the training function (s); checkpoints are committed so a retry resumes."""
    eval_cpu: float = 2.0
    """CPU cores per evaluation container."""
    eval_gpu: str = ""
    """GPU for evaluation containers of large learned models ('' = CPU)."""
    eval_timeout_s: int = 3600
    """Timeout of one evaluation chunk (s)."""
    checkpoint_commit_s: int = 300
    """How often (s) the training container commits checkpoints to the Volume."""


@dataclass
class ForecastConfig:
    """How the learned forecasters are trained to roll out and are evaluated (forecast/learned.py)."""

    rollout: Literal["window", "stateful", "direct"] = "window"
    """window: re-encode the sliding history per horizon step (the seed's; every hrm-cloud-* preset);
    stateful: encode once, advance the recurrence per step feeding back predictions (recurrent models;
    the same one-step training as window); direct: a K-step head predicts the whole horizon in one pass
    (K = planner.horizon), trained on the per-step displacement error over the K steps."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Learned models at evaluation: fp32, or bf16 autocast (for GPU evaluation of large models)."""


@dataclass
class ExperimentConfig:
    """A whole grid experiment: world → data → HRM + LSTM training → paired evaluation → report."""

    name: str = "custom"
    """Preset name (set by the loader)."""
    description: str = field(default="", metadata=NOT_IN_KEY)
    """One line for `hrmlab presets` (prose: not part of any cache key)."""
    provenance: str = field(default="", metadata=NOT_IN_KEY)
    """Which seed script this preset re-creates, and any deliberate deviation."""
    published: dict = field(default_factory=dict, metadata=NOT_IN_KEY)
    """The seed's published numbers for this experiment (free text, quoted in reports)."""
    family: Literal["grid"] = "grid"
    """Experiment family (diffusion presets use `hrmlab.experiments.diffusion`)."""
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    world: BounceGridConfig = field(default_factory=BounceGridConfig)
    data: DataConfig = field(default_factory=DataConfig)
    hrm: HRMConfig = field(default_factory=HRMConfig)
    lstm: LSTMConfig = field(default_factory=LSTMConfig)
    hrm_act: HRMActConfig = field(default_factory=HRMActConfig)
    """Model kind `hrm-act` (the HRM paper's design); trained when `models` lists it."""
    trm: TRMConfig = field(default_factory=TRMConfig)
    """Model kind `trm` (Tiny Recursive Model); trained when `models` lists it."""
    train_hrm: TrainConfig = field(default_factory=TrainConfig)
    train_lstm: TrainConfig = field(default_factory=TrainConfig)
    train_hrm_act: TrainConfig = field(default_factory=TrainConfig)
    train_trm: TrainConfig = field(default_factory=TrainConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The `standard` protocol run (the default, correct evaluation)."""
    seed_protocol: str = "seed-v3"
    """The original's protocol for this preset, run beside the main protocol (`eval.protocol`) for
    comparison with the seed; empty for presets with no seed counterpart (scenario suites)."""
    seed_episodes: int = 50
    """Episodes of the seed protocol (the original used 50)."""
    seed_time_index: Literal["aligned", "seed"] = "seed"
    """Planner time index for the seed-protocol run: `seed` replays the original's numbers (its
    off-by-one), `aligned` shows what the same episodes give with the fix."""
    seed_hrm_precision: Literal["fp32", "bf16"] = "fp32"
    """Precision of the HRM in the seed-protocol run: RobustFix and 8gpu_v2 evaluated theirs in bf16
    (here bf16 autocast; the main run always evaluates in fp32)."""
    models: list[str] = field(default_factory=lambda: ["hrm", "lstm"])
    """Learned models to train and evaluate, by kind: hrm, lstm, hrm-act, trm (forecast/models.py); each
    uses the config section of its name ('-' written '_') and `train_<section>`."""
    physics_forecasters: list[str] = field(default_factory=lambda: ["ignore", "zero", "constant-velocity",
                                                                     "bounce-aware", "oracle"])
    """Physics baselines evaluated beside the learned models (on the same episodes)."""
    device: str = "auto"
    """Torch device for training and learned-model evaluation: auto | cpu | cuda."""

    def train_config(self, model: str) -> TrainConfig:
        """The training recipe of model kind `model` (section `train_<kind>`, '-' written '_')."""
        return getattr(self, "train_" + _section(model))

    def model_config(self, model: str):
        """The architecture of model kind `model` (section `<kind>`, '-' written '_', e.g. `hrm_act`), with
        `out_steps` following the roll-out: planner.horizon for direct, else 1 (forecast.rollout is its one
        source of truth)."""
        cfg = getattr(self, _section(model))
        return dataclasses.replace(cfg, out_steps=self.planner.horizon if self.forecast.rollout == "direct" else 1)


def _section(model: str) -> str:
    from hrmlab.forecast.models import get_kind

    get_kind(model)  # an unknown kind is a UserError naming the valid ones
    return model.replace("-", "_")


def smoke(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same experiment at toy size: every stage runs for real in seconds."""
    # fp32: reduced precisions are slow on CPU and are tested by the trainer's own tests
    train = dict(epochs=1, max_steps=3, batch_size=32, checkpoint_every_steps=2, log_every_steps=1,
                 early_stopping_patience=0, precision="fp32")
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, train_episodes=24, val_episodes=8, reset_batch=8, episodes_per_shard=8),
        hrm=dataclasses.replace(cfg.hrm, d_model=min(cfg.hrm.d_model, 32), heads=min(cfg.hrm.heads, 4),
                                n_layers=min(cfg.hrm.n_layers, 1)),
        lstm=dataclasses.replace(cfg.lstm, hidden=min(cfg.lstm.hidden, 32)),
        hrm_act=dataclasses.replace(cfg.hrm_act, d_model=min(cfg.hrm_act.d_model, 32), heads=min(cfg.hrm_act.heads, 4),
                                    l_layers=1, h_layers=1),
        trm=dataclasses.replace(cfg.trm, d_model=min(cfg.trm.d_model, 32), heads=min(cfg.trm.heads, 4), layers=1),
        train_hrm=dataclasses.replace(cfg.train_hrm, **train),
        train_lstm=dataclasses.replace(cfg.train_lstm, **train),
        train_hrm_act=dataclasses.replace(cfg.train_hrm_act, **train),
        train_trm=dataclasses.replace(cfg.train_trm, **train),
        eval=dataclasses.replace(cfg.eval, episodes=12, chunk_size=12),
        seed_episodes=4,
    )


def load_experiment(data: dict, name: str, overrides=()) -> ExperimentConfig:
    """Preset dict → config. A suite protocol brings its own world: the preset trains on that world."""
    from hrmlab.errors import UserError
    from hrmlab.evaluate.protocols import get_protocol

    cfg = from_dict(ExperimentConfig, {**data, "name": name})
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    for model in cfg.models:
        if getattr(cfg, _section(model)).out_steps != 1:  # also: an unknown model kind fails here
            raise UserError(f"preset {name}: {model}.out_steps is set by forecast.rollout (direct: the planner's "
                            "horizon); remove it and set forecast.rollout=direct")
    if cfg.forecast.rollout == "stateful":  # fail before any data is collected: is every model recurrent?
        from hrmlab.forecast.learned import check_rollout
        from hrmlab.forecast.models import build_model

        for model in cfg.models:
            check_rollout(build_model(cfg.model_config(model)), "stateful")
    protocol = get_protocol(cfg.eval.protocol)
    if protocol.world is not None and not data.get("world"):
        # a preset without a world of its own, evaluated on a suite's protocol, runs in that suite's world
        # (a suite preset states it: it is the world's one definition); `--set world.*` applies on top
        cfg = dataclasses.replace(cfg, world=protocol.world)
        cfg = apply_overrides(cfg, [o for o in overrides if o.split("=", 1)[0].strip().startswith("world.")])
    if cfg.seed_protocol:
        get_protocol(cfg.seed_protocol)
    for f in dataclasses.fields(cfg):  # one source of truth: the run decides devices and GPU counts
        recipe = getattr(cfg, f.name)
        if isinstance(recipe, TrainConfig) and (recipe.gpus, recipe.device) != (1, "auto"):
            raise UserError(f"{f.name}.gpus / {f.name}.device are set for the whole run: use hardware.gpus "
                            "(the recipe's GPU count), --gpus (GPUs to use) and device (auto | cpu | cuda)")
    return cfg


def describe(cfg: ExperimentConfig) -> str:
    """One line for `hrmlab presets`: exact parameter counts, data size, hardware, protocols."""
    from hrmlab.forecast.models import build_model, count_parameters

    models = " · ".join(f"{m.upper()} {count_parameters(build_model(cfg.model_config(m))):,} params"
                        for m in cfg.models)
    samples = cfg.data.train_episodes * cfg.world.num_obstacles * (cfg.data.steps_per_episode - cfg.data.history)
    gpus = f"{cfg.hardware.gpus}× {cfg.hardware.gpu_type}" if cfg.hardware.gpus else "CPU"
    protocols = " + ".join(p for p in (cfg.seed_protocol, cfg.eval.protocol) if p)
    return (f"{models} · {cfg.data.train_episodes:,} episodes ({samples / 1e6:.2f}M samples) · {gpus} · "
            f"protocol {protocols}")
