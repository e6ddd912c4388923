"""Apollo: an adaptive parameter-wise diagonal quasi-Newton method (Ma, 2020).

The update follows ``docs/update_rules.md`` ("Apollo (and ApolloW)") step by step;
the step numbers in the comments below are that page's. Every reduction is over one
parameter tensor ("parameter-wise"), never across tensors.

:meth:`Apollo.step` picks one of three implementations of the rule for each group (the
benchmark figures that earn each its place: ``docs/performance.md``):

* ``fused`` (the default for CUDA float32/bfloat16 tensors): the Triton kernels of
  ``_kernels/triton_apollo.py``, a constant number of launches per group, counters on
  the device;
* the blocked CPU step (the default on CPU, ``foreach=None`` or ``True``):
  ``_kernels/cpu_apollo.py``, same-shape batches of small tensors and cache-sized sweeps
  over large ones;
* the tensor-scalar form below (:func:`apollo_scalars` then :func:`apollo_apply`, no
  ``.item()``): what a user's ``torch.compile`` traces, what ``compiled=True`` compiles
  (once, dynamic shapes, for every tensor of at least 64k elements), the DTensor (FSDP2)
  path with its reductions all-reduced over the shards, and the per-tensor loop
  everywhere else (``foreach=False``; float64 or ``fused=False`` on CUDA; other devices).

All three equal the float64 reference rule up to float rounding (tested).
A user-compiled training step specialises on the group's lr (a Python number): an
LR scheduler then causes recompiles; ``compiled=True`` passes lr as a tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple

import torch
from torch.optim.optimizer import _get_scalar_dtype

from . import _validation as v
from ._kernels import fused as _fused
from ._kernels.cpu_apollo import cpu_apollo
from ._kernels.cpu_buffers import Buffers
from ._sharding import Shards, check_params, is_dtensor, to_local
from ._warmup import warmup_lr, warn_if_scheduled_in_warmup
from .registry import register

COMPILE_MIN_NUMEL = 1 << 16  # smaller tensors take the eager path
STATE = ("exp_avg_grad", "approx_hessian", "update")
APOLLO_DTYPES = (torch.float32, torch.bfloat16)  # float16: d⊙d overflows once |d| > 256

RULES = (
    v.LR,
    v.Rule("beta", lambda b, _: 0 <= b < 1, "must be in [0, 1)"),
    v.EPS,
    v.one_of("rebound", ("constant", "belief")),
    v.Rule("sigma", lambda s, _: s > 0, "must be > 0"),
    v.WARMUP,
    v.optional(v.INIT_LR),  # None: lr / 1000
    v.WEIGHT_DECAY,
    v.optional(v.one_of("weight_decay_type", v.WEIGHT_DECAY_TYPES)),  # None: by rebound
    v.FUSED,
    v.exclusive("fused", "compiled"),
    v.exclusive("fused", "foreach"),
)


class Hyper(NamedTuple):
    """One group's hyperparameters, resolved for the update functions."""

    beta: float
    eps_prime: float  # ε' of rule step 5: ε for belief, ε/σ for constant
    sigma: float
    belief: bool
    weight_decay: float
    l2: bool  # λ ≠ 0 and type 'L2'
    decoupled: bool  # λ ≠ 0 and type 'decoupled' or 'stable'
    stable: bool
    maximize: bool
    warmup: int
    init_lr: float
    base_lr: float

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> Hyper:
        belief = group["rebound"] == "belief"
        wd, wdt = float(group["weight_decay"]), group["weight_decay_type"]
        return cls(
            beta=float(group["beta"]),
            eps_prime=float(group["eps"]) if belief else group["eps"] / group["sigma"],
            sigma=float(group["sigma"]),
            belief=belief,
            weight_decay=wd,
            l2=wd != 0 and wdt == "L2",
            decoupled=wd != 0 and wdt != "L2",
            stable=wdt == "stable",
            maximize=bool(group.get("maximize", False)),
            warmup=int(group["warmup"]),
            init_lr=float(group["init_lr"]),
            base_lr=float(group.get("base_lr", group["lr"])),  # absent in foreign checkpoints
        )


