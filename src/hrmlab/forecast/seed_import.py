"""Weights trained by the original hrm-cloud scripts, loaded into hrmlab's models.

`load_seed_model(script, state_dict, kind)` rebuilds the model class of one original script (its stem,
e.g. `hrm_cloud_8gpu_v2`) at that script's CONFIG sizes (or the sizes given), maps the original
parameter names onto hrmlab's, and returns an eval-mode module that maps a (B, history, 2) history to a
(B, 2) displacement exactly as the original did, in the original's input units (`SeedScript.grid_scale`:
v1 fed raw cell coordinates, every later script positions / grid size). `load_seed_forecaster` wraps an
original checkpoint file as a planner forecaster (`hrmlab evaluate --forecasters NAME=seed:SCRIPT:PATH`).

The table below is what the scripts' classes and CONFIGs were (SPEC §4). tests/test_seed_models.py checks
every entry against the original classes' own outputs and initial weights.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hrmlab.errors import UserError
from hrmlab.forecast.hrm import HRMConfig
from hrmlab.forecast.models import build_model
from hrmlab.forecast.lstm import LSTMConfig

GRID_SIZE = 20
"""Every original script's grid (SPEC §2.1)."""


@dataclass(frozen=True)
class SeedScript:
    """One original script: its HRM class at CONFIG size, its LSTM, and how it fed positions to them."""

    preset: str
    """The hrmlab preset that re-creates the script."""
    hrm: HRMConfig
    """Its HRM class and CONFIG sizes, as an HRMConfig."""
    lstm: LSTMConfig
    """Its LSTMPredictor."""
    history: int = 20
    """obs_history: positions per model input."""
    raw_coordinates: bool = False
    """v1 fed raw cell coordinates (0..20) to its models; later scripts divided positions by the grid size."""

    @property
    def grid_scale(self) -> float:
        """What positions in cells are divided by before the model sees them."""
        return 1.0 if self.raw_coordinates else float(GRID_SIZE)


def _sapient(d: int, k: int, detach: bool) -> HRMConfig:
    return HRMConfig(variant="sapient", d_model=d, n_layers=1, heads=4, h_period=k, block="plain",
                     rmsnorm="original", norm_eps=1e-12, norm_eps_mode="original", detach_h_input=detach)


def _deep(d: int, layers: int, heads: int, block: str, init_std: float, eps: float, **extra) -> HRMConfig:
    return HRMConfig(variant="deep", d_model=d, n_layers=layers, heads=heads, h_period=2, block=block,
                     rmsnorm="original", norm_eps=eps, norm_eps_mode="original", detach_h_input=True,
                     init_std=init_std, **extra)


SEED_SCRIPTS: dict[str, SeedScript] = {
    "hrm_cloud": SeedScript("hrm-cloud", _sapient(256, 3, detach=False), LSTMConfig(hidden=256), history=10,
                            raw_coordinates=True),
    "hrm_cloudv2": SeedScript("hrm-cloud-v2", _sapient(256, 3, detach=False), LSTMConfig(hidden=256), history=10),
    "hrm_cloudv3": SeedScript("hrm-cloud-v3", _sapient(128, 2, detach=True), LSTMConfig(hidden=128)),
    "hrm_cloudBoosted": SeedScript("hrm-cloud-boosted", _sapient(128, 2, detach=True), LSTMConfig(hidden=128)),
    "hrm_cloudMid": SeedScript("hrm-cloud-mid", _deep(256, 2, 4, "gated", 0.01, 1e-6), LSTMConfig(hidden=256)),
    "hrm_cloudFullScale": SeedScript("hrm-cloud-fullscale", _deep(512, 4, 8, "plain", 0.02, 1e-12),
                                     LSTMConfig(hidden=512)),
    "hrm_cloudFullScaleRobustFix": SeedScript(
        "hrm-cloud-robustfix", _deep(512, 4, 8, "gated", 0.01, 1e-6, initial_state="random", initial_state_std=0.01),
        LSTMConfig(hidden=512)),
    "hrm_cloudFullScaleSplit": SeedScript("hrm-cloud-split", _deep(512, 4, 8, "gated", 0.01, 1e-6),
                                          LSTMConfig(hidden=512)),
    "hrm_cloud_8gpu": SeedScript("hrm-cloud-8gpu", _deep(512, 4, 8, "gated", 0.01, 1e-6), LSTMConfig(hidden=512)),
    "hrm_cloud_8gpu_v2": SeedScript(
        "hrm-cloud-8gpu-v2",
        HRMConfig(variant="encoder", d_model=512, n_layers=4, heads=8, h_period=2, encoder_repeats=2, block="gated",
                  rmsnorm="standard", norm_eps=1e-6, norm_eps_mode="original", ffn="gelu", init_std=0.01),
        LSTMConfig(hidden=256, dropout=0.1)),
}

