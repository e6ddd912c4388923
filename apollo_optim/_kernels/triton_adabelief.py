"""AdaBelief's fused step: two launches per parameter group (four with the stable decay).

``_scalars`` increments each tensor's device step counter and stores its bias corrections
(one program per tensor); ``_apply`` then runs rule steps 2-8 over every block, reading
θ, g, m, s and writing θ, m, s: the 7 transfers of Adam. The stable decay divides by
mean(denom), which needs the whole tensor first: ``_apply`` then stores m, s and
denom's block sums, ``_stable_scalars`` the factor 1 - lr·λ/mean(denom), and ``_stable``
recomputes denom from s and updates θ. Arithmetic is float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import (
    REDUCE_BLOCK,
    TL_DTYPES,
    device_fn,
    launch,
    load,
    locate,
    lr_args,
    masked_sum,
    pow_parts,
    store,
    tail,
    tensor_total,
)
from .triton_tables import Tables


@triton.jit
def _scalars(
    step_tab,
    step_size_out,
    sqrt_c2_out,
    decay_out,
    lr_out,
    lr_ptr,
    lr,
    log2_beta1,
    log2_beta2,
    lam_dec,
    LR_PTR: tl.constexpr,
):
    i = tl.program_id(0)
    step = tl.load(step_tab + i).to(tl.pointer_type(tl.float32))
    t = tl.load(step) + 1.0  # step 1
    tl.store(step, t)
    if LR_PTR:
        lr = tl.load(lr_ptr)
    tl.store(step_size_out + i, -lr / (1.0 - tl.exp2(t * log2_beta1)))
    tl.store(sqrt_c2_out + i, tl.sqrt(1.0 - tl.exp2(t * log2_beta2)))
    tl.store(decay_out + i, 1.0 - lr * lam_dec)  # step 7, decoupled (1 otherwise)
    tl.store(lr_out + i, lr)


@device_fn
def _apply_block(
    p_tab,
    g_tab,
    m_tab,
    s_tab,
    i,
    offs,
    mask,
    pid,
    step_size_in,
    sqrt_c2_in,
    decay_in,
    denom_part,
    beta1,
    beta2,
    eps,
    lam_l2,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    HAS_L2: tl.constexpr,
    STABLE: tl.constexpr,
):
    g = load(g_tab, i, offs, mask, DTYPE, ALIGNED)
    if HAS_L2 or not STABLE:
        p = load(p_tab, i, offs, mask, DTYPE, ALIGNED)
    if HAS_L2:
        g += lam_l2 * p  # step 2, on a copy of the gradient
    m = load(m_tab, i, offs, mask, DTYPE, ALIGNED)
    m += (1.0 - beta1) * (g - m)  # step 3
    r = g - m  # step 4
    s = load(s_tab, i, offs, mask, DTYPE, ALIGNED) * beta2 + (1.0 - beta2) * (r * r) + eps  # 5
    denom = tl.sqrt(s) / tl.load(sqrt_c2_in + i) + eps  # step 6
    store(m_tab, i, offs, mask, m, DTYPE, ALIGNED)
    store(s_tab, i, offs, mask, s, DTYPE, ALIGNED)
    if STABLE:
        tl.store(denom_part + pid, masked_sum(denom, mask))
    else:
        p = p * tl.load(decay_in + i) + tl.load(step_size_in + i) * (m / denom)  # steps 7-8
        store(p_tab, i, offs, mask, p, DTYPE, ALIGNED)


@triton.jit
def _apply(
    p_tab,
    g_tab,
    m_tab,
    s_tab,
    block_tensor,
    block_start,
    numels,
    step_size_in,
    sqrt_c2_in,
    decay_in,
    denom_part,
    beta1,
    beta2,
    eps,
    lam_l2,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    HAS_L2: tl.constexpr,
    STABLE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, i, offs, full = locate(block_tensor, block_start, numels, BLOCK, ALIGNED)
    tabs = (p_tab, g_tab, m_tab, s_tab)
    ins = (step_size_in, sqrt_c2_in, decay_in, denom_part, beta1, beta2, eps, lam_l2)
    if full:
        _apply_block(*tabs, i, offs, None, pid, *ins, DTYPE, ALIGNED, HAS_L2, STABLE)
    else:
        mask = tail(offs, numels, i)
        _apply_block(*tabs, i, offs, mask, pid, *ins, DTYPE, ALIGNED, HAS_L2, STABLE)


@triton.jit
def _stable_scalars(first_block, numels, denom_part, lr_in, decay_out, lam, RBLOCK: tl.constexpr):
    i = tl.program_id(0)
    total = tensor_total(first_block, denom_part, i, False, RBLOCK)
    lr = tl.load(lr_in + i)
    tl.store(decay_out + i, 1.0 - lr * lam * tl.load(numels + i).to(tl.float32) / total)


@device_fn
def _stable_block(
    p_tab,
    m_tab,
    s_tab,
    i,
    offs,
    mask,
    step_size_in,
    sqrt_c2_in,
    decay_in,
    eps,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    s = load(s_tab, i, offs, mask, DTYPE, ALIGNED)
    denom = tl.sqrt(s) / tl.load(sqrt_c2_in + i) + eps
    m = load(m_tab, i, offs, mask, DTYPE, ALIGNED)
    p = load(p_tab, i, offs, mask, DTYPE, ALIGNED) * tl.load(decay_in + i)  # step 7, stable
    p += tl.load(step_size_in + i) * (m / denom)  # step 8
    store(p_tab, i, offs, mask, p, DTYPE, ALIGNED)


@triton.jit
def _stable(
    p_tab,
    m_tab,
    s_tab,
    block_tensor,
    block_start,
    numels,
    step_size_in,
    sqrt_c2_in,
    decay_in,
    eps,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _, i, offs, full = locate(block_tensor, block_start, numels, BLOCK, ALIGNED)
    ins = (step_size_in, sqrt_c2_in, decay_in, eps)
    if full:
        _stable_block(p_tab, m_tab, s_tab, i, offs, None, *ins, DTYPE, ALIGNED)
    else:
        mask = tail(offs, numels, i)
        _stable_block(p_tab, m_tab, s_tab, i, offs, mask, *ins, DTYPE, ALIGNED)


class Plan:
    """The tables of one group's parameter set (see :class:`.tables.Tables`)."""

    def __init__(self, params, ms, ss, steps) -> None:
        self.dtype = params[0].dtype
        self.tables = Tables([params, ms, ss, steps], params[0].device, counters=1)

    def step(self, grads: list[torch.Tensor], group: dict) -> None:
        tb = self.tables
        p_tab, m_tab, s_tab, step_tab = tb.ptrs
        grads = tb.laid_out(grads)  # copies, if any, must outlive the launches
        g_tab = tb.dynamic("grads", grads)
        fmt = dict(DTYPE=TL_DTYPES[self.dtype], ALIGNED=tb.aligned, BLOCK=tb.block)
        beta1, beta2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        wd, wdt = float(group["weight_decay"]), group["weight_decay_type"]
        l2 = wd != 0 and wdt == "L2"
        stable = wd != 0 and wdt == "stable"
        lr_ptr, lr, lr_on_device = lr_args(group["lr"], tb.device)

        (denom_part,) = tb.buffer("partials", 1, per_block=True)
        step_size, sqrt_c2, decay, lr_i = tb.buffer("scalars", 4, per_block=False)
        launch(
            _scalars,
            tb.n,
            step_tab,
            step_size,
            sqrt_c2,
            decay,
            lr_i,
            lr_ptr,
            lr,
            pow_parts(beta1),
            pow_parts(beta2),
            wd if wdt == "decoupled" else 0.0,
            LR_PTR=lr_on_device,
        )
        launch(
            _apply,
            tb.nblocks,
            p_tab,
            g_tab,
            m_tab,
            s_tab,
            *tb.blocks,
            step_size,
            sqrt_c2,
            decay,
            denom_part,
            beta1,
            beta2,
            eps,
            wd,
            HAS_L2=l2,
            STABLE=stable,
            **fmt,
        )
        if stable:
            launch(
                _stable_scalars,
                tb.n,
                tb.first_block,
                tb.numels,
                denom_part,
                lr_i,
                decay,
                wd,
                RBLOCK=REDUCE_BLOCK,
            )
            launch(
                _stable,
                tb.nblocks,
                p_tab,
                m_tab,
                s_tab,
                *tb.blocks,
                step_size,
                sqrt_c2,
                decay,
                eps,
                **fmt,
            )
