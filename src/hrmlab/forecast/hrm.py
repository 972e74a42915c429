"""HRM-style forecasters (SPEC §4): norms, FFNs, attention, plain and gated blocks, and three models.

* `SapientHRM` (v1–v3, Boosted): one L block and one H block run recurrently over the history.
* `DeepSapientHRM` (Mid, FullScale, RobustFix, 8gpu): the same schedule with stacks of n L and n H blocks.
* `EncoderHRM` (8gpu_v2): not recurrent; gated blocks with full attention over all history tokens.

Each model reproduces its original class to float32 precision when loaded with the original weights
(`seed_import.py` maps the names; tests/test_seed_models.py checks it against the original's outputs).

The recurrent blocks attend over a length-1 sequence, where softmax over a single key is 1 and
attention reduces to out_proj(v_proj(x)). `LengthOneAttention` keeps nn.MultiheadAttention's
parameters (same names and shapes, so the parameter counts and state dicts match the seed's) but only
computes the value/output path: identical results, a quarter of the attention matmuls skipped.
The embedding of all T history steps is one batched matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hrmlab.errors import UserError
from hrmlab.forecast.heads import POSITION_DIMS, OutputSettings, shape_output


@dataclass
class HRMConfig(OutputSettings):
    """Every architectural knob of the HRM family; presets set the seed's values (SPEC §4 table)."""

    variant: Literal["sapient", "deep", "encoder"] = "deep"
    """sapient: 1 L + 1 H block (v1–v3); deep: stacks of `n_layers` blocks (Mid, FullScale, 8gpu);
    encoder: the 8gpu_v2 non-recurrent encoder."""
    d_model: int = 256
    """Hidden width d."""
    n_layers: int = 1
    """Blocks in the L stack and, separately, in the H stack (encoder: blocks run once / repeated)."""
    heads: int = 4
    """Attention heads (they only matter for the encoder's full attention; length-1 attention ignores them)."""
    h_period: int = 2
    """k: the H module updates every k time steps (at t = 0, k, 2k, ... before the L update)."""
    block: Literal["plain", "gated"] = "plain"
    """plain: pre-norm residual block; gated: GTrXL-style sigmoid gate between new and old state."""
    rmsnorm: Literal["original", "standard"] = "standard"
    """original: the seed's g·x/‖x‖·d^-½ (output RMS 1/d, a bug kept for presets); standard: RMS 1."""
    norm_eps: float = 1e-6
    """RMSNorm's epsilon; where it acts is `norm_eps_mode`."""
    norm_eps_mode: Literal["standard", "original"] = "standard"
    """standard: eps added to the mean square (F.rms_norm); original: the scripts' form, the divisor
    clamped at eps, x / max(‖x‖, eps) (8gpu_v2: x / max(‖x‖·d^-½, eps)), computed in fp32. The scripts
    used eps 1e-12 (F.normalize: v1–v3, Boosted, FullScale) or 1e-6 (Mid, RobustFix, Split, 8gpu, 8gpu_v2)."""
    detach_h_input: bool = True
    """The H module reads a detached L state (v3 and later); False lets gradients flow through it (v1, v2)."""
    init_std: float = 0.0
    """0: PyTorch default init. > 0: Linear weights N(0, init_std²), zero biases (encoder: trunc_normal_ with
    PyTorch's default cut at ±2 absolute, i.e. practically untruncated for small std, as 8gpu_v2 did)."""
    initial_state: Literal["zero", "random"] = "zero"
    """Recurrent states start at zero, or at randn·initial_state_std on every call (RobustFix; also at test time)."""
    initial_state_std: float = 0.01
    """Std of random initial states."""
    ffn: Literal["swiglu", "gelu"] = "swiglu"
    """swiglu: w3(silu(w1 x)·w2 x), no bias, hidden ⌊swiglu_mult·d⌋; gelu: Linear–GELU–Linear (8gpu_v2)."""
    swiglu_mult: float = 2.6
    """SwiGLU hidden width as a multiple of d (floored)."""
    gelu_mult: int = 4
    """GELU FFN hidden width as a multiple of d."""
    gate_residual_scale: float = 0.7071
    """Gated blocks scale x + s by this (the seed's rounded 1/√2) before attention."""
    encoder_repeats: int = 2
    """Encoder only: how many times the high group of `n_layers` blocks is applied (8gpu_v2: its k_step)."""
    dropout: float = 0.0
    """Dropout on block outputs during training (the seed used none)."""
    out_steps: int = 1
    """K: displacements predicted per call. 1: forward → (B, 2); K > 1: (B, K, 2), the next K per-step
    displacements (the `direct` roll-out; set through forecast.rollout, not by hand)."""


