"""Apollo's eager step on CPU, in cache-sized blocks (the default of ``Apollo`` on CPU).

The rule needs 13 tensor-sized transfers per element (rule steps 2-14: the per-tensor
sums of steps 5-9 read g, m, B, d before any element can be updated; the update reads
g, m, B, d, θ and writes m, B, d, θ). Op by op, a ``torch._foreach_*`` step moves about
twice that, and on a CPU each op costs a few microseconds per tensor. So here:

* **Small tensors** (up to ``SMALL`` elements) are batched with tensors of the same shape:
  the state of a batch of k tensors of n elements lives in k x n matrices (each state
  tensor is a view of one row), the gradients (and θ for weight decay) are gathered with
  one ``torch.stack``, and the update is ~15 ops whatever k (the per-tensor sums are
  batched dot products) and one ``torch._foreach_add_`` into the parameters. A batch fits
  in cache, so the rule's two passes cost one pass over memory.
* **Large tensors** are swept in blocks of ``SWEEP`` elements, twice: the first sweep
  accumulates the sums (reading g, m, B, d), the second updates (reading g, m, B, d, θ,
  writing m, B, d, θ); each block's temporaries stay in cache. The stable weight decay
  needs mean(D) before the last step, so it adds a third sweep over d and θ.

Same rule as the per-tensor loop and the reference, summed in another order: equal to them
up to float rounding (1e-12 relative in float64, tested).
"""

from __future__ import annotations

import torch

from . import cpu_buffers
from .cpu_buffers import Buffers

STATE = ("exp_avg_grad", "approx_hessian", "update")