class Apollo(torch.optim.Optimizer):
    """Apollo (and ApolloW with ``weight_decay_type='decoupled'``).

    Args:
        params: parameters or parameter groups.
        lr: learning rate η after warmup (required; the paper uses 0.01-1.0).
        beta: β of the bias-corrected moving average m of the gradient (rule steps 3-6).
        eps: ε of the rectification; the effective ε' is ε/σ for ``constant`` rebound.
        rebound: ``'constant'`` (D = max(|B|, σ)) or ``'belief'`` (D = max(|B|, ‖Δ‖∞) + ε'/α).
        sigma: σ, the constant rebound bound: 0.01 is the current paper, 1.0 the first version.
        warmup: W, updates of linear warmup from ``init_lr`` to each group's ``lr``.
        init_lr: η₀, the warmup's first learning rate (default ``lr / 1000``).
        weight_decay: λ.
        weight_decay_type: ``'L2'`` (added to the gradient), ``'decoupled'`` or ``'stable'``
            (added to the update, the latter divided by mean(D)); default ``'L2'`` for the
            constant rebound and ``'decoupled'`` for belief.
        foreach: on CPU, the blocked multi-tensor step (``None``, the default, or ``True``)
            or the per-tensor loop (``False``). Elsewhere the unfused step is the loop.
        maximize: maximize the objective instead of minimizing it.
        compiled: update tensors of >= 64k elements with a ``torch.compile``'d kernel
            (opt-in; the first step compiles, ~20 s on a 2-core CPU); smaller tensors
            stay on the eager path.
        fused: the fused Triton kernels (a constant number of launches per group, no
            host-device synchronisation, step counters on the device). ``None`` (default):
            used for CUDA float32/bfloat16 parameters when a recent enough Triton is
            importable and neither ``foreach`` nor ``compiled`` was given; ``True``:
            required (an error says why it cannot run); ``False``: never.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        beta: float = 0.9,
        eps: float = 1e-4,
        rebound: str = "constant",
        sigma: float = 0.01,
        warmup: int = 500,
        init_lr: float | None = None,
        weight_decay: float = 0.0,
        weight_decay_type: str | None = None,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        compiled: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            beta=beta,
            eps=eps,
            rebound=rebound,
            sigma=sigma,
            warmup=warmup,
            init_lr=init_lr,
            weight_decay=weight_decay,
            weight_decay_type=weight_decay_type,
            foreach=foreach,
            maximize=maximize,
            compiled=compiled,
            fused=fused,
        )
        v.validate("Apollo", defaults, RULES)  # before any group: the message names the argument
        self._cpu_buffers: dict[torch.dtype, Buffers] = {}
        self._compiled_fn: tuple[Callable, Callable] | None = None
        self._warmup_checked = False
        self._fused_plans = _fused.Cache()
        super().__init__(params, defaults)
        if fused:
            everything = [p for g in self.param_groups for p in g["params"]]
            _fused.check_requested("Apollo", everything, APOLLO_DTYPES)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its ``base_lr`` (the warmup's target, rule step 1) is its lr now."""
        v.validate("Apollo", {**self.defaults, **param_group}, RULES)  # before it joins
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_params("Apollo", group["params"], elementwise=False)
        # Python numbers even when lr is a tensor: a compiled step treats them as constants
        group.setdefault("base_lr", float(group["lr"]))
        if group["init_lr"] is None:
            group["init_lr"] = float(group["lr"]) / 1000
        if group["weight_decay_type"] is None:
            group["weight_decay_type"] = "L2" if group["rebound"] == "constant" else "decoupled"

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._cpu_buffers = {}
        self._compiled_fn = None
        self._warmup_checked = False
        self._fused_plans = _fused.Cache()
        for group in self.param_groups:
            group.setdefault("fused", None)
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("compiled", False)
            group.setdefault("base_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one update (rule steps 1-14); ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states = [], [], []
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise ValueError(
                        "Apollo does not support sparse gradients (e.g. nn.Embedding(sparse=True))"
                    )
                if p.dtype == torch.float16:  # d⊙d overflows float16 once |d| > 256
                    raise ValueError(
                        "Apollo does not support float16 parameters; keep float32 parameters "
                        "(torch.amp autocast does) or use bfloat16"
                    )
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                    for k in STATE:
                        state[k] = torch.zeros_like(p)
                if p.numel() == 0:  # nothing to update; keep the counter honest
                    state["step"] += 1
                    continue
                params.append(p)
                grads.append(g)
                states.append(state)
            if params:
                self._update_group(group, params, grads, states)
        return loss

    def _update_group(self, group, params, grads, states) -> None:
        hp = Hyper.from_group(group)
        lists = (params, grads, *([st[k] for st in states] for k in (*STATE, "step")))
        if torch.compiler.is_compiling():  # a user's torch.compile is tracing this step
            # A tensor lr (as torch.optim documents for compiled steps) is read in the
            # graph, so an LR scheduler's in-place updates do not recompile it.
            tensor_scalar_apollo(*lists, _lr_tensor(group), hp)
            return
        if not self._warmup_checked and hp.warmup > 0 and _lr_moved(group):
            # one read of one counter (a device sync for the fused path's counters), once
            t = int(states[0]["step"])
            self._warmup_checked = warn_if_scheduled_in_warmup("Apollo", group, t)
        if any(is_dtensor(p) for p in params):  # FSDP2: reductions over whole tensors
            sharded_apollo(*lists, _lr_tensor(group), hp)
            return
        if _fused.considered(group, params):
            plan = _fused.plan(self._fused_plans, "Apollo", group, params, states, STATE, _plan)
            if plan is not None:
                plan.step(grads, group)
                return
        rest = range(len(params))
        if group.get("compiled", False):
            rest = self._compiled_update(group, hp, lists)
        blocked = group.get("foreach") is not False
        cpu = [i for i in rest if blocked and params[i].device.type == "cpu"]
        others = [i for i in rest if not (blocked and params[i].device.type == "cpu")]
        if cpu:
            self._blocked_update(group, hp, params, grads, states, cpu)
        if others:
            tensor_scalar_apollo(*([x[i] for i in others] for x in lists), _lr_tensor(group), hp)

    def _blocked_update(self, group, hp: Hyper, params, grads, states, idx: list[int]) -> None:
        """The CPU tensors ``idx``, bucketed by (dtype, step count) so that every scalar
        that depends on the step (α, lr_t) is one Python number per bucket."""
        counts = torch.stack([states[i]["step"] for i in idx]).tolist()
        buckets: dict[tuple, list[int]] = {}
        for i, t in zip(idx, counts, strict=True):
            buckets.setdefault((params[i].dtype, int(t)), []).append(i)
        for (dtype, t), sel in buckets.items():
            buffers = self._cpu_buffers.setdefault(dtype, Buffers(dtype))
            ps, gs, sts = ([x[i] for i in sel] for x in (params, grads, states))
            cpu_apollo(ps, gs, sts, t, warmup_lr(group, t), hp, buffers)
            torch._foreach_add_([st["step"] for st in sts], 1.0)

    def _compiled_update(self, group, hp: Hyper, lists) -> list[int]:
        """Update the large tensors with the compiled kernels; return the others' indices.

        Two graphs (scalars, then the elementwise update) serve every tensor, flattened
        to 1-D with a symbolic length. A call costs ~0.1 ms of guards and dispatch, more
        than the eager path spends on a small tensor, so tensors under COMPILE_MIN_NUMEL
        elements stay eager."""
        if self._compiled_fn is None:
            self._compiled_fn = (
                torch.compile(apollo_scalars, dynamic=True),
                torch.compile(apollo_apply, dynamic=True),
            )
        scalars, apply = self._compiled_fn
        lr = _lr_tensor(group)  # a tensor lr keeps an LR scheduler from forcing a recompile
        rest = []
        for i, (*tensors, step) in enumerate(zip(*lists, strict=True)):
            if tensors[0].numel() >= COMPILE_MIN_NUMEL and all(x.is_contiguous() for x in tensors):
                flat = [x.view(-1) for x in tensors]
                apply(*flat, *scalars(*flat, step, lr, hp), hp)
            else:
                rest.append(i)
        return rest


def _lr_tensor(group: dict[str, Any]) -> torch.Tensor:
    lr = group["lr"]
    return lr if isinstance(lr, torch.Tensor) else torch.tensor(float(lr), dtype=torch.float64)


def _lr_moved(group: dict[str, Any]) -> bool:
    """Whether a group's lr differs from its base_lr (and is not 0), looked at on the host
    only: a tensor lr on a GPU is not read (that would wait for the GPU every step)."""
    lr = group["lr"]
    if isinstance(lr, torch.Tensor) and lr.device.type != "cpu":
        return False
    return float(lr) not in (group["base_lr"], 0.0)


def _plan(params, ms, bs, us, steps):
    from ._kernels.triton_apollo import Plan  # imports Triton

    return Plan(params, ms, bs, us, steps)


# ------------------------------------------------------------ the tensor-scalar form


def _grad_delta(p, g, m, hp: Hyper) -> torch.Tensor:
    grad = -g if hp.maximize else g
    if hp.l2:
        grad = grad + hp.weight_decay * p  # step 2, on a copy
    return grad - m  # step 4


def _local_stats(p, g, m, b, u, hp: Hyper) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reductions of rule steps 5-9 over one tensor, or over one shard of it:
    ``([Σ Δ⊙d, Σ (d⊙d)⊙(d⊙d), Σ B⊙d⊙d], ‖Δ‖∞)`` with d the previous update. Sums and
    maxima of shards combine into the whole tensor's (see ``_sharding.Shards``)."""
    delta = _grad_delta(p, g, m, hp)
    w = u * u
    sums = torch.stack(((delta * u).sum(), (w * w).sum(), (b * w).sum()))
    r = None
    if hp.belief:  # an empty shard contributes 0 (‖Δ‖∞ >= 0)
        r = delta.abs().amax() if delta.numel() else delta.new_zeros(())
    return sums, r


def _scalars(sums: torch.Tensor, r, step: torch.Tensor, lr: torch.Tensor, hp: Hyper):
    """Spec steps 1, 3 and 7-9 from a tensor's reductions: ``(lr_t, α, δ/s², ‖Δ‖∞)``;
    increments the step counter."""
    t = step.to(torch.float64)  # the counter may be float32; the scalars need not be
    if hp.warmup > 0:  # step 1, t before the increment (as _warmup.warmup_lr, in tensors)
        warm = hp.init_lr + (hp.base_lr - hp.init_lr) * t / hp.warmup
        # a group whose lr is 0 does not move, in warmup too
        lr_t = torch.where(t < hp.warmup, torch.where(lr == 0, 0.0, warm), lr)
    else:
        lr_t = lr
    step.add_(1)
    alpha = (1 - hp.beta) / (1 - torch.pow(hp.beta, t + 1))  # step 3
    x, w4, bw = sums.unbind()
    s = w4.sqrt().sqrt() + hp.eps_prime  # step 7: ‖d‖₄ + ε'
    s2 = s * s
    # steps 8-9 with d/s folded into the sums: δ = (-α Σ Δ⊙d - Σ B⊙d⊙d) / s²; step 10
    # then adds δ·v = (δ / s²)·(d⊙d)
    c = (x * -alpha - bw) / s2 / s2
    return lr_t, alpha, c, r


def apollo_scalars(p, g, m, b, u, step: torch.Tensor, lr: torch.Tensor, hp: Hyper):
    """Spec steps 1-9 for one tensor with tensor scalars (no ``.item()``, so the step
    counter never becomes a constant of a compiled graph): ``(lr_t, α, δ/s², ‖Δ‖∞)``.
    Increments the counter; leaves the other state to :func:`apollo_apply`."""
    return _scalars(*_local_stats(p, g, m, b, u, hp), step, lr, hp)


def apollo_apply(p, g, m, b, u, lr_t, alpha, c, r, hp: Hyper, mean=torch.mean) -> None:
    """Spec steps 6 and 10-14 for one tensor, given :func:`apollo_scalars`' results.

    A separate function so that, compiled, the scalar arithmetic (a pow, two square
    roots) runs once instead of inside the elementwise loop, where Inductor puts it
    when the two halves are compiled as one graph. ``mean`` takes mean(D) for the
    stable decay (over the whole tensor when ``p`` is one shard of it)."""
    delta = _grad_delta(p, g, m, hp)
    m.add_(alpha * delta)  # step 6
    b.add_(c * (u * u))  # step 10
    if hp.belief:  # step 11
        big_d = torch.maximum(b.abs(), r) + hp.eps_prime / alpha
    else:
        big_d = b.abs().clamp_min(hp.sigma)
    d = m / big_d  # step 12
    if hp.decoupled:  # step 13 (the stored update includes this term)
        lam = hp.weight_decay / mean(big_d) if hp.stable else hp.weight_decay
        d = d + lam * p
    u.copy_(d)
    # step 14; a group with lr 0 must not move, even through inf/nan updates
    p.sub_(torch.where(lr_t != 0, lr_t * d, 0.0))


def tensor_scalar_apollo(params, grads, ms, bs, us, steps, lr: torch.Tensor, hp: Hyper) -> None:
    """The per-tensor loop with tensor scalars: traced by torch.compile, and the unfused
    step wherever the blocked CPU step does not run."""
    for p, g, m, b, u, step in zip(params, grads, ms, bs, us, steps, strict=True):
        apollo_apply(p, g, m, b, u, *apollo_scalars(p, g, m, b, u, step, lr, hp), hp)


def sharded_apollo(params, grads, ms, bs, us, steps, lr: torch.Tensor, hp: Hyper) -> None:
    """The tensor-scalar update for DTensor parameters (FSDP2): elementwise work on each
    rank's shard, every per-tensor reduction all-reduced over the whole tensor."""
    shards = Shards(params)
    local = [[to_local(x) for x in lst] for lst in (params, grads, ms, bs, us)]
    stats = [_local_stats(*ts, hp) for ts in zip(*local, strict=True)]
    sums = shards.sum_(torch.stack([s.to(torch.float64) for s, _ in stats]))
    rs = shards.max_(torch.stack([r.to(torch.float64) for _, r in stats])) if hp.belief else None
    for i, (ts, step) in enumerate(zip(zip(*local, strict=True), steps, strict=True)):
        lr_t, alpha, c, r = _scalars(sums[i], None if rs is None else rs[i], step, lr, hp)
        apollo_apply(*ts, lr_t, alpha, c, r, hp, mean=partial(shards.mean, i))


register(
    "apollo",
    Apollo,
    summary="Apollo: adaptive parameter-wise diagonal quasi-Newton (Ma, 2020); "
    "not the low-rank AdamW that another library calls APOLLO",
)
register(
    "apollow",
    Apollo,
    defaults={"weight_decay_type": "decoupled"},
    summary="ApolloW: Apollo with decoupled weight decay",
)