# ---------------------------------------------------------------------------------------- components


class RMSNorm(nn.Module):
    """g ⊙ x / rms(x), times 1/d for the seed's `original` scaling (whose output RMS is 1/d).

    eps_mode `standard` adds eps to the mean square (one fused kernel); `original` is the scripts' own
    arithmetic: x / max(‖x‖, eps) · d^-½ · g (or, with standard scaling as in 8gpu_v2,
    x / max(‖x‖ · d^-½, eps) · g), in fp32 and cast back, so small states normalise exactly as they did."""

    def __init__(self, d: int, scaling: str = "standard", eps: float = 1e-6, eps_mode: str = "standard"):
        super().__init__()
        if scaling not in ("original", "standard"):
            raise UserError(f"unknown rmsnorm {scaling!r}; valid choices: original, standard")
        if eps_mode not in ("original", "standard"):
            raise UserError(f"unknown norm_eps_mode {eps_mode!r}; valid choices: original, standard")
        self.weight = nn.Parameter(torch.ones(d))
        self.scaling = scaling
        self.scale = 1.0 / d if scaling == "original" else 1.0
        self.eps = eps
        self.eps_mode = eps_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eps_mode == "original":
            xf = x.float()
            norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)
            root_d = x.shape[-1] ** -0.5
            if self.scaling == "original":
                out = xf / norm.clamp(min=self.eps) * root_d * self.weight.float()
            else:
                out = xf / (norm * root_d).clamp(min=self.eps) * self.weight.float()
            return out.to(x.dtype)
        weight = self.weight if self.scale == 1.0 else self.weight * self.scale
        return F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), self.eps)


def make_norm(cfg: "HRMConfig") -> RMSNorm:
    return RMSNorm(cfg.d_model, cfg.rmsnorm, cfg.norm_eps, cfg.norm_eps_mode)