def cpu_apollo(params, grads, states, t: int, lr_t: float, hp, buffers) -> None:
    """Spec steps 2-14 for CPU tensors sharing dtype and step count ``t`` (before it);
    ``states`` are their state dicts, ``hp`` the group's ``apollo.Hyper``, ``buffers`` the
    optimizer's :class:`Buffers`."""
    alpha = (1 - hp.beta) / (1 - hp.beta ** (t + 1))  # step 3
    shapes: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        if p.numel() <= cpu_buffers.SMALL:
            shapes.setdefault(p.shape, []).append(i)
            continue
        m, b, u = (states[i][k] for k in STATE)
        if all(x.is_contiguous() for x in (p, grads[i], m, b, u)):
            _large(p, grads[i], m, b, u, alpha, lr_t, hp, buffers)
        else:  # a strided large tensor (channels_last): a batch of its own
            shapes.setdefault((i, p.shape), []).append(i)
    for idx in shapes.values():
        rows = max(1, cpu_buffers.BLOCK // params[idx[0]].numel())
        for j in range(0, len(idx), rows):
            sel = idx[j : j + rows]
            ps, gs, sts = ([x[i] for i in sel] for x in (params, grads, states))
            _batch(ps, gs, buffers.batch(ps, sts, STATE), alpha, lr_t, hp, buffers)


def _batch(ps, gs, batch, alpha: float, lr_t: float, hp, buffers) -> None:
    """k same-shape tensors as k x n matrices: the state in place, g (and θ) gathered."""
    (m, _), (b, _), (u, u_rows) = batch
    delta = buffers.stacked(0, gs)
    theta = buffers.stacked(1, ps) if hp.l2 or hp.decoupled else None
    if hp.maximize:
        delta.neg_()
    if hp.l2:
        delta.add_(theta, alpha=hp.weight_decay)  # step 2
    delta.sub_(m)  # step 4
    x = torch.linalg.vecdot(delta, u)  # Σ Δ⊙d with the previous update d
    m.add_(delta, alpha=alpha)  # step 6
    if hp.belief:
        r = delta.abs_().amax(dim=1, keepdim=True)  # step 5
    w = torch.mul(u, u, out=buffers(2, u.numel()).view_as(u))  # d⊙d
    c = _c(x, torch.linalg.vecdot(w, w), torch.linalg.vecdot(b, w), alpha, hp)
    b.addcmul_(w, c.unsqueeze(1))  # step 10
    big_d = torch.abs(b, out=delta)  # step 11
    if hp.belief:
        big_d.clamp_min_(r).add_(hp.eps_prime / alpha)
    else:
        big_d.clamp_min_(hp.sigma)
    d = torch.div(m, big_d, out=u)  # step 12
    if hp.decoupled:  # step 13
        if hp.stable:
            d.addcmul_(theta, hp.weight_decay / big_d.mean(dim=1, keepdim=True))
        else:
            d.add_(theta, alpha=hp.weight_decay)
    if lr_t != 0:  # step 14 (a group with lr 0 must not move, even through inf/nan)
        torch._foreach_add_(ps, u_rows, alpha=-lr_t)


def _c(x, w4, bw, alpha: float, hp):
    """δ/s² of steps 7-9 (see ``apollo._scalars``)."""
    s = w4.sqrt().sqrt() + hp.eps_prime  # ‖d‖₄ + ε'
    s2 = s * s
    return (x * -alpha - bw) / s2 / s2


def _large(p, g, m, b, u, alpha: float, lr_t: float, hp, scratch: Buffers) -> None:
    """One contiguous tensor, swept block by block (see the module docstring)."""
    p, g, m, b, u = (x.view(-1) for x in (p, g, m, b, u))
    n = p.numel()
    step = cpu_buffers.SWEEP
    blocks = [(a, min(a + step, n)) for a in range(0, n, step)]
    sums = torch.zeros(3, dtype=p.dtype)  # Σ Δ⊙d, Σ (d⊙d)², Σ B⊙d⊙d
    r = torch.zeros((), dtype=p.dtype)
    for a, z in blocks:  # first sweep: the sums of steps 5-9
        delta = delta_into(p[a:z], g[a:z], m[a:z], hp, scratch(0, z - a))
        w = torch.mul(u[a:z], u[a:z], out=scratch(1, z - a))
        sums += torch.stack((torch.dot(delta, u[a:z]), torch.dot(w, w), torch.dot(b[a:z], w)))
        if hp.belief:
            r = torch.maximum(r, delta.abs_().max())
    c = _c(sums[0], sums[1], sums[2], alpha, hp)
    total_d = torch.zeros((), dtype=p.dtype)
    for a, z in blocks:  # second sweep: the update
        delta = delta_into(p[a:z], g[a:z], m[a:z], hp, scratch(0, z - a))
        m[a:z].add_(delta, alpha=alpha)  # step 6
        w = torch.mul(u[a:z], u[a:z], out=scratch(1, z - a))
        b[a:z].addcmul_(w, c)  # step 10
        big_d = torch.abs(b[a:z], out=delta)  # step 11
        if hp.belief:
            big_d.clamp_min_(r).add_(hp.eps_prime / alpha)
        else:
            big_d.clamp_min_(hp.sigma)
        d = torch.div(m[a:z], big_d, out=u[a:z])  # step 12
        if hp.stable and hp.decoupled:
            total_d += big_d.sum()
            continue  # step 13 needs mean(D) over the whole tensor: third sweep
        if hp.decoupled:
            d.add_(p[a:z], alpha=hp.weight_decay)  # step 13
        if lr_t != 0:
            p[a:z].add_(d, alpha=-lr_t)  # step 14
    if hp.stable and hp.decoupled:
        lam = hp.weight_decay / (total_d / n)
        for a, z in blocks:
            u[a:z].addcmul_(p[a:z], lam)
            if lr_t != 0:
                p[a:z].add_(u[a:z], alpha=-lr_t)


def delta_into(p, g, m, hp, out: torch.Tensor) -> torch.Tensor:
    """Δ = g - m (steps 2 and 4) into ``out``; p.grad itself is never modified."""
    if hp.maximize or hp.l2:
        if hp.maximize:
            torch.neg(g, out=out)
        else:
            out.copy_(g)
        if hp.l2:
            out.add_(p, alpha=hp.weight_decay)
        return out.sub_(m)
    return torch.sub(g, m, out=out)
