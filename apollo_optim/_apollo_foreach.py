"""Apollo's multi-tensor update (``torch._foreach_*``) and its traceable form.

:func:`multi_tensor_apollo` performs, op for op, what ``apollo._single_tensor_apollo``
does per tensor, so the two are bit-identical: on CPU every ``_foreach_*`` op runs the
same per-tensor kernel, and the per-tensor scalars (stacked for the vector form) go
through the same correctly rounded operations. Costs that matter on CPU (measured: see
``docs/performance.md``): ‖d‖₄ comes from the 2-norm of d⊙d, which
step 9 needs anyway, instead of ``norm(p=4)``; the sums of products are BLAS dots (no
temporary); Δ and D live in one reused scratch tensor and d⊙d in the update's own
buffer, so a step allocates nothing the size of the parameters.

:func:`traceable_apollo` is the same rule written with tensor scalars and no
``.item()``, for ``torch.compile``: the step counter stays a tensor, so a compiled step
is not recompiled as the counter grows.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import torch

from ._sharding import Shards, to_local

# Devices where a loop of out= calls beats a foreach copy + in-place op (see _into).
OUT_LOOP_DEVICES = ("cpu",)


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


def lr_at_step(t: int, lr: float, hp: Hyper) -> float:
    """Spec step 1: warmup from η₀ to the group's base lr over W updates, then ``lr``.

    A group whose current lr is 0 does not move, in warmup too ("a group with lr 0 must
    not move"): this is what an LR scheduler at 0 and torch.distributed.checkpoint's
    state initialisation (a step with zero gradients and lr 0) expect."""
    if t < hp.warmup:
        if float(lr) == 0:
            return 0.0
        return hp.init_lr + (hp.base_lr - hp.init_lr) * t / hp.warmup
    return float(lr)


def flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view for ``torch.dot`` (a copy only for non-contiguous layouts)."""
    return t.reshape(-1)


def _dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    # There is no _foreach_dot; a loop of BLAS dots reads each tensor once and allocates
    # nothing (reshape is a view except for non-contiguous layouts such as channels_last).
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b, strict=True)])


def _into(out: list[torch.Tensor], op, foreach_op_, *args: list[torch.Tensor]) -> None:
    """``out[i] = op(args[0][i], ...)``. On CPU ``_foreach_*`` ops are per-tensor loops, so a
    loop of ``out=`` calls costs no more and saves the copy's pass over memory; elsewhere
    the foreach kernels win (copy, then the in-place op). Both give identical values."""
    if out[0].device.type in OUT_LOOP_DEVICES:
        for o, *a in zip(out, *args, strict=True):
            op(*a, out=o)
    else:
        torch._foreach_copy_(out, args[0])
        foreach_op_(out, *args[1:])


def multi_tensor_apollo(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    ms: list[torch.Tensor],
    bs: list[torch.Tensor],
    us: list[torch.Tensor],
    scratch: list[torch.Tensor],
    t: int,
    lr_t: float,
    hp: Hyper,
) -> None:
    """Spec steps 2-14 for tensors sharing device, dtype and step count ``t`` (before it)."""
    alpha = (1 - hp.beta) / (1 - hp.beta ** (t + 1))  # step 3
    delta = scratch  # p.grad itself is never modified
    if hp.maximize or hp.l2:
        torch._foreach_copy_(delta, grads)
        if hp.maximize:
            torch._foreach_neg_(delta)
        if hp.l2:
            torch._foreach_add_(delta, params, alpha=hp.weight_decay)  # step 2
        torch._foreach_sub_(delta, ms)  # step 4
    else:
        _into(delta, torch.sub, torch._foreach_sub_, grads, ms)  # step 4
    x = _dots(delta, us)  # Σ Δ⊙d with the previous update d
    torch._foreach_add_(ms, delta, alpha=alpha)  # step 6
    if hp.belief:
        torch._foreach_abs_(delta)
        r = torch._foreach_max(delta)  # step 5: ‖Δ‖∞ per tensor
    torch._foreach_mul_(us, us)  # d⊙d in the update's buffer (rewritten in step 12)
    w = us
    q = torch.stack(torch._foreach_norm(w))  # ‖d‖₄² per tensor
    y = _dots(bs, w)
    s = q.sqrt() + hp.eps_prime  # step 7
    s2 = s * s
    c = (x * -alpha - y) / s2 / s2  # δ / s², steps 8-9 (see the per-tensor loop)
    torch._foreach_addcmul_(bs, w, c.unbind())  # step 10
    dd = delta  # step 11: D in the scratch
    _into(dd, torch.abs, torch._foreach_abs_, bs)
    if hp.belief:
        torch._foreach_clamp_min_(dd, r)
        torch._foreach_add_(dd, hp.eps_prime / alpha)
    else:
        torch._foreach_clamp_min_(dd, hp.sigma)
    _into(us, torch.div, torch._foreach_div_, ms, dd)  # step 12
    if hp.decoupled:  # step 13
        if hp.stable:
            mean_d = torch.stack(torch._foreach_norm(dd, 1)) / torch.tensor(
                [d.numel() for d in dd], dtype=dd[0].dtype, device=dd[0].device
            )
            torch._foreach_addcmul_(us, params, (hp.weight_decay / mean_d).unbind())
        else:
            torch._foreach_add_(us, params, alpha=hp.weight_decay)
    if lr_t != 0:
        torch._foreach_add_(params, us, alpha=-lr_t)  # step 14


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
    if hp.warmup > 0:  # step 1, t before the increment
        warm = hp.init_lr + (hp.base_lr - hp.init_lr) * t / hp.warmup
        # a group whose lr is 0 does not move, in warmup too (see lr_at_step)
        lr_t = torch.where(t < hp.warmup, torch.where(lr == 0, 0.0, warm), lr)
    else:
        lr_t = lr
    step.add_(1)
    alpha = (1 - hp.beta) / (1 - torch.pow(hp.beta, t + 1))  # step 3
    x, w4, bw = sums.unbind()
    s = w4.sqrt().sqrt() + hp.eps_prime  # step 7: ‖d‖₄ + ε'
    s2 = s * s
    c = (x * -alpha - bw) / s2 / s2  # steps 8-9
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
    if hp.decoupled:  # step 13
        lam = hp.weight_decay / mean(big_d) if hp.stable else hp.weight_decay
        d = d + lam * p
    u.copy_(d)
    p.sub_(lr_t * d)  # step 14


def traceable_apollo(params, grads, ms, bs, us, steps, lr: torch.Tensor, hp: Hyper) -> None:
    """The tensor-scalar update over lists, for a user's ``torch.compile`` tracing ``step()``."""
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
