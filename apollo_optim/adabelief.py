"""AdaBelief (Zhuang et al., 2020): Adam whose second moment tracks the "belief" (g - m)².

The update rule is ``docs/update_rules.md`` ("AdaBelief"), steps 1-8, including the
reference quirk that ε is added into the stored ``exp_avg_var`` on every step (step 5).

:meth:`AdaBelief.step` picks one of the implementations of the rule for each group (the
benchmark figures that earn each its place: ``docs/performance.md``):

* ``fused`` (the default for CUDA float32/bfloat16/float16 tensors): the Triton kernels of
  ``_kernels/triton_adabelief.py``, two launches per group, counters on the device;
* on CPU by default: same-shape batches of the small tensors (``_kernels/cpu_adabelief.py``,
  their state in the rows of shared matrices) and the multi-tensor path below for the rest;
* the multi-tensor path (``torch._foreach_*``, parameters grouped by device and dtype; on CPU
  through cache-sized chunks, large tensors cut into flat views): what a user's
  ``torch.compile`` traces (the counters stay tensors), the DTensor (FSDP2) path, and the
  unfused step on other devices;
* the same multi-tensor update one tensor at a time (``foreach=False``).

Every path runs the same elementwise ops in the same order, so on CPU they agree bit for
bit (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.optimizer import _get_value

from . import _validation as v
from ._kernels import fused as _fused
from ._kernels.cpu_adabelief import batched_adabelief
from ._kernels.cpu_buffers import Buffers
from ._sharding import Shards, check_params, is_dtensor, to_local
from .registry import register

STATE = ("exp_avg", "exp_avg_var")
RULES = (
    v.LR,
    v.BETAS,
    v.EPS,
    v.WEIGHT_DECAY,
    v.one_of("weight_decay_type", v.WEIGHT_DECAY_TYPES),
    v.FUSED,
    v.exclusive("fused", "foreach"),
)


@register("adabelief", summary="AdaBelief (Zhuang et al., 2020): Adam with belief (g-m)² variance")
class AdaBelief(torch.optim.Optimizer):
    """AdaBelief with L2, decoupled or stable weight decay.

    Per step, for each parameter θ with gradient g (rule steps 1-8)::

        t += 1; c1 = 1 - β1^t; c2 = 1 - β2^t
        g = g + λθ                                    (L2 only; p.grad itself is untouched)
        m = β1·m + (1 - β1)·g;  r = g - m
        s = β2·s + (1 - β2)·r⊙r + ε                   (ε stored back into the state)
        denom = √s / √c2 + ε
        θ = θ·(1 - lr·λ')   λ' = λ (decoupled) or λ / mean(denom) (stable)
        θ = θ - (lr / c1)·m / denom

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: (β1, β2), each in [0, 1).
        eps: ε > 0 (the paper: 1e-8 vision, 1e-12 LSTM, 1e-16 NMT).
        weight_decay: λ >= 0.
        weight_decay_type: 'L2' (authors' default), 'decoupled' (the paper's tables) or
            'stable' (decoupled, divided by the mean denominator).
        foreach: ``None`` (default) or ``True``: the multi-tensor path (on CPU with same-shape
            batches of the small tensors); ``False``: the same update one tensor at a time.
        fused: the fused Triton kernels (two launches per group, no host-device
            synchronisation, step counters on the device). ``None`` (default): used for CUDA
            float32/bfloat16/float16 parameters when Triton is importable and ``foreach`` was
            not given; ``True``: required (an error says why it cannot run); ``False``: never.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        weight_decay_type: str = "L2",
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            weight_decay_type=weight_decay_type,
            foreach=foreach,
            fused=fused,
        )
        v.validate("AdaBelief", defaults, RULES)  # before any group: the message names it
        defaults["betas"] = tuple(betas)
        self._fused_plans = _fused.Cache()
        self._cpu_buffers: dict[torch.dtype, Buffers] = {}
        super().__init__(params, defaults)
        if fused:
            _fused.check_requested("AdaBelief", [p for g in self.param_groups for p in g["params"]])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._fused_plans = _fused.Cache()
        self._cpu_buffers = {}
        for group in self.param_groups:
            group.setdefault("fused", None)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        v.validate("AdaBelief", {**self.defaults, **param_group}, RULES)  # before it joins
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # only the stable decay reduces over a tensor (its mean denominator)
        elementwise = group["weight_decay_type"] != "stable" or group["weight_decay"] == 0
        check_params("AdaBelief", group["params"], elementwise=elementwise)

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_vars, steps) -> None:
        # Fills the lists in place, like torch.optim's _init_group, which torch.compile
        # special-cases (it runs it eagerly and guards on the state it creates).
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("AdaBelief does not support sparse gradients")
            state = self.state[p]
            if not state:
                # The counter is a tensor so a compiled step does not specialise on its value.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_var"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_vars.append(state["exp_avg_var"])
            steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One AdaBelief update; ``closure`` re-evaluates the loss (with grad enabled)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            tensors = ([], [], [], [], [])
            self._init_group(group, *tensors)
            if not tensors[0]:
                continue
            if _fused.considered(group, tensors[0]):
                states = [self.state[p] for p in tensors[0]]
                plan = _fused.plan(
                    self._fused_plans, "AdaBelief", group, tensors[0], states, STATE, _plan
                )
                if plan is not None:
                    plan.step(tensors[1], group)
                    continue
            lr = group["lr"]
            if isinstance(lr, torch.Tensor) and not torch.compiler.is_compiling():
                lr = lr.item()  # eager: a Python number; compiled: read in the graph
            foreach = group["foreach"] is not False  # None (the default) means the fast path
            fn = _multi_tensor_adabelief if foreach else _per_tensor_adabelief
            if any(is_dtensor(p) for p in tensors[0]):
                fn = _sharded_adabelief  # FSDP2: the stable decay's mean over whole tensors
            elif foreach and not torch.compiler.is_compiling():
                tensors = self._batched(group, tensors, lr)
                if not tensors[0]:
                    continue
            fn(
                *tensors,
                lr=lr,
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                weight_decay_type=group["weight_decay_type"],
            )
        return loss

    def _batched(self, group, tensors, lr):
        """The small CPU tensors of one dtype in same-shape batches (``_kernels/cpu_adabelief``);
        returns the lists of the others."""
        params = tensors[0]
        dtype = params[0].dtype
        if any(p.device.type != "cpu" or p.dtype != dtype for p in params):
            return tensors
        buffers = self._cpu_buffers.setdefault(dtype, Buffers(dtype))
        rest = batched_adabelief(
            params,
            tensors[1],
            [self.state[p] for p in params],
            lr=lr,
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            weight_decay_type=group["weight_decay_type"],
            buffers=buffers,
        )
        return tensors if len(rest) == len(params) else tuple([x[i] for i in rest] for x in tensors)