KINDS = ("hrm", "lstm")


def get_script(script: str) -> SeedScript:
    if script not in SEED_SCRIPTS:
        raise UserError(f"unknown original script {script!r}; valid choices: {', '.join(SEED_SCRIPTS)}")
    return SEED_SCRIPTS[script]


def model_config(script: str, kind: str = "hrm", *, hidden_dim: int | None = None, k_step: int | None = None,
                 num_heads: int | None = None, num_layers: int | None = None):
    """The hrmlab config of `script`'s HRM or LSTM; the keyword arguments are the original constructor's
    (None keeps the script's CONFIG value)."""
    seed = get_script(script)
    if kind == "lstm":
        if any(v is not None for v in (k_step, num_heads, num_layers)):
            raise UserError("the original LSTMPredictor takes only hidden_dim")
        return seed.lstm if hidden_dim is None else dataclasses.replace(seed.lstm, hidden=hidden_dim)
    if kind != "hrm":
        raise UserError(f"unknown model kind {kind!r}; valid choices: {', '.join(KINDS)}")
    cfg = seed.hrm
    if num_layers is not None and cfg.variant == "sapient":
        raise UserError(f"{script}'s SapientHRM has one L and one H block; it takes no num_layers")
    changes = {"d_model": hidden_dim, "heads": num_heads, "n_layers": num_layers, "h_period": k_step}
    if cfg.variant == "encoder":
        changes["encoder_repeats"] = k_step  # 8gpu_v2 ran its H blocks k_step times
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})


# ------------------------------------------------------------------------------------------ names

_PREFIXES = ("module.", "_orig_mod.")
"""Wrappers the originals may have saved through: DataParallel / DDP, torch.compile."""

_RENAMES_RECURRENT = [
    (r"^L_block\.", "l_blocks.0."), (r"^H_block\.", "h_blocks.0."),
    (r"^L_blocks\.", "l_blocks."), (r"^H_blocks\.", "h_blocks."),
    (r"\.norm([12])\.g$", r".norm\1.weight"),
]
_RENAMES_ENCODER = [
    (r"^L_blocks\.", "low_blocks."), (r"^H_blocks\.", "high_blocks."),
    (r"\.norm\.g$", ".norm1.weight"), (r"\.norm2\.g$", ".norm2.weight"),
    (r"\.ffn\.0\.", ".ffn.fc1."), (r"\.ffn\.2\.", ".ffn.fc2."),
    (r"^out\.", "head."),
]
_RENAMES_LSTM = [(r"^fc\.", "head.")]


def strip_wrappers(state_dict: dict) -> dict:
    """Drop DataParallel/DDP `module.` and torch.compile `_orig_mod.` prefixes (nested ones too)."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def hrmlab_names(state_dict: dict, cfg) -> dict:
    """An original state_dict (wrapper prefixes allowed) under hrmlab's parameter names for `cfg`."""
    if isinstance(cfg, LSTMConfig):
        rules = _RENAMES_LSTM
    else:
        rules = _RENAMES_ENCODER if cfg.variant == "encoder" else _RENAMES_RECURRENT
    renamed = {}
    for key, value in strip_wrappers(state_dict).items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    return renamed


