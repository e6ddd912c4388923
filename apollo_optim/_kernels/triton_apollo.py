"""Apollo's fused step: three launches per parameter group (five with the stable decay).

1. ``_reduce``: per block, the partial sums of rule steps 5-9 (Σ Δ⊙d, Σ (d⊙d)², Σ B⊙d⊙d,
   max|Δ|), reading g, m, B, d (and θ for L2 decay);
2. ``_scalars``: per tensor, the block totals and the scalars of steps 1, 3, 7-9 (lr_t, α,
   δ/s², the rebound bound) from the device step counter, which it increments;
3. ``_apply``: per block, steps 6 and 10-14, reading g, m, B, d, θ and writing m, B, d, θ.

That is 13 tensor-sized transfers, the rule's minimum (the reductions need every element
before any update). The stable decay needs mean(D) before the last step: ``_apply`` then
writes d = m/D and D's block sums, ``_stable_scalars`` λ/mean(D) per tensor, and ``_stable``
adds λ/mean(D)·θ to d and updates θ.
All arithmetic is float32 whatever the parameters' dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import (
    REDUCE_BLOCK,
    TL_DTYPES,
    block_max,
    block_sum,
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


@device_fn
def _reduce_block(
    p_tab,
    g_tab,
    m_tab,
    b_tab,
    d_tab,
    i,
    offs,
    mask,
    pid,
    x_part,
    w4_part,
    bw_part,
    r_part,
    sign,
    lam_l2,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    HAS_L2: tl.constexpr,
):
    delta = load(g_tab, i, offs, mask, DTYPE, ALIGNED) * sign
    if HAS_L2:  # rule step 2, on a copy of the gradient
        delta += lam_l2 * load(p_tab, i, offs, mask, DTYPE, ALIGNED)
    delta -= load(m_tab, i, offs, mask, DTYPE, ALIGNED)  # step 4
    d = load(d_tab, i, offs, mask, DTYPE, ALIGNED)
    w = d * d  # masked lanes are 0 in every load: they add nothing below
    tl.store(x_part + pid, block_sum(delta * d))
    tl.store(w4_part + pid, block_sum(w * w))
    tl.store(bw_part + pid, block_sum(load(b_tab, i, offs, mask, DTYPE, ALIGNED) * w))
    tl.store(r_part + pid, block_max(tl.abs(delta)))


@triton.jit
def _reduce(
    p_tab,
    g_tab,
    m_tab,
    b_tab,
    d_tab,
    block_tensor,
    block_start,
    numels,
    x_part,
    w4_part,
    bw_part,
    r_part,
    sign,
    lam_l2,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    HAS_L2: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, i, offs, full = locate(block_tensor, block_start, numels, BLOCK, ALIGNED)
    tabs = (p_tab, g_tab, m_tab, b_tab, d_tab)
    parts = (x_part, w4_part, bw_part, r_part)
    if full:
        _reduce_block(*tabs, i, offs, None, pid, *parts, sign, lam_l2, DTYPE, ALIGNED, HAS_L2)
    else:
        mask = tail(offs, numels, i)
        _reduce_block(*tabs, i, offs, mask, pid, *parts, sign, lam_l2, DTYPE, ALIGNED, HAS_L2)


@triton.jit
def _scalars(
    step_tab,
    first_block,
    x_part,
    w4_part,
    bw_part,
    r_part,
    alpha_out,
    c_out,
    bound_out,
    add_out,
    lr_out,
    lr_ptr,
    lr,
    beta,
    log2_beta,
    eps_p,
    sigma,
    warmup,
    init_lr,
    warm_slope,
    BELIEF: tl.constexpr,
    LR_PTR: tl.constexpr,
    RBLOCK: tl.constexpr,
):
    i = tl.program_id(0)
    b0 = tl.load(first_block + i)
    b1 = tl.load(first_block + i + 1)
    x = tl.zeros([RBLOCK], dtype=tl.float32)
    w4 = tl.zeros([RBLOCK], dtype=tl.float32)
    bw = tl.zeros([RBLOCK], dtype=tl.float32)
    r = tl.zeros([RBLOCK], dtype=tl.float32)
    for b in range(b0, b1, RBLOCK):  # the block totals, in a fixed order (deterministic)
        idx = b + tl.arange(0, RBLOCK)
        mask = idx < b1
        x += tl.load(x_part + idx, mask=mask, other=0.0)
        w4 += tl.load(w4_part + idx, mask=mask, other=0.0)
        bw += tl.load(bw_part + idx, mask=mask, other=0.0)
        if BELIEF:
            r = tl.maximum(r, tl.load(r_part + idx, mask=mask, other=0.0))
    x = block_sum(x)
    w4 = block_sum(w4)
    bw = block_sum(bw)
    step = tl.load(step_tab + i).to(tl.pointer_type(tl.float32))
    t = tl.load(step)
    if LR_PTR:
        lr = tl.load(lr_ptr)
    # step 1, t before the increment; a group whose lr is 0 does not move in warmup either
    warm = tl.where(lr == 0.0, 0.0, init_lr + warm_slope * t)
    tl.store(lr_out + i, tl.where(t < warmup, warm, lr))
    alpha = (1.0 - beta) / (1.0 - tl.exp2((t + 1.0) * log2_beta))  # step 3
    s = tl.sqrt(tl.sqrt(w4)) + eps_p  # step 7: ‖d‖₄ + ε'
    s2 = s * s
    tl.store(alpha_out + i, alpha)
    tl.store(c_out + i, (x * -alpha - bw) / s2 / s2)  # δ / s² of steps 8-9
    if BELIEF:  # step 11: D = max(|B|, ‖Δ‖∞) + ε'/α
        tl.store(bound_out + i, block_max(r))
        tl.store(add_out + i, eps_p / alpha)
    else:  # D = max(|B|, σ)
        tl.store(bound_out + i, sigma)
        tl.store(add_out + i, 0.0)
    tl.store(step, t + 1.0)


@device_fn
def _apply_block(
    p_tab,
    g_tab,
    m_tab,
    b_tab,
    d_tab,
    i,
    offs,
    mask,
    pid,
    alpha_in,
    c_in,
    bound_in,
    add_in,
    lr_in,
    d_part,
    sign,
    lam_l2,
    lam_dec,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    HAS_L2: tl.constexpr,
    STABLE: tl.constexpr,
):
    delta = load(g_tab, i, offs, mask, DTYPE, ALIGNED) * sign
    if HAS_L2 or not STABLE:
        p = load(p_tab, i, offs, mask, DTYPE, ALIGNED)
    if HAS_L2:
        delta += lam_l2 * p
    m = load(m_tab, i, offs, mask, DTYPE, ALIGNED)
    delta -= m
    m += tl.load(alpha_in + i) * delta  # step 6
    d = load(d_tab, i, offs, mask, DTYPE, ALIGNED)
    b = load(b_tab, i, offs, mask, DTYPE, ALIGNED) + tl.load(c_in + i) * (d * d)  # step 10
    big_d = tl.maximum(tl.abs(b), tl.load(bound_in + i)) + tl.load(add_in + i)  # step 11
    d = m / big_d  # step 12
    store(m_tab, i, offs, mask, m, DTYPE, ALIGNED)
    store(b_tab, i, offs, mask, b, DTYPE, ALIGNED)
    if STABLE:  # D's block sums for mean(D); _stable finishes steps 13-14
        store(d_tab, i, offs, mask, d, DTYPE, ALIGNED)
        tl.store(d_part + pid, masked_sum(big_d, mask))
    else:
        d += lam_dec * p  # step 13 (λ' = 0 without decoupled decay)
        store(d_tab, i, offs, mask, d, DTYPE, ALIGNED)
        lr_t = tl.load(lr_in + i)
        # step 14; lr 0 leaves θ alone even where the update is not finite
        store(p_tab, i, offs, mask, tl.where(lr_t != 0.0, p - lr_t * d, p), DTYPE, ALIGNED)


@triton.jit
def _apply(
    p_tab,
    g_tab,
    m_tab,
    b_tab,
    d_tab,
    block_tensor,
    block_start,
    numels,
    alpha_in,
    c_in,
    bound_in,
    add_in,
    lr_in,
    d_part,
    sign,
    lam_l2,
    lam_dec,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    HAS_L2: tl.constexpr,
    STABLE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, i, offs, full = locate(block_tensor, block_start, numels, BLOCK, ALIGNED)
    tabs = (p_tab, g_tab, m_tab, b_tab, d_tab)
    ins = (alpha_in, c_in, bound_in, add_in, lr_in, d_part, sign, lam_l2, lam_dec)
    if full:
        _apply_block(*tabs, i, offs, None, pid, *ins, DTYPE, ALIGNED, HAS_L2, STABLE)
    else:
        mask = tail(offs, numels, i)
        _apply_block(*tabs, i, offs, mask, pid, *ins, DTYPE, ALIGNED, HAS_L2, STABLE)


@triton.jit
def _stable_scalars(first_block, numels, d_part, lam_out, lam, RBLOCK: tl.constexpr):
    i = tl.program_id(0)
    total = tensor_total(first_block, d_part, i, False, RBLOCK)
    tl.store(lam_out + i, lam / (total / tl.load(numels + i).to(tl.float32)))  # λ / mean(D)


@device_fn
def _stable_block(
    p_tab, d_tab, i, offs, mask, lam_in, lr_in, DTYPE: tl.constexpr, ALIGNED: tl.constexpr
):
    p = load(p_tab, i, offs, mask, DTYPE, ALIGNED)
    d = load(d_tab, i, offs, mask, DTYPE, ALIGNED) + tl.load(lam_in + i) * p  # step 13
    store(d_tab, i, offs, mask, d, DTYPE, ALIGNED)
    lr_t = tl.load(lr_in + i)
    store(p_tab, i, offs, mask, tl.where(lr_t != 0.0, p - lr_t * d, p), DTYPE, ALIGNED)


@triton.jit
def _stable(
    p_tab,
    d_tab,
    block_tensor,
    block_start,
    numels,
    lam_in,
    lr_in,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _, i, offs, full = locate(block_tensor, block_start, numels, BLOCK, ALIGNED)
    if full:
        _stable_block(p_tab, d_tab, i, offs, None, lam_in, lr_in, DTYPE, ALIGNED)
    else:
        mask = tail(offs, numels, i)
        _stable_block(p_tab, d_tab, i, offs, mask, lam_in, lr_in, DTYPE, ALIGNED)


class Plan:
    """The tables of one group's parameter set (see :class:`.tables.Tables`)."""

    def __init__(self, params, ms, bs, us, steps) -> None:
        self.dtype = params[0].dtype
        self.tables = Tables([params, ms, bs, us, steps], params[0].device, counters=1)

    def step(self, grads: list[torch.Tensor], group: dict) -> None:
        tb = self.tables
        p_tab, m_tab, b_tab, d_tab, step_tab = tb.ptrs
        grads = tb.laid_out(grads)  # copies, if any, must outlive the launches
        g_tab = tb.dynamic("grads", grads)
        fmt = dict(DTYPE=TL_DTYPES[self.dtype], ALIGNED=tb.aligned, BLOCK=tb.block)
        wd, wdt = float(group["weight_decay"]), group["weight_decay_type"]
        l2 = wd != 0 and wdt == "L2"
        stable = wd != 0 and wdt == "stable"
        lam_dec = wd if wdt == "decoupled" else 0.0
        sign = -1.0 if group.get("maximize", False) else 1.0
        belief = group["rebound"] == "belief"
        sigma = float(group["sigma"])
        eps_p = float(group["eps"]) if belief else float(group["eps"]) / sigma
        warmup = int(group["warmup"])
        init_lr = float(group["init_lr"])
        base_lr = float(group.get("base_lr", group["lr"]))
        slope = (base_lr - init_lr) / warmup if warmup > 0 else 0.0
        beta = float(group["beta"])
        lr_ptr, lr, lr_on_device = lr_args(group["lr"], tb.device)

        parts = tb.buffer("partials", 4, per_block=True)
        scal = tb.buffer("scalars", 6, per_block=False)  # α, δ/s², bound, add, lr_t, λ'
        tabs = (p_tab, g_tab, m_tab, b_tab, d_tab)
        launch(
            _reduce,
            tb.nblocks,
            *tabs,
            *tb.blocks,
            *parts,
            sign,
            wd,
            HAS_L2=l2,
            **fmt,
        )
        launch(
            _scalars,
            tb.n,
            step_tab,
            tb.first_block,
            *parts,
            *scal[:5],
            lr_ptr,
            lr,
            beta,
            pow_parts(beta),
            eps_p,
            sigma,
            float(warmup),
            init_lr,
            slope,
            BELIEF=belief,
            LR_PTR=lr_on_device,
            RBLOCK=REDUCE_BLOCK,
        )
        launch(
            _apply,
            tb.nblocks,
            *tabs,
            *tb.blocks,
            *scal[:5],
            parts[0],
            sign,
            wd,
            lam_dec,
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
                parts[0],
                scal[5],
                wd,
                RBLOCK=REDUCE_BLOCK,
            )
            launch(_stable, tb.nblocks, p_tab, d_tab, *tb.blocks, scal[5], scal[4], **fmt)