class SwiGLU(nn.Module):
    """w3(silu(w1 x) ⊙ w2 x), no biases."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(d, hidden, bias=False)
        self.w3 = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class GeluFFN(nn.Module):
    """Linear–GELU–Linear with biases (the 8gpu_v2 encoder)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _MHAParameters(nn.Module):
    """nn.MultiheadAttention's parameters under the same names, shapes and default init, so state dicts
    load into a real nn.MultiheadAttention (batch_first=True) and back."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise UserError(f"d_model {d} is not divisible by heads {heads}")
        self.embed_dim, self.num_heads = d, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)


class LengthOneAttention(_MHAParameters):
    """Self-attention over a length-1 sequence: softmax of one score is 1, so the output is
    out_proj(v_proj(x)); q and k exist (they count) but cannot affect it. (B, d) → (B, d).

    The two affine maps compose into one: W = W_o·W_v, b = W_o·b_v + b_o. A recurrent model calls
    `fused_weights()` once per forward and passes the result to every time step, so each step costs one
    d×d matmul instead of four (q, k, v, out), and autograd slices `in_proj_weight` once, not per step."""

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.embed_dim
        w_out, b_out = self.out_proj.weight, self.out_proj.bias
        weight = w_out @ self.in_proj_weight[2 * d:]
        bias = torch.addmv(b_out, w_out, self.in_proj_bias[2 * d:])
        return weight, bias

    def forward(self, x: torch.Tensor, fused: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        weight, bias = fused if fused is not None else self.fused_weights()
        return F.linear(x, weight, bias)


SHORT_SEQUENCE = 32
"""Compiled CPU attention over at most this many tokens uses the explicit formula (`attention`)."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√dh)·v over (B, heads, T, dh), no mask.

    Eager: `F.scaled_dot_product_attention` (the eager path, bit for bit). Compiled on CPU: the explicit
    formula written as broadcast products summed over dh and over the keys, which inductor fuses with the
    softmax (and RoPE) into a few small loops. PyTorch's CPU SDPA kernel, a flash-attention loop built for
    long sequences, spent 20% of a trm training step on ~1% of its FLOPs for the models' 6-token sequences;
    batched matmuls instead (`q @ kᵀ`) compiled 7-11% slower than this form (docs/benchmarks.md, "Compiled
    training (train_step)"). Both compute the same function and differ by float rounding (tests/test_compile.py).
    Longer sequences (> SHORT_SEQUENCE tokens) and CUDA keep SDPA's fused kernels, compiled or not."""
    if q.device.type == "cpu" and q.shape[-2] <= SHORT_SEQUENCE and torch.compiler.is_compiling():
        scores = ((q * q.shape[-1] ** -0.5).unsqueeze(-2) * k.unsqueeze(-3)).sum(-1)  # (B, h, Tq, Tk)
        return (scores.softmax(dim=-1).unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)
    return F.scaled_dot_product_attention(q, k, v)


class SequenceAttention(_MHAParameters):
    """Full multi-head self-attention over T tokens, no mask, no positional encoding. (B, T, d) → (B, T, d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


def _make_ffn(cfg: HRMConfig) -> nn.Module:
    d = cfg.d_model
    if cfg.ffn == "swiglu":
        return SwiGLU(d, math.floor(cfg.swiglu_mult * d))
    if cfg.ffn == "gelu":
        return GeluFFN(d, cfg.gelu_mult * d)
    raise UserError(f"unknown ffn {cfg.ffn!r}; valid choices: gelu, swiglu")


class PlainBlock(nn.Module):
    """RecurrentTransformerBlock: h = x + s; h += attn(norm1 h); return h + ffn(norm2 h)."""

    def __init__(self, cfg: HRMConfig, attention: nn.Module):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = attention
        self.norm2 = make_norm(cfg)
        self.ffn = _make_ffn(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def _attend(self, h: torch.Tensor, attn_weights) -> torch.Tensor:
        return self.attn(h) if attn_weights is None else self.attn(h, attn_weights)

    def forward(self, x: torch.Tensor, s: torch.Tensor, attn_weights=None) -> torch.Tensor:
        """`attn_weights`: precomputed `LengthOneAttention.fused_weights()` (None computes them here)."""
        h = x + s
        h = h + self.drop(self._attend(self.norm1(h), attn_weights))
        return h + self.drop(self.ffn(self.norm2(h)))


class GatedBlock(PlainBlock):
    """GTrXL-style: h = (x+s)·c; h += attn(norm1 h); c = h + ffn(norm2 h); z = σ(W[c; s] + b);
    return z⊙c + (1−z)⊙s — the gate decides how much of the old state s survives."""

    def __init__(self, cfg: HRMConfig, attention: nn.Module):
        super().__init__(cfg, attention)
        self.gate = nn.Linear(2 * cfg.d_model, cfg.d_model)
        self.residual_scale = cfg.gate_residual_scale

    def forward(self, x: torch.Tensor, s: torch.Tensor, attn_weights=None) -> torch.Tensor:
        h = (x + s) * self.residual_scale
        h = h + self.drop(self._attend(self.norm1(h), attn_weights))
        c = h + self.drop(self.ffn(self.norm2(h)))
        z = torch.sigmoid(self.gate(torch.cat([c, s], dim=-1)))
        return z * c + (1 - z) * s


class EncoderBlock(nn.Module):
    """The 8gpu_v2 block, (x, s) → (h, new state): the gate z = σ(W[x; s] + b) is computed from the
    block's INPUTS, before the body; h = (x+s)·c; h += attn(norm1 h); h += ffn(norm2 h); the block returns
    the ungated h (what the next block reads) and, kept apart, z⊙h + (1−z)⊙s (the state this block
    carries to its next application). Submodules are registered in the original's order (norm, attn,
    gate, ffn, norm2), so a seeded build draws the original's initial weights."""

    def __init__(self, cfg: HRMConfig, attention: nn.Module):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = attention
        self.gate = nn.Linear(2 * cfg.d_model, cfg.d_model)
        self.ffn = _make_ffn(cfg)
        self.norm2 = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.residual_scale = cfg.gate_residual_scale

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.sigmoid(self.gate(torch.cat([x, s], dim=-1)))
        h = (x + s) * self.residual_scale
        h = h + self.drop(self.attn(self.norm1(h)))
        h = h + self.drop(self.ffn(self.norm2(h)))
        return h, z * h + (1 - z) * s


