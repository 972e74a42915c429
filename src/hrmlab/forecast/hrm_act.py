"""`hrm-act`: the HRM paper's design (Wang et al. 2025, sapientinc/HRM) as a one-step forecaster.

Unlike the seed's HRM-style models (a recurrence over the 20 time steps, `hrm.py`), this one reasons
over a FIXED input, as the paper does:

* the history is a token sequence — one token per `patch` observed positions (centred positions and
  scaled displacements, embedded), plus a learned query token whose final state is read out;
* two transformer modules, L (fast) and H (slow), of post-norm blocks with weightless RMSNorm,
  non-causal attention and RoPE or learned positions; a module adds its input injection to its state
  and runs its blocks: z_L ← L(z_L, z_H + tokens), and every `l_cycles` L updates z_H ← H(z_H, z_L);
* a segment runs h_cycles × l_cycles L updates and h_cycles H updates; only the LAST L and H update
  carry gradient (the one-step gradient: everything before runs under no_grad);
* deep supervision: `segments` segments per sample, each one's readout is scored, and the carry
  (z_H, z_L) passes detached to the next segment;
* optional ACT: a Q head (zero weights, bias −5) predicts halt / continue logits from the query token.
  At inference a sample stops at the first segment where halt > continue (at most `segments`).
* truncated LeCun-normal init of every Linear; the output head follows `head_init` (zero by default).

Deviations, because one trainer serves every model: the paper takes an optimiser step after every
segment and, with ACT, replaces halted samples by new ones; here a batch runs all its segments and the
mean of the per-segment losses is one optimiser step, so ACT only saves compute at inference. ACT's
"correct" is regression-shaped: the forecast is within `halt_tolerance` of the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hrmlab.errors import UserError
from hrmlab.forecast.heads import POSITION_DIMS, OutputSettings, shape_output
from hrmlab.forecast.hrm import SwiGLU, attention


@dataclass
class HRMActConfig(OutputSettings):
    """The HRM paper's architecture at forecaster size (defaults: 83,202 parameters; 83,332 with ACT)."""

    output: Literal["displacement", "residual-cv"] = "residual-cv"
    """See OutputSettings; new models predict the residual over constant velocity by default."""
    head_init: Literal["default", "zero"] = "zero"
    """See OutputSettings; new models start at zero motion over constant velocity by default."""
    d_model: int = 64
    """Hidden width of tokens and states."""
    heads: int = 4
    """Attention heads (d_model must divide by it)."""
    l_layers: int = 1
    """Post-norm transformer blocks in the L module."""
    h_layers: int = 1
    """Post-norm transformer blocks in the H module."""
    expansion: float = 2.0
    """SwiGLU hidden width as a multiple of d_model."""
    h_cycles: int = 2
    """H updates per segment (N in the paper)."""
    l_cycles: int = 2
    """L updates per H update (T in the paper)."""
    segments: int = 2
    """Deep-supervision segments per training sample; at inference (times the compute scale) the number
    of segments run — with `act`, the most."""
    act: bool = False
    """Adaptive computation time: learn halt/continue Q values and stop early at inference."""
    halt_tolerance: float = 0.005
    """ACT: a segment's forecast counts as correct when every step is within this Euclidean distance of
    the target (normalised units; 0.005 = 0.1 cell on the 20-cell grid)."""
    q_loss_weight: float = 0.5
    """ACT: weight of each of the two Q losses (halt, continue) added to the forecast loss."""
    positions: Literal["rope", "learned"] = "rope"
    """Token positions: rotary embeddings in attention, or a learned vector added to each token."""
    rope_theta: float = 10_000.0
    """RoPE base period."""
    max_tokens: int = 64
    """Learned positions: the most tokens (history tokens + the query token) the model accepts. RoPE: the
    positions whose tables compiled forwards read from buffers (longer sequences compute them inline)."""
    delta_scale: float = 20.0
    """Step features are (2·(position − ½), delta_scale · displacement): 20 turns a normalised
    displacement (≈ 0.035 per step) into cells per step on the 20-cell grid, O(1) like the positions."""
    patch: int = 4
    """History steps per token (their features concatenated): 20 steps → 5 tokens + the query token.
    Attention cost grows with the token count, so 4 keeps a training step near the HRM's cost."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    out_steps: int = 1
    """K: forecast steps per call; the output is (B, 2) for 1, else (B, K, 2) per-step displacements."""


# ---------------------------------------------------------------------------------------- components
# shared with trm.py


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Truncated (±2σ) LeCun normal: std 1/√fan_in after truncation (torch's std is before it, hence /0.8796)."""
    std = 1.0 / math.sqrt(weight.shape[1]) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def init_lecun(model: nn.Module) -> None:
    """Truncated LeCun normal for every Linear weight, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            lecun_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm (the paper's post-norm has no gain)."""
    return F.rms_norm(x, (x.shape[-1],), None, eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (B, heads, T, dh): rotate the two halves of each head's features by position angles."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


Rotary = tuple[torch.Tensor, torch.Tensor]
"""RoPE's (cos, sin) tables, each (T, dh/2)."""


def rotary_tables(t: int, dh: int, theta: float, device: torch.device | str = "cpu") -> Rotary:
    """RoPE's float32 (cos, sin) for positions 0..t-1 and head width dh."""
    freq = theta ** (-torch.arange(0, dh, 2, device=device, dtype=torch.float32) / dh)
    angle = torch.arange(t, device=device, dtype=torch.float32)[:, None] * freq
    return angle.cos(), angle.sin()


class Attention(nn.Module):
    """Non-causal multi-head self-attention, no biases, optional RoPE. (B, T, d) → (B, T, d).

    RoPE tables hold no Python-side cache (a dict cache was a graph break under torch.compile and crashed
    compiled training in torch 2.13): eager and compiled forwards alike read non-persistent buffers made at
    build for `max_positions` positions (not in state dicts, moved with the module), so neither a roll-out
    step nor a compiled kernel recomputes pow/cos/sin; a longer sequence computes its tables inline. The
    buffers hold the values the inline computation gives on CPU, bit for bit."""

    def __init__(self, d: int, heads: int, rope: bool, theta: float, max_positions: int = 64):
        super().__init__()
        if d % heads or (d // heads) % 2:
            raise UserError(f"d_model {d} must divide into {heads} heads of even width")
        self.heads, self.rope, self.theta = heads, rope, theta
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        if rope:
            cos, sin = rotary_tables(max_positions, d // heads, theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def rotary(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> Rotary | None:
        """The RoPE tables for a (B, T, d) sequence `x`, in `dtype` (default x's; None without RoPE)."""
        if not self.rope:
            return None
        t, dtype = x.shape[1], dtype or x.dtype
        if t <= len(self.rope_cos):
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        else:
            cos, sin = rotary_tables(t, x.shape[2] // self.heads, self.theta, x.device)
        return cos.to(dtype), sin.to(dtype)

    def forward(self, x: torch.Tensor, rope: Rotary | None = None) -> torch.Tensor:
        """`rope`: the tables `rotary(·)` gave for this sequence, computed once by the caller (None: here)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.rope:
            cos, sin = rope if rope is not None else self.rotary(x, q.dtype)
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # no-ops: the models' tokens have q's dtype
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = attention(q, k, v)
        return self.out(out.transpose(1, 2).reshape(b, t, d))


class PostNormBlock(nn.Module):
    """x ← norm(x + attn(x)); x ← norm(x + swiglu(x)) — post-norm, weightless RMSNorm."""

    def __init__(self, d: int, heads: int, expansion: float, rope: bool, theta: float, eps: float,
                 max_positions: int = 64):
        super().__init__()
        self.attn = Attention(d, heads, rope, theta, max_positions)
        self.mlp = SwiGLU(d, round(expansion * d))
        self.eps = eps

    def forward(self, x: torch.Tensor, rope: Rotary | None = None) -> torch.Tensor:
        x = rms_norm(x + self.attn(x, rope), self.eps)
        return rms_norm(x + self.mlp(x), self.eps)


class ReasoningModule(nn.Module):
    """A stack of blocks updating a state from an injection: blocks(state + injection)."""

    def __init__(self, layers: int, d: int, heads: int, expansion: float, rope: bool, theta: float, eps: float,
                 max_positions: int = 64):
        super().__init__()
        self.blocks = nn.ModuleList(PostNormBlock(d, heads, expansion, rope, theta, eps, max_positions)
                                    for _ in range(layers))

    def rotary(self, tokens: torch.Tensor) -> Rotary | None:
        """RoPE tables for a (B, T, d) state (None without RoPE); every block and module of a model shares them."""
        return self.blocks[0].attn.rotary(tokens)

    def forward(self, state: torch.Tensor, injection: torch.Tensor, rope: Rotary | None = None) -> torch.Tensor:
        state = state + injection
        for block in self.blocks:
            state = block(state, rope)
        return state


class HistoryTokens(nn.Module):
    """(B, H, 2) normalised positions → (B, ⌈H/patch⌉ + 1, d) tokens. Each step's features are
    (2·(p − ½), delta_scale·Δp); `patch` consecutive steps form one token (the history is left-padded
    with its oldest position to a multiple of `patch`), then a learned query token is appended; plus
    learned positions when asked (RoPE lives in attention)."""

    def __init__(self, d: int, delta_scale: float, patch: int, learned_positions: bool, max_tokens: int):
        super().__init__()
        if patch < 1:
            raise UserError(f"patch must be ≥ 1, got {patch}")
        self.delta_scale, self.patch = delta_scale, patch
        self.embed = nn.Linear(2 * POSITION_DIMS * patch, d)
        self.query = nn.Parameter(torch.zeros(d))
        nn.init.trunc_normal_(self.query, std=1.0, a=-2.0, b=2.0)
        self.positions = nn.Parameter(torch.zeros(max_tokens, d)) if learned_positions else None
        if self.positions is not None:
            nn.init.trunc_normal_(self.positions, std=1.0 / math.sqrt(d), a=-2.0 / math.sqrt(d), b=2.0 / math.sqrt(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = -x.shape[1] % self.patch
        if pad:
            x = torch.cat([x[:, :1].expand(-1, pad, -1), x], dim=1)
        delta = torch.diff(x, dim=1, prepend=x[:, :1])  # the first step has no predecessor: zero
        features = torch.cat([2.0 * (x - 0.5), self.delta_scale * delta], dim=-1)
        tokens = self.embed(features.reshape(len(x), x.shape[1] // self.patch, -1))
        tokens = torch.cat([tokens, self.query.to(tokens.dtype).expand(len(x), 1, -1)], dim=1)
        if self.positions is not None:
            if tokens.shape[1] > len(self.positions):
                raise UserError(f"{tokens.shape[1]} tokens exceed max_tokens {len(self.positions)}")
            tokens = tokens + self.positions[:tokens.shape[1]].to(tokens.dtype)
        return tokens


def initial_state(d: int) -> torch.Tensor:
    """A fixed (not learned) start vector, truncated N(0, 1), as the paper's H_init / L_init."""
    return nn.init.trunc_normal_(torch.empty(d), std=1.0, a=-2.0, b=2.0)


def scaled_count(count: int, scale: float) -> int:
    """Test-time compute: `scale` × a trained count, at least 1."""
    return max(1, round(count * scale))


# ---------------------------------------------------------------------------------------- model


class HRMAct(nn.Module):
    """(B, H, 2) → (B, 2) or (B, K, 2); see the module docstring."""

    def __init__(self, cfg: HRMActConfig):
        super().__init__()
        if min(cfg.h_cycles, cfg.l_cycles, cfg.segments, cfg.out_steps, cfg.l_layers, cfg.h_layers) < 1:
            raise UserError("hrm-act: h_cycles, l_cycles, segments, out_steps and layers must all be ≥ 1")
        self.cfg = cfg
        d, rope = cfg.d_model, cfg.positions == "rope"
        self.tokens = HistoryTokens(d, cfg.delta_scale, cfg.patch, not rope, cfg.max_tokens)
        self.low = ReasoningModule(cfg.l_layers, d, cfg.heads, cfg.expansion, rope, cfg.rope_theta, cfg.norm_eps,
                                   cfg.max_tokens)
        self.high = ReasoningModule(cfg.h_layers, d, cfg.heads, cfg.expansion, rope, cfg.rope_theta, cfg.norm_eps,
                                    cfg.max_tokens)
        self.head = nn.Linear(d, POSITION_DIMS * cfg.out_steps)
        # (halt, continue) logits; only with ACT, so no parameter goes unused in training (DDP requires it)
        self.q_head = nn.Linear(d, 2) if cfg.act else None
        self.register_buffer("h_init", initial_state(d))
        self.register_buffer("l_init", initial_state(d))
        init_lecun(self)
        if self.q_head is not None:
            with torch.no_grad():  # the paper's Q head: zero weights, bias −5 (both logits start at "no")
                self.q_head.weight.zero_()
                self.q_head.bias.fill_(-5.0)
        self.compute_scale = 1.0
        self.last_segments = 0  # segments the latest forward ran (ACT diagnostics)

    def set_compute_scale(self, scale: float) -> None:
        """Test-time compute: inference runs `scale` × `segments` segments (training is unaffected)."""
        if scale <= 0:
            raise UserError(f"compute scale must be > 0, got {scale}")
        self.compute_scale = float(scale)

    def initial_carry(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.h_init.to(tokens.dtype).expand_as(tokens), self.l_init.to(tokens.dtype).expand_as(tokens))

    def segment(self, tokens, z_h, z_l, rope: Rotary | None = None):
        """h_cycles × l_cycles L updates and h_cycles H updates; only the last of each carries gradient.
        `rope`: the tokens' RoPE tables (`self.low.rotary(tokens)`; None computes them in every call)."""
        h_cycles, l_cycles = self.cfg.h_cycles, self.cfg.l_cycles
        with torch.no_grad():
            for i in range(h_cycles * l_cycles - 1):
                z_l = self.low(z_l, z_h + tokens, rope)
                if (i + 1) % l_cycles == 0:
                    z_h = self.high(z_h, z_l, rope)
        z_l = self.low(z_l, z_h + tokens, rope)
        z_h = self.high(z_h, z_l, rope)
        return z_h, z_l

    def readout(self, z_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(forecast, (B, 2) halt/continue logits or None without ACT) from the query token's H state."""
        query = z_h[:, -1]
        q = self.q_head(query).float() if self.q_head is not None else None
        return shape_output(self.head(query), self.cfg.out_steps), q

    def run_segments(self, x: torch.Tensor, count: int):
        """Yield (forecast, Q logits) after each of `count` segments; the carry passes on detached."""
        tokens = self.tokens(x)
        rope = self.low.rotary(tokens)  # once per forward, shared by every L and H call
        z_h, z_l = self.initial_carry(tokens)
        for s in range(count):
            z_h, z_l = self.segment(tokens, z_h, z_l, rope)
            self.last_segments = s + 1
            yield self.readout(z_h)
            z_h, z_l = z_h.detach(), z_l.detach()

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if target is not None:
            return self.training_loss(x, target)
        count = self.cfg.segments if self.training else scaled_count(self.cfg.segments, self.compute_scale)
        result, halted = None, torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for out, q in self.run_segments(x, count):
            if not self.cfg.act:
                result = out
                continue
            keep = halted.view(-1, *[1] * (out.dim() - 1))
            result = out if result is None else torch.where(keep, result, out)  # halted samples keep theirs
            halted = halted | (q[:, 0] > q[:, 1])
            if bool(halted.all()):
                break
        return result

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over segments of the forecast MSE (deep supervision, detached carry), plus ACT's Q losses."""
        y = y.float()
        losses, q_logits, correct = [], [], []
        for out, q in self.run_segments(x, self.cfg.segments):
            error = out.float() - y
            losses.append(error.pow(2).mean())
            if self.cfg.act:
                distance = error.detach().norm(dim=-1).view(len(x), -1).amax(dim=1)
                correct.append((distance <= self.cfg.halt_tolerance).float())
                q_logits.append(q)
        loss = torch.stack(losses).mean()
        if self.cfg.act:
            loss = loss + self.cfg.q_loss_weight * act_q_loss(q_logits, correct)
        return loss


def act_q_loss(q_logits: list[torch.Tensor], correct: list[torch.Tensor]) -> torch.Tensor:
    """The paper's Q-learning losses, mean over segments: halt → "is this segment's forecast correct";
    continue → sigmoid of the best next-segment Q value (detached), or halt's target at the last segment."""
    halt_loss, continue_loss = [], []
    last = len(q_logits) - 1
    for s, (q, ok) in enumerate(zip(q_logits, correct)):
        halt_loss.append(F.binary_cross_entropy_with_logits(q[:, 0], ok))
        nxt = ok if s == last else torch.sigmoid(q_logits[s + 1].detach().amax(dim=1))
        continue_loss.append(F.binary_cross_entropy_with_logits(q[:, 1], nxt))
    return torch.stack(halt_loss).mean() + torch.stack(continue_loss).mean()
