"""AdaBelief (Zhuang et al., 2020): Adam whose second moment tracks the "belief" (g - m)².

The update rule is ``docs/update_rules.md`` ("AdaBelief"), steps 1-8, including the
reference quirk that ε is added into the stored ``exp_avg_var`` on every step (step 5).

Two code paths compute the same numbers: a multi-tensor path built from ``torch._foreach_*``
ops (the default; parameters grouped by device and dtype) and a per-tensor loop
(``foreach=False``). Both run the same elementwise ops in the same order, so on CPU they agree
bit for bit. The multi-tensor path works through cache-sized chunks (large tensors are cut into
flat views) and keeps one chunk-sized temporary (the belief ``r = g - m``, whose buffer is then
reused for the denominator), which keeps it near ``torch.optim.Adam(foreach=True)``'s speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.optimizer import _get_value

from . import _fused
from ._adabelief_cpu import batched_adabelief
from ._cpu_batches import Buffers
from ._sharding import Shards, check_params, is_dtensor, to_local
from ._warmup import check_lr
from .registry import register

WEIGHT_DECAY_TYPES = ("L2", "decoupled", "stable")
STATE = ("exp_avg", "exp_avg_var")


def _validate(g: dict[str, Any]) -> None:
    check_lr("AdaBelief", g["lr"])
    rules = [
        ("betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "each must be in [0, 1)"),
        ("eps", lambda v: v > 0, "must be > 0"),
        ("weight_decay", lambda v: v >= 0, "must be >= 0"),
        ("weight_decay_type", lambda v: v in WEIGHT_DECAY_TYPES, f"one of {WEIGHT_DECAY_TYPES}"),
        ("fused", lambda v: v in (None, True, False), "None, True or False"),
        ("fused", lambda v: not (v and g.get("foreach")), "fused and foreach are two paths"),
    ]
    for name, ok, why in rules:
        try:
            valid = bool(ok(g[name]))
        except (TypeError, ValueError):  # e.g. a string or None where a number belongs
            valid = False
        if not valid:
            raise ValueError(f"AdaBelief: invalid {name}={g[name]!r} ({why})")


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
        foreach: use the multi-tensor path; None (default) means yes.
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
        _validate(defaults)  # before any group exists, so the message names the argument
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
        _validate({**self.defaults, **param_group})  # before the group joins
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
            fn = _multi_tensor_adabelief if foreach else _single_tensor_adabelief
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
        """The small CPU tensors of one dtype in same-shape batches (``_adabelief_cpu``);
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
    from ._fused.adabelief import Plan  # imports Triton

    return Plan(params, exp_avgs, exp_avg_vars, steps)


def _single_tensor_adabelief(
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
    for p, g, m, s, step in zip(params, grads, exp_avgs, exp_avg_vars, steps, strict=True):
        step += 1
        t = _get_value(step)
        c1 = 1.0 - beta1**t
        sqrt_c2 = (1.0 - beta2**t) ** 0.5
        if weight_decay != 0 and weight_decay_type == "L2":
            r = g.add(p, alpha=weight_decay)  # a copy: p.grad stays untouched
            m.lerp_(r, 1.0 - beta1)
            r.sub_(m)
        else:
            m.lerp_(g, 1.0 - beta1)
            r = g.sub(m)
        s.mul_(beta2).addcmul_(r, r, value=1.0 - beta2).add_(eps)
        denom = r.copy_(s).sqrt_().div_(sqrt_c2).add_(eps)  # reuses r's buffer
        if weight_decay != 0 and weight_decay_type != "L2":
            if weight_decay_type == "stable":
                # 1 - lr·λ / mean(denom), as the multi-tensor path computes it (denom > 0)
                factor = torch.linalg.vector_norm(denom, 1).reciprocal_()
                p.mul_(factor.mul_(-lr * weight_decay * denom.numel()).add_(1.0))
            else:
                p.mul_(1.0 - lr * weight_decay)
        p.addcdiv_(m, denom, value=-lr / c1)


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
        # Python floats in eager mode; tensors while compiling, so a compiled step neither
        # breaks the graph on .item() nor recompiles for every new step count.
        t = [_get_value(step) for step in ts]
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
    t = [_get_value(step) for step in steps]
    _multi_tensor_update(*local, t, **hyper, shards=Shards(params))


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