def make_block(cfg: HRMConfig, attention: nn.Module) -> nn.Module:
    if cfg.block == "plain":
        return PlainBlock(cfg, attention)
    if cfg.block == "gated":
        return GatedBlock(cfg, attention)
    raise UserError(f"unknown block {cfg.block!r}; valid choices: gated, plain")


def init_linear_weights(model: nn.Module, std: float, truncated: bool = False) -> None:
    """N(0, std²) for every nn.Linear weight (attention out_proj included, in_proj not: it is no Linear),
    zero biases; 0 keeps PyTorch defaults. `truncated`: trunc_normal_ with its default cut at ±2 (absolute,
    as 8gpu_v2 called it: for std 0.01 a cut at 200σ, so the distribution is N(0, std²))."""
    if std <= 0:
        return
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if truncated:
                nn.init.trunc_normal_(module.weight, std=std)
            else:
                nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------- models


def embed_stacks_head(cfg: HRMConfig, new_block: Callable[[], nn.Module]) -> tuple[nn.Module, ...]:
    """(embed, low stack, high stack, head): the layers of every HRM variant, each stack `n_layers` blocks
    of `new_block()`. Made in this order, the seed's, so a seeded build draws the seed's initial weights."""
    embed = nn.Linear(POSITION_DIMS, cfg.d_model)
    low = nn.ModuleList(new_block() for _ in range(cfg.n_layers))
    high = nn.ModuleList(new_block() for _ in range(cfg.n_layers))
    return embed, low, high, nn.Linear(cfg.d_model, POSITION_DIMS * cfg.out_steps)


class DeepSapientHRM(nn.Module):
    """Stacks of n L blocks and n H blocks run over the history (B, T, 2) → displacement (B, 2).

    For t in 0..T-1: every k steps the H stack updates from the (detached) top L state; then the L stack
    updates from embed(x_t) + top H state. Each block of a stack keeps its own state and feeds its new
    state to the next block. The head reads the top L state after the last step.

    Stateful roll-out (forecast/learned.py): `encode(x)` runs the history and returns (RecurrentState,
    next displacement); `advance(state, x_next)` runs one more time step t = T, T+1, ... (the H stack
    keeps its period in t), so encode(x[:, :T-1]) then advance(·, x[:, T-1]) equals forward(x)."""

    def __init__(self, cfg: HRMConfig, attention_cls: type[nn.Module] = LengthOneAttention):
        super().__init__()
        self.cfg = cfg
        self.embed, self.l_blocks, self.h_blocks, self.head = embed_stacks_head(
            cfg, lambda: make_block(cfg, attention_cls(cfg.d_model, cfg.heads)))
        init_linear_weights(self, cfg.init_std)

    def initial_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        shape = (batch, self.cfg.d_model)
        if self.cfg.initial_state == "random":
            return [torch.randn(shape, device=like.device, dtype=like.dtype) * self.cfg.initial_state_std
                    for _ in range(self.cfg.n_layers)]
        zero = torch.zeros(shape, device=like.device, dtype=like.dtype)
        return [zero] * self.cfg.n_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[1]

    def encode(self, x: torch.Tensor) -> tuple["RecurrentState", torch.Tensor]:
        embedded = self.embed(x.transpose(0, 1))  # (T, B, d): all steps in one matmul, each step contiguous
        state = RecurrentState(self.initial_states(x.shape[0], embedded), self.initial_states(x.shape[0], embedded),
                               # fused attention weights: once per forward, not per step
                               [block.attn.fused_weights() for block in self.l_blocks],
                               [block.attn.fused_weights() for block in self.h_blocks])
        return self._run(state, embedded)

    def advance(self, state: "RecurrentState", x_next: torch.Tensor) -> tuple["RecurrentState", torch.Tensor]:
        return self._run(state, self.embed(x_next)[None])

    def _run(self, state: "RecurrentState", embedded: torch.Tensor) -> tuple["RecurrentState", torch.Tensor]:
        s_low, s_high, low_attn, high_attn = state.low, state.high, state.low_attn, state.high_attn
        for e in embedded:
            if state.t % self.cfg.h_period == 0:
                inp = s_low[-1].detach() if self.cfg.detach_h_input else s_low[-1]
                for i, block in enumerate(self.h_blocks):
                    s_high[i] = inp = block(inp, s_high[i], high_attn[i])
            inp = e + s_high[-1]
            for i, block in enumerate(self.l_blocks):
                s_low[i] = inp = block(inp, s_low[i], low_attn[i])
            state.t += 1
        return state, shape_output(self.head(s_low[-1]), self.cfg.out_steps)