def _plan(params, exp_avgs, exp_avg_vars, steps):
    from ._kernels.triton_adabelief import Plan  # imports Triton

    return Plan(params, exp_avgs, exp_avg_vars, steps)


def _per_tensor_adabelief(params, grads, exp_avgs, exp_avg_vars, steps, **hyper) -> None:
    """``foreach=False``: the multi-tensor update one tensor at a time (the same ops, so the
    same numbers)."""
    for p, g, m, s, step in zip(params, grads, exp_avgs, exp_avg_vars, steps, strict=True):
        step += 1
        _multi_tensor_update([p], [g], [m], [s], _counts([step]), **hyper)


def _multi_tensor_adabelief(
    params,
    grads,
    exp_avgs,
    exp_avg_vars,
    steps,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    weight_decay_type,
) -> None:
    tensors = [params, grads, exp_avgs, exp_avg_vars, steps]
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype(tensors)
    split = weight_decay_type != "stable" or weight_decay == 0  # stable needs whole tensors
    for (ps, gs, ms, ss, ts), _ in grouped.values():
        torch._foreach_add_(ts, 1.0)
        t = _counts(ts)
        # Chunking buys cache locality on CPU; on GPUs it would only add kernel launches.
        chunks = (
            _chunks([ps, gs, ms, ss], t, split)
            if ps[0].device.type == "cpu"
            else [[ps, gs, ms, ss, t]]
        )
        for chunk in chunks:
            _multi_tensor_update(
                *chunk,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                eps=eps,
                weight_decay=weight_decay,
                weight_decay_type=weight_decay_type,
            )


