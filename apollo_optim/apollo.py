"""Apollo: an adaptive parameter-wise diagonal quasi-Newton method (Ma, 2020).

The update follows ``docs/update_rules.md`` ("Apollo (and ApolloW)") step by step;
the step numbers in the comments below are that page's. Every reduction is over one
parameter tensor ("parameter-wise"), never across tensors.

Implementations of the same rule (here, ``_apollo_cpu.py``, ``_apollo_foreach.py`` and
``_fused``):

* ``fused`` (the default for CUDA tensors): Triton kernels, a constant number of launches
  per group, counters on the device (``apollo_optim._fused``);
* ``foreach=False``: a plain per-tensor loop (:func:`_single_tensor_apollo`);
* ``foreach=True`` (default elsewhere): on CPU, same-shape batches of small tensors and
  blocked sweeps over large ones (``_apollo_cpu``); on other devices ``torch._foreach_*``
  over runs of tensors sharing device, dtype and step count, bit-identical to the loop;
* tensor scalars, no ``.item()`` (``apollo_scalars`` then ``apollo_apply``): used when
  a user's ``torch.compile`` traces ``step()``, and with ``compiled=True``, which
  compiles both once (dynamic shapes) for every tensor of at least 64k elements; equal
  to the eager paths up to float rounding.

The eager paths keep one scratch buffer per device and dtype on the optimizer (not
in the state dict), the size of one run of tensors (at most 256k elements, or the
largest parameter), so that a step allocates no large temporaries.
A user-compiled training step specialises on the group's lr (a Python number): an
LR scheduler then causes recompiles; ``compiled=True`` passes lr as a tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from . import _fused
from ._apollo_cpu import Buffers, cpu_apollo, delta_into
from ._apollo_foreach import (
    Hyper,
    apollo_apply,
    apollo_scalars,
    flat,
    lr_at_step,
    multi_tensor_apollo,
    sharded_apollo,
    traceable_apollo,
)
from ._sharding import check_params, is_dtensor
from ._warmup import check_lr, warn_if_scheduled_in_warmup
from .registry import register

REBOUNDS = ("constant", "belief")
COMPILE_MIN_NUMEL = 1 << 16  # smaller tensors take the eager multi-tensor path
FOREACH_CHUNK = 1 << 18  # elements per multi-tensor run (see Apollo._chunks)
BLOCKED_DEVICES = ("cpu",)  # devices whose foreach path is _apollo_cpu's blocked sweeps
WEIGHT_DECAY_TYPES = ("L2", "decoupled", "stable")
STATE = ("exp_avg_grad", "approx_hessian", "update")
APOLLO_DTYPES = (torch.float32, torch.bfloat16)  # float16: d⊙d overflows once |d| > 256


def _check(ok: bool, name: str, value: Any, why: str) -> None:
    if not ok:
        raise ValueError(f"Apollo: invalid {name}={value!r} ({why})")


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
        foreach: use the multi-tensor path (default ``True``).
        maximize: maximize the objective instead of minimizing it.
        compiled: update tensors of >= 64k elements with a ``torch.compile``'d kernel
            (opt-in; the first step compiles, ~20 s on a 2-core CPU); smaller tensors
            stay on the eager multi-tensor path.
        fused: the fused Triton kernels (a constant number of launches per group, no
            host-device synchronisation, step counters on the device). ``None`` (default):
            used for CUDA float32/bfloat16 parameters when Triton is importable and neither
            ``foreach`` nor ``compiled`` was given; ``True``: required (an error says why
            it cannot run); ``False``: never.
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
        self._validate(defaults)  # before any group exists, so the message names the argument
        self._scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._views: dict[tuple, list[torch.Tensor]] = {}
        self._cpu_buffers: dict[torch.dtype, Buffers] = {}
        self._compiled_fn: tuple[Callable, Callable] | None = None
        self._warmup_checked = False
        self._fused_plans = _fused.Cache()
        super().__init__(params, defaults)
        if fused:
            _fused.check_requested(
                "Apollo", [p for g in self.param_groups for p in g["params"]], APOLLO_DTYPES
            )

    @staticmethod
    def _validate(g: dict[str, Any]) -> None:
        lr = check_lr("Apollo", g["lr"])
        _check(0.0 <= g["beta"] < 1.0, "beta", g["beta"], "must be in [0, 1)")
        _check(g["eps"] > 0, "eps", g["eps"], "must be > 0")
        _check(g["rebound"] in REBOUNDS, "rebound", g["rebound"], f"expected one of {REBOUNDS}")
        _check(g["sigma"] > 0, "sigma", g["sigma"], "must be > 0")
        w = g["warmup"]
        _check(w >= 0 and float(w).is_integer(), "warmup", w, "must be an integer >= 0")
        ilr = g["init_lr"]
        _check(ilr is None or 0 <= ilr <= lr, "init_lr", ilr, f"must be in [0, lr={lr}]")
        _check(g["weight_decay"] >= 0, "weight_decay", g["weight_decay"], "must be >= 0")
        wdt = g["weight_decay_type"]
        _check(
            wdt is None or wdt in WEIGHT_DECAY_TYPES,
            "weight_decay_type",
            wdt,
            f"expected one of {WEIGHT_DECAY_TYPES}",
        )
        fused = g.get("fused")
        _check(fused in (None, True, False), "fused", fused, "must be None, True or False")
        if fused:
            _check(not g.get("compiled"), "fused", fused, "fused and compiled are two paths")
            _check(not g.get("foreach"), "fused", fused, "fused and foreach are two paths")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its ``base_lr`` (the warmup's target, rule step 1) is its lr now."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate(group)
        check_params("Apollo", group["params"], elementwise=False)
        # Python numbers even when lr is a tensor: a compiled step treats them as constants
        group.setdefault("base_lr", float(group["lr"]))
        if group["init_lr"] is None:
            group["init_lr"] = float(group["lr"]) / 1000
        if group["weight_decay_type"] is None:
            group["weight_decay_type"] = "L2" if group["rebound"] == "constant" else "decoupled"

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._scratch = {}
        self._views = {}
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

    def _scratch_for(self, device: torch.device, dtype: torch.dtype, n: int) -> torch.Tensor:
        buf = self._scratch.get((device, dtype))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, device=device, dtype=dtype)
            self._scratch[(device, dtype)] = buf
            self._views.clear()  # cached views would keep the old buffer alive
        return buf[:n]

    def _chunks(self, device, dtype, params: list[torch.Tensor]) -> list[tuple]:
        """Runs ``(lo, hi, scratch views)`` of consecutive tensors of at most FOREACH_CHUNK
        elements in all (a larger tensor runs alone). Each run's buffers stay in cache
        across the dozen passes of the update; the scratch views are cached, as
        rebuilding hundreds of views every step costs as much as a foreach op."""
        key = (device, dtype, tuple(p.shape for p in params))
        chunks = self._views.get(key)
        if chunks is None:
            bounds, lo, n = [], 0, 0
            for i, p in enumerate(params):
                if i > lo and n + p.numel() > FOREACH_CHUNK:
                    bounds.append((lo, i, n))
                    lo, n = i, 0
                n += p.numel()
            bounds.append((lo, len(params), n))
            buf = self._scratch_for(device, dtype, max(b[2] for b in bounds))
            chunks = []
            for lo, hi, n in bounds:
                run = params[lo:hi]
                views = buf[:n].split([p.numel() for p in run])
                chunks.append((lo, hi, [v.view_as(p) for v, p in zip(views, run, strict=True)]))
            if len(self._views) >= 8:  # groups x step-count buckets; bounded
                self._views.clear()
            self._views[key] = chunks
        return chunks

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one update (rule steps 1-14); ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, ms, bs, us, steps, states = [], [], [], [], [], [], []
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
                    state["exp_avg_grad"] = torch.zeros_like(p)
                    state["approx_hessian"] = torch.zeros_like(p)
                    state["update"] = torch.zeros_like(p)
                if p.numel() == 0:  # nothing to update; keep the counter honest
                    state["step"] += 1
                    continue
                params.append(p)
                grads.append(g)
                ms.append(state["exp_avg_grad"])
                bs.append(state["approx_hessian"])
                us.append(state["update"])
                steps.append(state["step"])
                states.append(state)
            if params:
                self._update_group(group, params, grads, ms, bs, us, steps, states)
        return loss

    def _update_group(self, group, params, grads, ms, bs, us, steps, states=None) -> None:
        hp = Hyper.from_group(group)
        if torch.compiler.is_compiling():  # a user's torch.compile is tracing this step
            # A tensor lr (as torch.optim documents for compiled steps) is read in the
            # graph, so an LR scheduler's in-place updates do not recompile it.
            traceable_apollo(params, grads, ms, bs, us, steps, _lr_tensor(group), hp)
            return
        if not self._warmup_checked and hp.warmup > 0 and _lr_moved(group):
            # one read of one counter (a device sync for the fused path's counters), once
            self._warmup_checked = warn_if_scheduled_in_warmup("Apollo", group, int(steps[0]))
        if any(is_dtensor(p) for p in params):  # FSDP2: reductions over whole tensors
            sharded_apollo(params, grads, ms, bs, us, steps, _lr_tensor(group), hp)
            return
        if _fused.considered(group, params):
            states = [self.state[p] for p in params]
            plan = _fused.plan(self._fused_plans, "Apollo", group, params, states, STATE, _plan)
            if plan is not None:
                plan.step(grads, group)
                return
        if group.get("compiled", False):
            params, grads, ms, bs, us, steps = self._compiled_update(
                group, hp, params, grads, ms, bs, us, steps
            )
            states = None  # a subset now: looked up again below
            if not params:
                return
        # Eager paths: bucket by (device, dtype, step count) so every scalar that depends on
        # the step (alpha, lr_t) is one Python number per bucket.
        buckets: dict[tuple, list[int]] = {}
        one_device = all(s.device == steps[0].device for s in steps)
        counts = torch.stack(steps).tolist() if one_device else [s.item() for s in steps]
        for i, (p, t) in enumerate(zip(params, counts, strict=True)):
            buckets.setdefault((p.device, p.dtype, int(t)), []).append(i)
        foreach = group.get("foreach") is None or group["foreach"]
        for (device, dtype, t), idx in buckets.items():
            lr_t = lr_at_step(t, group["lr"], hp)
            sel = [params, grads, ms, bs, us]
            if len(buckets) > 1:
                sel = [[lst[i] for i in idx] for lst in sel]
            if foreach and device.type in BLOCKED_DEVICES:
                buffers = self._cpu_buffers.setdefault(dtype, Buffers(dtype))
                sts = [self.state[p] for p in params] if states is None else states
                if len(buckets) > 1:
                    sts = [sts[i] for i in idx]
                cpu_apollo(sel[0], sel[1], sts, t, lr_t, hp, buffers)
            elif foreach:
                for lo, hi, scratch in self._chunks(device, dtype, sel[0]):
                    multi_tensor_apollo(*(x[lo:hi] for x in sel), scratch, t, lr_t, hp)
            else:
                buf = self._scratch_for(device, dtype, max(p.numel() for p in sel[0]))
                _single_tensor_apollo(*sel, buf, t, lr_t, hp)
            torch._foreach_add_(steps if len(buckets) == 1 else [steps[i] for i in idx], 1.0)

    def _compiled_update(self, group, hp, *lists):
        """Update the large tensors with the compiled kernels; return the rest.

        Two graphs (scalars, then the elementwise update) serve every tensor, flattened
        to 1-D with a symbolic length. A call costs ~0.1 ms of guards and dispatch, more
        than the eager multi-tensor path spends on a small tensor, so tensors under
        COMPILE_MIN_NUMEL elements stay eager."""
        if self._compiled_fn is None:
            self._compiled_fn = (
                torch.compile(apollo_scalars, dynamic=True),
                torch.compile(apollo_apply, dynamic=True),
            )
        scalars, apply = self._compiled_fn
        lr = _lr_tensor(group)  # a tensor lr keeps an LR scheduler from forcing a recompile
        rest = [[] for _ in lists]
        for p, g, m, b, u, s in zip(*lists, strict=True):
            tensors = (p, g, m, b, u)
            if p.numel() >= COMPILE_MIN_NUMEL and all(x.is_contiguous() for x in tensors):
                flat_tensors = [x.view(-1) for x in tensors]
                apply(*flat_tensors, *scalars(*flat_tensors, s, lr, hp), hp)
            else:
                for lst, x in zip(rest, (*tensors, s), strict=True):
                    lst.append(x)
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
    from ._fused.apollo import Plan  # imports Triton

    return Plan(params, ms, bs, us, steps)


def _single_tensor_apollo(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    ms: list[torch.Tensor],
    bs: list[torch.Tensor],
    us: list[torch.Tensor],
    buf: torch.Tensor,
    t: int,
    lr_t: float,
    hp: Hyper,
) -> None:
    """The per-tensor loop; op for op the same as :func:`multi_tensor_apollo`."""
    alpha = (1 - hp.beta) / (1 - hp.beta ** (t + 1))  # step 3 (t counted before this step)
    for p, g, m, b, u in zip(params, grads, ms, bs, us, strict=True):
        delta = delta_into(p, g, m, hp, buf[: p.numel()].view_as(p))  # steps 2 and 4
        x = torch.dot(flat(delta), flat(u))  # Σ Δ⊙d, d the previous update
        m.add_(delta, alpha=alpha)  # step 6
        if hp.belief:
            r = delta.abs_().max()  # step 5: ‖Δ‖∞
        w = u.mul_(u)  # d⊙d, in the update's own buffer (d is rewritten in step 12)
        q = torch.linalg.vector_norm(w)  # ‖d‖₄² = sqrt(Σ (d⊙d)⊙(d⊙d)), never norm(p=4)
        y = torch.dot(flat(b), flat(w))
        s = q.sqrt() + hp.eps_prime  # step 7
        s2 = s * s
        # steps 8-9 with d/s folded into the sums: δ = (-α Σ Δ⊙d - Σ B⊙d⊙d) / s²;
        # step 10 then adds δ·v = (δ / s²)·(d⊙d).
        c = (x * -alpha - y) / s2 / s2
        b.addcmul_(w, c)
        dd = torch.abs(b, out=delta)  # step 11, D in the scratch buffer
        if hp.belief:
            dd.clamp_min_(r).add_(hp.eps_prime / alpha)
        else:
            dd.clamp_min_(hp.sigma)
        torch.div(m, dd, out=u)  # step 12: d = m / D
        if hp.decoupled:  # step 13 (the stored update includes this term)
            if hp.stable:
                lam = hp.weight_decay / (torch.linalg.vector_norm(dd, 1) / dd.numel())
                u.addcmul_(p, lam)
            else:
                u.add_(p, alpha=hp.weight_decay)
        if lr_t != 0:  # a group with lr 0 must not move, even through inf/nan updates
            p.add_(u, alpha=-lr_t)  # step 14


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
