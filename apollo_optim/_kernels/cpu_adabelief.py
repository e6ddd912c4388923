"""AdaBelief's small tensors on CPU, in batches of same-shape tensors.

A ``torch._foreach_*`` step costs a few microseconds per tensor and op, a dozen ops in all;
on a network of many small tensors (ResNet-110: 335 tensors, most under 40k elements) that
is most of the step. Here the state of k same-shape tensors lives in the rows of one k x n
matrix per state (``cpu_buffers.Buffers``), the gradients (and θ for L2 decay) are
gathered with one ``torch.stack``, and the update is the per-tensor loop's ops applied to
the matrices, then one ``torch._foreach_addcdiv_`` into the parameters: the same numbers as
the loop, bit for bit (every op is elementwise, or a per-row norm). Larger tensors stay on
the multi-tensor path, which works through them in cache-sized chunks.
"""

from __future__ import annotations

import torch

from . import cpu_buffers

STATE = ("exp_avg", "exp_avg_var")


def batched_adabelief(
    params, grads, states, *, lr, beta1, beta2, eps, weight_decay, weight_decay_type, buffers
) -> list[int]:
    """Update the small tensors (all on CPU, one dtype); return the indices of the rest.
    Increments the counters of the tensors it updates."""
    counts = torch.stack([st["step"] for st in states]).tolist()
    batches: dict[tuple, list[int]] = {}
    rest = []
    for i, p in enumerate(params):
        if p.numel() <= cpu_buffers.SMALL:
            batches.setdefault((p.shape, counts[i]), []).append(i)
        else:
            rest.append(i)
    for (shape, t), idx in batches.items():
        rows = max(1, cpu_buffers.BLOCK // shape.numel())
        for j in range(0, len(idx), rows):
            sel = idx[j : j + rows]
            ps, gs, sts = ([x[i] for i in sel] for x in (params, grads, states))
            torch._foreach_add_([st["step"] for st in sts], 1.0)  # step 1
            _batch(
                ps,
                gs,
                buffers.batch(ps, sts, STATE),
                t + 1,
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                weight_decay_type,
                buffers,
            )
    return rest


def _batch(ps, gs, batch, t, lr, beta1, beta2, eps, weight_decay, weight_decay_type, buffers):
    (m, m_rows), (s, _) = batch
    c1 = 1.0 - beta1**t
    sqrt_c2 = (1.0 - beta2**t) ** 0.5
    r = buffers.stacked(0, gs)
    if weight_decay != 0 and weight_decay_type == "L2":
        r.add_(buffers.stacked(1, ps), alpha=weight_decay)  # step 2, on a copy
    m.lerp_(r, 1.0 - beta1)  # step 3
    r.sub_(m)  # step 4
    s.mul_(beta2).addcmul_(r, r, value=1.0 - beta2).add_(eps)  # step 5
    denom = r.copy_(s).sqrt_().div_(sqrt_c2).add_(eps)  # step 6
    if weight_decay != 0 and weight_decay_type != "L2":  # step 7
        if weight_decay_type == "stable":
            factor = torch.linalg.vector_norm(denom, 1, dim=1).reciprocal_()
            factor.mul_(-lr * weight_decay * denom.shape[1]).add_(1.0)
            torch._foreach_mul_(ps, list(factor.unbind()))
        else:
            torch._foreach_mul_(ps, 1.0 - lr * weight_decay)
    rows = denom.view(-1, *ps[0].shape).unbind(0)
    torch._foreach_addcdiv_(ps, m_rows, rows, value=-lr / c1)  # step 8