def _sharded_adabelief(params, grads, exp_avgs, exp_avg_vars, steps, **hyper) -> None:
    """The multi-tensor update on each rank's shards of DTensor parameters."""
    torch._foreach_add_(steps, 1.0)
    local = [[to_local(x) for x in lst] for lst in (params, grads, exp_avgs, exp_avg_vars)]
    _multi_tensor_update(*local, _counts(steps), **hyper, shards=Shards(params))


def _counts(steps: list[torch.Tensor]) -> list:
    """The step counts: Python numbers in eager mode; float64 tensors while compiling, so
    that a compiled step neither breaks the graph on ``.item()`` nor recompiles for every
    new count, and its bias corrections are as exact as eager's (the counters are float32)."""
    if torch.compiler.is_compiling():
        return [step.to(torch.float64) for step in steps]
    return [_get_value(step) for step in steps]


CHUNK_NUMEL = 1 << 18


def _chunks(lists, t, split):
    """Yield sub-lists of about CHUNK_NUMEL elements, so one chunk's p, g, m, s and belief
    stay in cache across the ~12 passes; large contiguous tensors are cut into flat views
    (every op but the stable decay's mean is elementwise, so this changes no number)."""
    out, size = [[] for _ in range(len(lists) + 1)], 0
    for i, t_i in enumerate(t):
        ts = [lst[i] for lst in lists]
        n = ts[0].numel()
        if split and n > CHUNK_NUMEL and all(x.is_contiguous() for x in ts):
            pieces = [x.view(-1).split(CHUNK_NUMEL) for x in ts]
        else:
            pieces = [[x] for x in ts]
        for j in range(len(pieces[0])):
            for k, pc in enumerate(pieces):
                out[k].append(pc[j])
            out[-1].append(t_i)
            size += pieces[0][j].numel()
            if size >= CHUNK_NUMEL:
                yield out
                out, size = [[] for _ in range(len(lists) + 1)], 0
    if out[0]:
        yield out


def _multi_tensor_update(
    ps, gs, ms, ss, t, *, lr, beta1, beta2, eps, weight_decay, weight_decay_type, shards=None
) -> None:
    step_size = [-lr / (1.0 - beta1**x) for x in t]
    sqrt_c2 = [(1.0 - beta2**x) ** 0.5 for x in t]
    if weight_decay != 0 and weight_decay_type == "L2":
        rs = torch._foreach_add(gs, ps, alpha=weight_decay)
        torch._foreach_lerp_(ms, rs, 1.0 - beta1)
        torch._foreach_sub_(rs, ms)
    else:
        torch._foreach_lerp_(ms, gs, 1.0 - beta1)
        rs = torch._foreach_sub(gs, ms)
    torch._foreach_mul_(ss, beta2)
    torch._foreach_addcmul_(ss, rs, rs, value=1.0 - beta2)
    torch._foreach_add_(ss, eps)
    # denom = √s / √c2 + ε, written into the belief buffer (no second temporary).
    torch._foreach_copy_(rs, ss)
    torch._foreach_sqrt_(rs)
    torch._foreach_div_(rs, sqrt_c2)
    torch._foreach_add_(rs, eps)
    if weight_decay != 0 and weight_decay_type != "L2":
        if weight_decay_type == "stable":
            factors = torch._foreach_norm(rs, 1)
            numels = [r.numel() for r in rs]
            if shards is not None:  # rs are shards: sum their norms, divide by whole sizes
                factors, numels = list(shards.sum_(torch.stack(factors)).unbind()), shards.numel
            torch._foreach_reciprocal_(factors)
            torch._foreach_mul_(factors, [-lr * weight_decay * n for n in numels])
            torch._foreach_add_(factors, 1.0)
            torch._foreach_mul_(ps, factors)
        else:
            torch._foreach_mul_(ps, 1.0 - lr * weight_decay)
    if torch.compiler.is_compiling():  # tensor step sizes: fold them into the denominator
        torch._foreach_div_(rs, step_size)
        torch._foreach_addcdiv_(ps, ms, rs)
    else:
        torch._foreach_addcdiv_(ps, ms, rs, step_size)
