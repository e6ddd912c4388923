"""AdaHessian's fused update (rule steps 3-7): one launch per group and step count.

The Hutchinson product (step 1) stays autograd; this replaces the per-tensor update that
follows it. AdaHessian decides on the host which steps draw a new probe (``update_each``),
so its step counters stay on the host and every scalar of the update is a launch
argument; tensors whose counters differ (a parameter that skipped steps) take one launch
per count. The kernel reads θ, g, D̂, m, v and writes θ, m, v. Arithmetic is float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import TL_DTYPES, device_fn, launch, load, locate, store, tail
from .triton_tables import Tables


@device_fn
def _apply_block(
    p_tab,
    g_tab,
    h_tab,
    m_tab,
    v_tab,
    i,
    offs,
    mask,
    decay,
    beta1,
    beta2,
    bias2,
    step_size,
    eps,
    half_power,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    SQRT: tl.constexpr,
):
    p = load(p_tab, i, offs, mask, DTYPE, ALIGNED) * decay  # step 4
    g = load(g_tab, i, offs, mask, DTYPE, ALIGNED)
    m = load(m_tab, i, offs, mask, DTYPE, ALIGNED) * beta1 + (1.0 - beta1) * g  # step 5
    h = load(h_tab, i, offs, mask, DTYPE, ALIGNED)
    v = load(v_tab, i, offs, mask, DTYPE, ALIGNED) * beta2 + (1.0 - beta2) * (h * h)
    denom = v / bias2
    if SQRT:  # step 6, k = 1
        denom = tl.sqrt(denom)
    else:  # (v / c2)^(k/2) = 2^((k/2)·log2(v / c2)); 0 stays 0
        positive = denom > 0.0
        power = tl.exp2(half_power * tl.log2(tl.where(positive, denom, 1.0)))
        denom = tl.where(positive, power, 0.0)
    store(m_tab, i, offs, mask, m, DTYPE, ALIGNED)
    store(v_tab, i, offs, mask, v, DTYPE, ALIGNED)
    store(p_tab, i, offs, mask, p + step_size * (m / (denom + eps)), DTYPE, ALIGNED)  # step 7


@triton.jit
def _apply(
    p_tab,
    g_tab,
    h_tab,
    m_tab,
    v_tab,
    block_tensor,
    block_start,
    numels,
    decay,
    beta1,
    beta2,
    bias2,
    step_size,
    eps,
    half_power,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    SQRT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _, i, offs, full = locate(block_tensor, block_start, numels, BLOCK, ALIGNED)
    tabs = (p_tab, g_tab, h_tab, m_tab, v_tab)
    ins = (decay, beta1, beta2, bias2, step_size, eps, half_power)
    if full:
        _apply_block(*tabs, i, offs, None, *ins, DTYPE, ALIGNED, SQRT)
    else:
        _apply_block(*tabs, i, offs, tail(offs, numels, i), *ins, DTYPE, ALIGNED, SQRT)


class Plan:
    """The tables of one bucket of a group's parameters (see :class:`.tables.Tables`)."""

    def __init__(self, params, ms, vs) -> None:
        self.dtype = params[0].dtype
        self.tables = Tables([params, ms, vs], params[0].device)

    def step(self, grads, hessians, t: int, lr: float, group: dict) -> None:
        """One update of every tensor of the bucket; ``t`` is their count before it."""
        tb = self.tables
        p_tab, m_tab, v_tab = tb.ptrs
        beta1, beta2 = (float(b) for b in group["betas"])
        k = float(group["hessian_power"])
        t1 = t + 1
        grads, hessians = tb.laid_out(grads), tb.laid_out(hessians)  # copies outlive launches
        g_tab = tb.dynamic("grads", grads)
        h_tab = tb.dynamic("hessians", hessians)
        launch(
            _apply,
            tb.nblocks,
            p_tab,
            g_tab,
            h_tab,
            m_tab,
            v_tab,
            *tb.blocks,
            1.0 - lr * float(group["weight_decay"]),
            beta1,
            beta2,
            1.0 - beta2**t1,
            -lr / (1.0 - beta1**t1),
            float(group["eps"]),
            k / 2,
            DTYPE=TL_DTYPES[self.dtype],
            ALIGNED=tb.aligned,
            SQRT=k == 1,
            BLOCK=tb.block,
        )


def plan(cache, params: list[torch.Tensor], states: list[dict]) -> Plan:
    """The cached plan of one bucket (keyed like ``fused.plan``)."""

    def key():
        ids = [tuple(id(s[k]) for s in states) for k in ("exp_avg", "exp_hessian_diag_sq")]
        return (tuple(map(id, params)), tuple(p.data_ptr() for p in params), *ids)

    def build():
        from .triton_tables import like

        for p, s in zip(params, states, strict=True):
            for k in ("exp_avg", "exp_hessian_diag_sq"):
                s[k] = like(s[k], p)
        return Plan(params, *([s[k] for s in states] for k in ("exp_avg", "exp_hessian_diag_sq")))

    return cache.get(key, build)