@dataclass
class RecurrentState:
    """A recurrent HRM's state between time steps: per-block L and H states, the fused attention weights
    of this call, and the time index t that schedules the H updates. Updated in place by `_run`."""

    low: list[torch.Tensor]
    high: list[torch.Tensor]
    low_attn: list[tuple[torch.Tensor, torch.Tensor]]
    high_attn: list[tuple[torch.Tensor, torch.Tensor]]
    t: int = 0


class SapientHRM(DeepSapientHRM):
    """One L block and one H block (v1–v3, Boosted); `detach_h_input` is False for v1/v2."""

    def __init__(self, cfg: HRMConfig, attention_cls: type[nn.Module] = LengthOneAttention):
        if cfg.n_layers != 1:
            raise UserError(f"variant 'sapient' has exactly one L and one H block; got n_layers={cfg.n_layers} "
                            "(use variant 'deep')")
        super().__init__(cfg, attention_cls)


class EncoderHRM(nn.Module):
    """The 8gpu_v2 model: not recurrent. All T steps are embedded as tokens (full attention over them, no
    mask, no positional encoding). The low group of `n_layers` `EncoderBlock`s runs once, each block
    reading the previous block's output with a zero state (its gated state is discarded, so the low
    gates get no gradient); the high group then runs `encoder_repeats` times over the low output, each
    block keeping its own gated state from one repeat to the next. The head reads the LAST token.

    Without positions, attention is permutation-equivariant: reordering the first T−1 history steps
    changes nothing; only which position is last is known, not the direction of motion — a likely
    reason this script did worse than the recurrent ones."""

    def __init__(self, cfg: HRMConfig):
        super().__init__()
        if cfg.ffn != "gelu":
            raise UserError(f"variant 'encoder' uses the GELU FFN of 8gpu_v2; got ffn={cfg.ffn!r}")
        self.cfg = cfg
        self.embed, self.low_blocks, self.high_blocks, self.head = embed_stacks_head(
            cfg, lambda: EncoderBlock(cfg, SequenceAttention(cfg.d_model, cfg.heads)))
        init_linear_weights(self, cfg.init_std, truncated=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # (B, T, d)
        zero = torch.zeros_like(h)
        for block in self.low_blocks:
            h, _ = block(h, zero)
        states = [zero] * len(self.high_blocks)
        for _ in range(self.cfg.encoder_repeats):
            for i, block in enumerate(self.high_blocks):
                h, states[i] = block(h, states[i])
        return shape_output(self.head(h[:, -1]), self.cfg.out_steps)


# ---------------------------------------------------------------------------------------- factory


def build_hrm(cfg: HRMConfig) -> nn.Module:
    """The HRM variant `cfg` names, freshly initialised (seeding and output settings:
    `hrmlab.forecast.models.build_model`, the one factory for every model kind)."""
    if cfg.variant == "sapient":
        return SapientHRM(cfg)
    if cfg.variant == "deep":
        return DeepSapientHRM(cfg)
    if cfg.variant == "encoder":
        return EncoderHRM(cfg)
    raise UserError(f"unknown HRM variant {cfg.variant!r}; valid choices: deep, encoder, sapient")
