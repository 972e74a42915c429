"""Stacked ensembles: M runs of one model shape trained together in one process, as one batched model.

WHY. The study's models are tiny (width 64, ~0.1-0.8 M parameters) and its batches small (256-512), so on a
GPU a training step is bound by kernel launches and Python, not by arithmetic: one run leaves the card mostly
idle. The runs of one world that share data shape and model config (training seeds, candidate learning rates)
can instead train as ONE model whose every parameter carries a leading member dimension M: each kernel then
does M runs' work for one launch. On a CPU, which is compute-bound already, expect no gain — measured, a
loss: trm at the study's batch 512 on one thread trains at 0.98× (M = 1), 0.77× (M = 4) and 0.60× (M = 15)
the samples/s of one run alone (2-core x86 machine under load, 2026-12-07); `hrmlab bench --only ensemble`
measures it on the device at hand, GPU included.

HOW. `StackedEnsemble` stacks the members' parameters and buffers (`torch.func.stack_module_state`) and
keeps the parameters as views into one (M, N) buffer, with their gradients as views into a second one.
The forward is `torch.func.functional_call` of one template module under `torch.vmap` over the member
dimension (randomness="error": no random op may run, see below); each member is fed its OWN batch (inputs
shaped (M, B, ...)), the per-member losses are summed, and one backward gives every member its own gradient
(members share no computation, so the sum's gradient for member m is d loss_m / d params_m). `EnsembleStep`
then does what the trainer's `_train_step` + `scheduler.step()` + `after_optimizer_step()` do for one run
(train/trainer.py), per member, with O(1) kernels for all parameters of all members:

    loss → backward → non-finite check → clip_grad_norm_ → AdamW step → scheduler step → EMA update

* clipping: each member's global gradient norm over its slice of every parameter (one row norm of the
  (M, N) gradient buffer), coefficient max_norm / (norm + 1e-6) clamped at 1, as `clip_grad_norm_`;
* AdamW: torch's update rule (decoupled weight decay p·(1 − lr·wd), m ← lerp(m, g, 1 − β1),
  v ← β2·v + (1 − β2)·g², p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + eps)) with per-member lr,
  β1, β2, weight decay and step count t, vectors broadcasting over the member dimension;
* schedules: each member owns a real torch LR scheduler (`make_scheduler`, as the trainer builds it) driving
  a parameterless stand-in optimiser; its lr and betas (OneCycle cycles β1) are read every step;
* a member whose loss or gradient norm is non-finite is skipped alone, as the trainer skips a step: its
  parameters, moments and step count stay bit for bit as they were; its schedule still advances (the
  trainer steps the scheduler on skipped steps too) and so does a TRM weight EMA (likewise);
* parameters that get no gradient (p.grad None in a separate run, e.g. EncoderHRM's low gates) are left
  alone by AdamW, as torch's AdamW leaves them: found by one ordinary backward at the first step.

WHAT IS EXACT. Everything above is the same arithmetic as a separate run, but not the same kernels:
batched matmuls, a row norm instead of clip_grad_norm_'s norm of norms, the element-wise AdamW instead of
the trainer's fused kernel, and (for the LSTM) linear ops instead of oneDNN's LSTM round floats differently.
Members therefore agree with separately trained models to float32 rounding (forwards ≤ 1e-7 absolute,
gradients ≤ 4e-6 relative, one optimiser step ≤ 5e-8), not bit for bit; over further steps these differences
grow at the model's own rate, no faster than between torch's fused and foreach AdamW on the same run
(the recursive models amplify rounding most). tests/test_ensemble.py pins the tolerances. Checkpoints are ordinary:
`member_state_dict(i)` has the ordinary model's keys and loads into its class (`member(i)` does that), and
`EnsembleStep.export_member(i)` gives the (model, AdamW, scheduler) trio a separate run would hold.

MODELS. lstm, hrm (sapient, deep, encoder), hrm-act (with or without ACT) and trm train under vmap:

* lstm: `nn.LSTM` has no vmap rule; the template's LSTMs are replaced by `LinearLSTM`, the same recurrence
  from linear ops reading the same parameters (weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k},
  gates i, f, g, o), equal to nn.LSTM to float32 rounding (~1e-7). The ordinary model keeps nn.LSTM.
* hrm-act, trm: their attention calls SDPA, which vmaps (on CPU through a per-member fallback loop: exact,
  slower; on CUDA through batching rules); RoPE tables and the y/z/H/L start vectors are buffers, stacked
  like parameters. hrm-act's training loss (all segments, ACT's Q losses) has no data-dependent control
  flow and vmaps.
* Forwards that do not vmap run member by member (same result, no speed-up): hrm-act with ACT (inference
  stops when every sample halted: `bool(halted.all())`) and trm with a weight EMA in eval mode (it asks
  `ema.ready` with `.item()`). TRM's EMA update itself runs stacked after each step
  (`StackedEnsemble.after_optimizer_step`).

REFUSED (`EnsembleUnsupported`, a UserError, raised when the ensemble or its step is built): dropout > 0 and the HRM's
random initial states (`initial_state: random`) — random draws cannot reproduce separate runs' RNG streams,
so vmap runs with randomness="error" and such configs are refused rather than approximated; parameters not
float32 and the trainer's non-fp32 precisions (autocast, GradScaler); optimisers other than AdamW; gradient
accumulation (a preset with gpus > 1 on one process); any other `after_optimizer_step` hook than TRM's EMA;
members of different configs; bidirectional or projected LSTMs.

USE (a training loop; the trainer does not call this yet):

    models = [build_model(model_cfg, seed=s) for s in seeds]
    ensemble = StackedEnsemble(models, device="cuda")
    step = EnsembleStep(ensemble, train_cfg, total_steps, lrs=candidate_rates)   # or one TrainConfig each
    for each step:  x, y = the members' batches stacked to (M, B, H, 2), (M, B, K, 2)
        result = step((x, y))          # per-member loss, grad_norm, skipped, lr (device tensors, no sync)
    for i in range(M): torch.save(ensemble.member_state_dict(i), ...)   # ordinary checkpoints
    model, optimizer, scheduler = step.export_member(i)                # or the trainer's full state
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from hrmlab.errors import UserError

LossFn = Callable[[nn.Module, tuple], torch.Tensor]


class EnsembleUnsupported(UserError):
    """A model or recipe the stacked ensemble cannot train exactly as separate runs; the message says why."""


# ------------------------------------------------------------------------------------------------ LSTM


class LinearLSTM(nn.Module):
    """`nn.LSTM` (batch_first, unidirectional, no projection) written from linear ops, so it runs under vmap.

    Same parameter names and shapes as the nn.LSTM it is built from (its state dict loads into nn.LSTM and
    back), same gate order (i, f, g, o) and cell: gates = W_ih x_t + b_ih + W_hh h + b_hh; c ← σ(f)·c +
    σ(i)·tanh(g); h ← σ(o)·tanh(c). Input projections of all time steps are one matmul per layer.
    forward(x, (h0, c0) or None) → (output (B, T, H), (h_n, c_n) each (layers, B, H)), as nn.LSTM."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        if lstm.bidirectional or getattr(lstm, "proj_size", 0) or not lstm.batch_first or lstm.mode != "LSTM":
            raise EnsembleUnsupported("the ensemble's LSTM supports batch_first, unidirectional LSTMs without "
                                      "projection only")
        self.input_size, self.hidden_size, self.num_layers = lstm.input_size, lstm.hidden_size, lstm.num_layers
        self.bias, self.dropout = lstm.bias, float(lstm.dropout)
        for name, param in lstm.named_parameters():
            self.register_parameter(name, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        if x.dim() != 3:
            raise ValueError(f"LinearLSTM expects batch-first (B, T, features) input, got shape {tuple(x.shape)}")
        if hx is None:
            zeros = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        h0, c0 = hx
        layer_input, h_n, c_n = x, [], []
        for k in range(self.num_layers):
            w_ih, w_hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
            b_ih = getattr(self, f"bias_ih_l{k}") if self.bias else None
            b_hh = getattr(self, f"bias_hh_l{k}") if self.bias else None
            projected = F.linear(layer_input, w_ih, b_ih)  # (B, T, 4H): every step's input projection at once
            h, c = h0[k], c0[k]
            outputs = []
            for t in range(projected.shape[1]):
                i, f, g, o = (projected[:, t] + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            layer_input = torch.stack(outputs, dim=1)
            if self.dropout > 0 and self.training and k < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
            h_n.append(h)
            c_n.append(c)
        return layer_input, (torch.stack(h_n), torch.stack(c_n))


def _replace_lstms(module: nn.Module) -> None:
    """Swap every nn.LSTM inside `module` for a LinearLSTM holding the same parameters (in place)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.LSTM):
            setattr(module, name, LinearLSTM(child))
        else:
            _replace_lstms(child)


# ------------------------------------------------------------------------------------------- support


def _trm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from hrmlab.forecast.trm import TRM

    return [(name, m) for name, m in model.named_modules() if isinstance(m, TRM)]


def check_supported(model: nn.Module) -> None:
    """Raise EnsembleUnsupported when `model` cannot be trained as an exact stacked ensemble member."""
    from hrmlab.forecast.hrm import DeepSapientHRM
    from hrmlab.forecast.trm import TRM

    name = type(model).__name__
    for p_name, param in model.named_parameters():
        if param.dtype != torch.float32:
            raise EnsembleUnsupported(f"{name}: parameter {p_name} is {param.dtype}; the ensemble trains float32 only")
    for m_name, module in model.named_modules():
        where = f"{name}.{m_name}" if m_name else name
        if isinstance(module, nn.Dropout) and module.p > 0:
            raise EnsembleUnsupported(f"{where}: dropout {module.p} draws random masks, which an ensemble cannot "
                                      "draw as separate runs do; set the model's dropout to 0")
        if isinstance(module, nn.LSTM):
            if module.dropout > 0 and module.num_layers > 1:
                raise EnsembleUnsupported(f"{where}: LSTM dropout {module.dropout} draws random masks, which an "
                                          "ensemble cannot draw as separate runs do; set lstm.dropout to 0")
            LinearLSTM(module)  # raises for LSTM layouts it does not implement
        if isinstance(module, DeepSapientHRM) and module.cfg.initial_state == "random":
            raise EnsembleUnsupported(f"{where}: initial_state 'random' draws fresh states every call, which an "
                                      "ensemble cannot draw as separate runs do; use initial_state 'zero'")
        if hasattr(module, "after_optimizer_step") and not isinstance(module, TRM):
            raise EnsembleUnsupported(f"{where}: its after_optimizer_step hook has no stacked counterpart "
                                      "(only TRM's weight EMA has)")


def _eval_vmappable(model: nn.Module) -> bool:
    """Whether the model's eval-mode forward vmaps (see the module docstring: ACT halting, TRM's EMA)."""
    from hrmlab.forecast.hrm_act import HRMAct

    for _, module in model.named_modules():
        if isinstance(module, HRMAct) and module.cfg.act:
            return False
    return not any(trm.ema is not None for _, trm in _trm_modules(model))


def _train_forward_vmappable(model: nn.Module) -> bool:
    """Whether forward(x) without a target vmaps in training mode (hrm-act's ACT loop asks halted.all())."""
    from hrmlab.forecast.hrm_act import HRMAct

    return not any(isinstance(m, HRMAct) and m.cfg.act for m in model.modules())


class _LossCall(nn.Module):
    """Holds the template as `model`, so functional_call can run the trainer's loss hook loss_fn(model, batch)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, batch).float()


def _default_loss() -> LossFn:
    from hrmlab.train.trainer import mse_loss

    return mse_loss


def _vmap_error(exc: Exception, what: str) -> EnsembleUnsupported:
    return EnsembleUnsupported(f"{what} does not run under torch.vmap, so it cannot be trained as a stacked "
                               f"ensemble: {exc}")


# ------------------------------------------------------------------------------------------ ensemble


class StackedEnsemble:
    """M models of one config as one batched model; see the module docstring.

    Members' parameters live as rows of `flat` (M, N): `params[name]` is an (M, *shape) view of it, and its
    `.grad` a view of `flat_grad`. Buffers are stacked (M, *shape) tensors in `buffers`. The models passed in
    are copied, never modified; read results back with `member_state_dict` / `member`."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device | str | None = None):
        models = list(models)
        if not models:
            raise UserError("an ensemble needs at least one member")
        first = models[0]
        check_supported(first)
        names = [n for n, _ in first.named_parameters()]
        for i, m in enumerate(models[1:], 1):
            if type(m) is not type(first) or getattr(m, "cfg", None) != getattr(first, "cfg", None):
                raise EnsembleUnsupported(f"member {i} ({type(m).__name__}) differs in class or config from member 0")
            shapes = [(n, p.shape) for n, p in m.named_parameters()]
            if shapes != [(n, p.shape) for n, p in first.named_parameters()]:
                raise EnsembleUnsupported(f"member {i} has other parameters than member 0")
        self.device = torch.device(device) if device is not None else next(first.parameters()).device
        self.num_members = len(models)
        self.prototype = copy.deepcopy(first).to(self.device)
        """An ordinary model of the members' class (member 0's weights at build): `member(i)` copies it."""
        template = copy.deepcopy(first)
        _replace_lstms(template)
        self.template = template.to("meta")
        """The module functional_call runs (nn.LSTM replaced by LinearLSTM); holds no data of its own."""
        self._eval_vmap = _eval_vmappable(first)
        self._train_forward_vmap = _train_forward_vmappable(first)
        self._emas = [(prefix + "." if prefix else "", trm.ema) for prefix, trm in _trm_modules(template)
                      if trm.ema is not None]

        params, buffers = stack_module_state(models)  # (M, *shape) each, on the members' device
        m = self.num_members
        sizes = [params[n][0].numel() for n in names]
        self.offsets = dict(zip(names, zip([sum(sizes[:k]) for k in range(len(sizes))], sizes)))
        total = sum(sizes)
        self.flat = torch.empty(m, total, device=self.device, dtype=torch.float32)
        self.flat_grad = torch.zeros_like(self.flat)
        self.params: dict[str, torch.Tensor] = {}
        self._grad_views: dict[str, torch.Tensor] = {}
        requires_grad = {n: p.requires_grad for n, p in first.named_parameters()}
        for name in names:
            start, size = self.offsets[name]
            shape = params[name].shape[1:]
            self.flat[:, start:start + size].copy_(params[name].detach().reshape(m, size))
            view = self.flat[:, start:start + size].view(m, *shape)
            self.params[name] = view.requires_grad_(requires_grad[name])
            self._grad_views[name] = self.flat_grad[:, start:start + size].view(m, *shape)
        self.buffers: dict[str, torch.Tensor] = {n: b.detach().to(self.device).clone() for n, b in buffers.items()}
        self.used: dict[str, bool] | None = None
        """Which parameters receive a gradient (None until the first `backward`)."""
        self._trainable: torch.Tensor | None = None
        self.training = True
        self._loss_calls: dict[LossFn, tuple[_LossCall, dict, dict]] = {}

    # ------------------------------------------------------------------------------ mode, forward
    def train(self, mode: bool = True) -> "StackedEnsemble":
        self.training = mode
        self.template.train(mode)
        return self

    def eval(self) -> "StackedEnsemble":
        return self.train(False)

    def _vmappable(self, with_target: bool) -> bool:
        if not self.training:
            return self._eval_vmap
        return True if with_target else self._train_forward_vmap

    def _run(self, module: nn.Module, params: dict, buffers: dict, args: tuple, vmapped: bool, what: str):
        def call(p, b, *a):
            return functional_call(module, (p, b), a)

        if not vmapped:  # member by member: the model's own (data-dependent) code runs unbatched
            return torch.stack([call({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in buffers.items()},
                                     *(a[i] for a in args)) for i in range(self.num_members)])
        try:
            return vmap(call, randomness="error")(params, buffers, *args)
        except RuntimeError as exc:
            text = str(exc)
            if "vmap" in text or "Batching rule" in text or "randomness" in text:
                raise _vmap_error(exc, what) from exc
            raise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, B, ...) inputs → (M, B, ...) outputs of every member, in the ensemble's train/eval mode.
        Forwards that do not vmap (hrm-act with ACT, trm's EMA in eval) run member by member."""
        self._check_members(x)
        return self._run(self.template, self.params, self.buffers, (x,), self._vmappable(False),
                         type(self.prototype).__name__ + ".forward")

    __call__ = forward

    def losses(self, batch: Sequence[torch.Tensor], loss_fn: LossFn | None = None) -> torch.Tensor:
        """(M,) float32: loss_fn(member_m, batch[:, m]) for every member m (default: the trainer's `mse_loss`,
        i.e. the model's own `training_loss` in training mode). Every tensor of `batch` is (M, B, ...)."""
        batch = tuple(batch)
        for t in batch:
            self._check_members(t)
        key = fn = loss_fn or _default_loss()
        if key not in self._loss_calls:  # the wrapper's parameter names carry the prefix `model.`
            call = _LossCall(self.template, fn)
            self._loss_calls[key] = (call, {"model." + k: v for k, v in self.params.items()},
                                     {"model." + k: v for k, v in self.buffers.items()})
        call, params, buffers = self._loss_calls[key]
        return self._run(call, params, buffers, batch, self._vmappable(True),
                         type(self.prototype).__name__ + " training loss")

    def _check_members(self, t: torch.Tensor) -> None:
        if t.dim() == 0 or t.shape[0] != self.num_members:
            raise ValueError(f"ensemble inputs need a leading member dimension of {self.num_members}, "
                             f"got shape {tuple(t.shape)}")

    # ------------------------------------------------------------------------------ gradients
    def zero_grad(self) -> None:
        """Zero every gradient (one kernel) and point each parameter's .grad back at its view of flat_grad."""
        self.flat_grad.zero_()
        for name, p in self.params.items():
            if p.requires_grad and p.grad is not self._grad_views[name]:
                p.grad = self._grad_views[name]

    def backward(self, losses: torch.Tensor) -> None:
        """Backward of losses.sum(): every member's gradient lands in its row of `flat_grad`. The first call
        also finds which parameters get no gradient at all (left alone by AdamW, as torch's AdamW does)."""
        with warnings.catch_warnings():  # grads are strided views of flat_grad, as the parameters are of flat
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            if self.used is None:
                for p in self.params.values():
                    p.grad = None
                losses.sum().backward()
                self.used = {n: p.grad is not None for n, p in self.params.items()}
                with torch.no_grad():
                    self.flat_grad.zero_()
                    for n, p in self.params.items():
                        if p.grad is not None:
                            self._grad_views[n].copy_(p.grad)
                        if p.requires_grad:
                            p.grad = self._grad_views[n]
                return
            losses.sum().backward()

    def trainable_mask(self) -> torch.Tensor | None:
        """(1, N) bool: columns of parameters that receive gradients; None when all do (or before backward)."""
        if self.used is None or all(self.used.values()):
            return None
        if self._trainable is None:
            mask = torch.zeros(1, self.flat.shape[1], dtype=torch.bool)
            for name, (start, size) in self.offsets.items():
                mask[:, start:start + size] = self.used[name]
            self._trainable = mask.to(self.device)
        return self._trainable

    # ------------------------------------------------------------------------------ after-step hooks
    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """The members' own after-step updates, stacked: TRM's weight EMA (train/trainer.py calls the model's
        `after_optimizer_step` after every step, skipped ones included; so does `EnsembleStep`)."""
        m = self.num_members
        for prefix, ema in self._emas:
            updates = self.buffers[prefix + "ema.updates"]  # (M, 1) long
            t = updates.double()
            # WeightEMA.update: decay = 0 at the first update, else min(decay, (1 + t) / (10 + t)), in float64
            decay = torch.where(t == 0, torch.zeros_like(t),
                                torch.minimum(torch.full_like(t, ema.decay), (1 + t) / (10 + t)))
            weight = (1.0 - decay).float().view(m)
            for name in ema.names:
                shadow = self.buffers[prefix + "ema." + ema._key(name)]
                live = self.params[prefix + "model." + name]
                shadow.lerp_(live.detach(), weight.view(m, *[1] * (shadow.dim() - 1)))
            updates += 1

    # ------------------------------------------------------------------------------ members
    def member_state_dict(self, i: int) -> "OrderedDict[str, torch.Tensor]":
        """Member i's weights under the ordinary model's state-dict keys (copies; loads into its class)."""
        if not -self.num_members <= i < self.num_members:
            raise IndexError(f"member {i} of an ensemble of {self.num_members}")
        out = OrderedDict()
        for key in self.prototype.state_dict():
            source = self.params if key in self.params else self.buffers
            if key not in source:
                raise KeyError(f"state-dict key {key} is neither a stacked parameter nor a stacked buffer")
            out[key] = source[key][i].detach().clone()
        return out

    def state_dicts(self) -> list["OrderedDict[str, torch.Tensor]"]:
        return [self.member_state_dict(i) for i in range(self.num_members)]

    def member(self, i: int) -> nn.Module:
        """Member i as an ordinary model (a fresh copy of the members' class, in the ensemble's mode)."""
        model = copy.deepcopy(self.prototype)
        model.load_state_dict(self.member_state_dict(i))
        return model.train(self.training)

    def num_parameters(self) -> int:
        """Parameters of one member."""
        return self.flat.shape[1]


# ------------------------------------------------------------------------------------------ optimiser


class _MemberSchedule:
    """One member's LR schedule exactly as the trainer builds it (`make_scheduler` on an AdamW with the
    trainer's arguments), driving a one-element stand-in parameter that is never stepped: each step its
    param group holds the lr and betas (OneCycle cycles β1) that the member's AdamW step uses."""

    def __init__(self, schedule: str, lr: float, weight_decay: float, min_lr: float, total_steps: int):
        from hrmlab.train.optim import make_scheduler

        self.optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=lr, weight_decay=weight_decay)
        self.scheduler = make_scheduler(schedule, self.optimizer, total_steps, lr, min_lr)

    def current(self) -> tuple[float, float, float]:
        group = self.optimizer.param_groups[0]
        return float(group["lr"]), float(group["betas"][0]), float(group["betas"][1])

    def step(self) -> None:
        with warnings.catch_warnings():  # the stand-in optimiser never steps, by design
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()


class StackedAdamW:
    """torch.optim.AdamW (amsgrad off, maximize off) for every member at once, on the ensemble's (M, N) buffers.

    Per member: step count, lr, β1, β2 and weight decay, as (M,) float64 vectors computed like torch's
    Python floats, cast to float32 where they meet the tensors. `step(ok, ...)` updates members where `ok`;
    the others keep parameters, moments and step count untouched."""

    def __init__(self, ensemble: StackedEnsemble, weight_decay: Sequence[float] | float = 0.01, eps: float = 1e-8):
        m = ensemble.num_members
        self.ensemble = ensemble
        self.exp_avg = torch.zeros_like(ensemble.flat)
        self.exp_avg_sq = torch.zeros_like(ensemble.flat)
        self.steps = torch.zeros(m, dtype=torch.float64, device=ensemble.device)
        wd = [float(weight_decay)] * m if isinstance(weight_decay, (int, float)) else [float(w) for w in weight_decay]
        if len(wd) != m:
            raise ValueError(f"{len(wd)} weight decays for {m} members")
        self.weight_decay = torch.tensor(wd, dtype=torch.float64, device=ensemble.device)
        self.eps = eps

    @torch.no_grad()
    def step(self, ok: torch.Tensor, lr: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor) -> None:
        """One AdamW step of the members where `ok` ((M,) bool), from the gradients in ensemble.flat_grad;
        lr, beta1, beta2: (M,) float64 on the ensemble's device."""
        ens = self.ensemble
        p, g, m, v = ens.flat, ens.flat_grad, self.exp_avg, self.exp_avg_sq

        def col(t: torch.Tensor) -> torch.Tensor:  # (M,) float64 → (M, 1) float32, as a Python scalar is cast
            return t.float()[:, None]

        steps = torch.where(ok, self.steps + 1, self.steps)
        step_size = lr / (1 - beta1 ** steps)
        bc2_sqrt = (1 - beta2 ** steps).sqrt()
        new_p = p * col(1 - lr * self.weight_decay)
        new_m = m.lerp(g, col(1 - beta1))
        new_v = v * col(beta2) + col(1 - beta2) * g * g
        denom = new_v.sqrt() / col(bc2_sqrt) + self.eps
        new_p = new_p - col(step_size) * new_m / denom
        mask = ok[:, None]
        trainable = ens.trainable_mask()
        if trainable is not None:
            mask = mask & trainable
        p.copy_(torch.where(mask, new_p, p))
        m.copy_(torch.where(mask, new_m, m))
        v.copy_(torch.where(mask, new_v, v))
        self.steps = steps

    @torch.no_grad()
    def write_member_state(self, i: int, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        """Give torch `optimizer` (an AdamW over `params`, member i's parameters in the ensemble's order) member
        i's step count and moments; parameters that never got a gradient get no state, as in torch."""
        ens = self.ensemble
        steps = float(self.steps[i])
        for (name, (start, size)), param in zip(ens.offsets.items(), params):
            if steps == 0 or (ens.used is not None and not ens.used[name]):
                continue
            group = next(g for g in optimizer.param_groups if any(q is param for q in g["params"]))
            on_device = group.get("fused") or group.get("capturable")
            optimizer.state[param] = {
                "step": torch.tensor(steps, dtype=torch.float32, device=param.device if on_device else "cpu"),
                "exp_avg": self.exp_avg[i, start:start + size].view(param.shape).clone().to(param.device),
                "exp_avg_sq": self.exp_avg_sq[i, start:start + size].view(param.shape).clone().to(param.device)}


# ------------------------------------------------------------------------------------------ one step


@dataclasses.dataclass
class EnsembleStepResult:
    """Per-member results of one `EnsembleStep`, (M,) tensors on the ensemble's device (read them when needed:
    reading synchronises a GPU). As the trainer's `_train_step` returns them: loss NaN where skipped;
    grad_norm the norm before clipping, NaN where the loss was non-finite."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    skipped: torch.Tensor
    lr: torch.Tensor
    """The learning rate each member trained with at this step."""


def _member_configs(cfgs, m: int) -> list:
    cfgs = [cfgs] * m if not isinstance(cfgs, (list, tuple)) else list(cfgs)
    if len(cfgs) != m:
        raise ValueError(f"{len(cfgs)} training configs for {m} members")
    from hrmlab.train.trainer import grad_accum_steps

    for i, cfg in enumerate(cfgs):
        if cfg.optimizer != "adamw":
            raise EnsembleUnsupported(f"member {i}: optimizer {cfg.optimizer!r}; the ensemble implements adamw only")
        if cfg.precision != "fp32":
            raise EnsembleUnsupported(f"member {i}: precision {cfg.precision!r}; the ensemble trains fp32 only")
        if grad_accum_steps(cfg.gpus, 1) > 1:
            raise EnsembleUnsupported(f"member {i}: gpus={cfg.gpus} accumulates gradients over micro-batches in one "
                                      "process; the ensemble takes one batch per member per step")
    return cfgs


class EnsembleStep:
    """One training step of every member, as the trainer takes it for one run (`_train_step`, then
    `scheduler.step()`, then the model's `after_optimizer_step()`), for a training loop to call.

    `cfgs`: one TrainConfig for all members or one per member; per member they may differ in lr, min_lr,
    weight_decay, grad_clip and schedule (they must be adamw, fp32, no accumulation). `lrs` overrides the
    configs' lr (candidate rates). `total_steps`: the run's optimiser steps (the schedule's span, as the
    trainer's `total_steps`). `loss_fn`: the trainer's loss hook (default `mse_loss`).

    Call it with the members' batches, each tensor (M, B, ...); every member trains on its own batch."""

    def __init__(self, ensemble: StackedEnsemble, cfgs, total_steps: int, *, lrs: Sequence[float] | None = None,
                 loss_fn: LossFn | None = None):
        m = ensemble.num_members
        cfgs = _member_configs(cfgs, m)
        if lrs is not None:
            if len(lrs) != m:
                raise ValueError(f"{len(lrs)} learning rates for {m} members")
            cfgs = [dataclasses.replace(c, lr=float(lr)) for c, lr in zip(cfgs, lrs)]
        self.ensemble, self.cfgs = ensemble, cfgs
        self.loss_fn = loss_fn or _default_loss()
        self.optimizer = StackedAdamW(ensemble, [c.weight_decay for c in cfgs])
        self.total_steps = total_steps = max(1, int(total_steps))
        self.schedules = [_MemberSchedule(c.schedule, c.lr, c.weight_decay, c.min_lr, total_steps) for c in cfgs]
        self.max_norm = torch.tensor([c.grad_clip if c.grad_clip > 0 else math.inf for c in cfgs],
                                     dtype=torch.float32, device=ensemble.device)
        self.steps_taken = 0

    def current_rates(self) -> torch.Tensor:
        """(3, M) float64 on the device: lr, β1, β2 that each member's next step uses."""
        rows = torch.tensor([s.current() for s in self.schedules], dtype=torch.float64).T.contiguous()
        if self.ensemble.device.type == "cuda":  # pinned and asynchronous: no host-device sync per step
            return rows.pin_memory().to(self.ensemble.device, non_blocking=True)
        return rows.to(self.ensemble.device)

    def __call__(self, batch: Sequence[torch.Tensor]) -> EnsembleStepResult:
        ens = self.ensemble
        ens.train()
        lr, beta1, beta2 = self.current_rates()
        ens.zero_grad()
        losses = ens.losses(batch, self.loss_fn)
        ens.backward(losses)
        loss_ok = torch.isfinite(losses.detach())
        grad_norm = torch.linalg.vector_norm(ens.flat_grad, dim=1)  # each member's norm over all its parameters
        ok = loss_ok & torch.isfinite(grad_norm)
        coef = (self.max_norm / (grad_norm + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s coefficient
        ens.flat_grad.mul_(coef[:, None])
        self.optimizer.step(ok, lr, beta1, beta2)
        for schedule in self.schedules:  # also for skipped members: the schedule follows the data position
            schedule.step()
        ens.after_optimizer_step()
        self.steps_taken += 1
        nan = torch.full_like(grad_norm, math.nan)
        return EnsembleStepResult(loss=torch.where(ok, losses.detach(), nan),
                                  grad_norm=torch.where(loss_ok, grad_norm, nan),
                                  skipped=~ok, lr=lr.float())

    def export_member(self, i: int):
        """Member i as the trainer would hold it after the same steps: (model, optimizer, scheduler), built by
        `make_optimizer` / `make_scheduler` as the trainer builds them and given member i's weights, AdamW
        moments and step count, and schedule position — ordinary objects for `save_checkpoint`, from which an
        ordinary run continues as the member would."""
        from hrmlab.train.optim import make_optimizer, make_scheduler

        cfg, ens = self.cfgs[i], self.ensemble
        model = ens.member(i)
        params = list(model.parameters())
        optimizer = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay, ens.device)
        scheduler = make_scheduler(cfg.schedule, optimizer, self.total_steps, cfg.lr, cfg.min_lr)
        schedule = self.schedules[i]
        scheduler.load_state_dict(schedule.scheduler.state_dict())
        implementation = ("params", "foreach", "fused", "capturable", "differentiable")
        for key, value in schedule.optimizer.param_groups[0].items():  # lr, betas, initial_lr, max_lr, ...
            if key not in implementation:
                optimizer.param_groups[0][key] = value
        self.optimizer.write_member_state(i, optimizer, params)
        return model, optimizer, scheduler


def stacked_train_step(step: EnsembleStep, batch: Sequence[torch.Tensor]) -> EnsembleStepResult:
    """Functional spelling of `step(batch)`: one optimiser step of every member of `step.ensemble`."""
    return step(batch)