def detect_kind(state_dict: dict) -> str:
    """'lstm' for an LSTMPredictor state_dict (it holds `lstm.weight_ih_l0`), 'hrm' otherwise."""
    return "lstm" if any(k.startswith("lstm.") for k in strip_wrappers(state_dict)) else "hrm"


# ------------------------------------------------------------------------------------------ loading

def load_seed_model(script: str, state_dict: dict, kind: str = "hrm", **sizes) -> nn.Module:
    """`script`'s original model (HRM or LSTM) holding `state_dict` (original names), in eval mode.

    sizes: the original constructor's `hidden_dim, k_step, num_heads, num_layers` (default: the script's
    CONFIG). The module maps (B, history, 2) → (B, 2) in the script's own units (`SeedScript.grid_scale`).
    A state_dict that does not fit the model is a UserError naming the first offending keys."""
    cfg = model_config(script, kind, **sizes)
    model = build_model(cfg)
    renamed = hrmlab_names(state_dict, cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in renamed]
    unexpected = [k for k in renamed if k not in expected]
    wrong_shape = [k for k in expected if k in renamed and tuple(renamed[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = [f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                 if keys]
        raise UserError(f"the weights do not fit {script}'s {kind.upper()} at these sizes ({'; '.join(parts)}); "
                        "check the script name, hrm vs lstm, and the sizes it was trained with")
    model.load_state_dict({k: torch.as_tensor(v) for k, v in renamed.items()})
    return model.eval()


def infer_sizes(script: str, state_dict: dict, kind: str) -> dict:
    """The constructor sizes the weights themselves show: hidden_dim (from the embedding / LSTM input
    weights) and, for stacked HRMs, num_layers. num_heads and k_step leave no trace in a state_dict
    (the script's CONFIG values are used)."""
    weights = strip_wrappers(state_dict)
    if kind == "lstm":
        w = weights.get("lstm.weight_hh_l0")
        return {} if w is None else {"hidden_dim": int(w.shape[1])}
    sizes = {}
    if "embed.weight" in weights:
        sizes["hidden_dim"] = int(weights["embed.weight"].shape[0])
    if get_script(script).hrm.variant != "sapient":
        layers = {int(m.group(1)) for k in weights if (m := re.match(r"L_blocks\.(\d+)\.", k))}
        if layers:
            sizes["num_layers"] = max(layers) + 1
    return sizes


def read_state_dict(path: str | Path) -> dict:
    """A raw state_dict, or one held in a dict under `state_dict` / `model_state_dict` / `model` (the usual
    ways of saving a checkpoint), from a file written by torch.save."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch.load raises many types (UnpicklingError, struct.error, ...) on a non-checkpoint
        raise UserError(f"{path} is not a PyTorch checkpoint that can be read safely (torch.load weights_only)") from None
    if isinstance(payload, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(torch.is_tensor(v) for v in payload.values()):
        raise UserError(f"{path} holds no state_dict (expected a dict of tensors, or a dict holding one)")
    return payload


def load_seed_forecaster(script: str, path: str | Path, name: str, device: str = "cpu", precision: str = "fp32"):
    """An original checkpoint file as a planner forecaster, with the script's input scaling and history.
    HRM or LSTM is told by the weights, and so are the width and depth (`infer_sizes`)."""
    from hrmlab.forecast.learned import LearnedForecaster

    seed = get_script(script)
    state_dict = read_state_dict(path)
    kind = detect_kind(state_dict)
    model = load_seed_model(script, state_dict, kind=kind, **infer_sizes(script, state_dict, kind))
    return LearnedForecaster(model, grid_size=seed.grid_scale, history=seed.history, device=device, dtype=precision,
                             name=name)
