"""AdaBelief's fused kernels against the float64 reference rule (tolerances: common.py)."""

from __future__ import annotations

import pytest
import torch

from apollo_optim import AdaBelief
from tests.optim.reference_adabelief import ReferenceAdaBelief

from .common import DEVICE, SHAPES, assert_bf16_close, assert_fp32_close, needs_fused

pytestmark = needs_fused

BIG = [(1100, 4000)] if DEVICE.type == "cuda" else []  # spans passes of the block totals


def _run(kwargs, dtype=torch.float32, steps=6, skip_odd=(), shapes=SHAPES, scheduler=None):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    params = [torch.nn.Parameter(x.to(DEVICE)) for x in init]
    opt = AdaBelief(params, fused=True, **kwargs)
    sched = scheduler(opt) if scheduler else None
    rule = {k: v for k, v in kwargs.items() if k != "lr"}
    ref, ref_params = ReferenceAdaBelief(**rule), [x.double() for x in init]
    plain, plain_params = ReferenceAdaBelief(**rule), [x.clone() for x in init]
    for step in range(steps):
        g = torch.Generator().manual_seed(1000 + step)
        grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        grads = [None if (i in skip_odd and step % 2) else x for i, x in enumerate(grads)]
        for p, x in zip(params, grads, strict=True):
            p.grad = None if x is None else x.to(dtype).to(DEVICE)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        ref.step(ref_params, [None if x is None else x.to(dtype).double() for x in grads], lr)
        if dtype != torch.float32:
            plain.step(plain_params, [None if x is None else x.to(dtype) for x in grads], lr)
        if sched:
            sched.step()
    return params, ref_params, plain_params, opt


CASES = [(0.0, "L2"), (0.1, "L2"), (0.1, "decoupled"), (0.1, "stable")]


@pytest.mark.parametrize("wd,wd_type", CASES)
def test_float32_parity(wd, wd_type):
    kwargs = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, weight_decay_type=wd_type)
    params, ref, _, opt = _run(kwargs, shapes=SHAPES + BIG)
    assert_fp32_close(params, ref)
    assert opt.state[params[0]]["step"].device.type == DEVICE.type


@pytest.mark.parametrize("wd,wd_type", CASES[2:])
def test_bfloat16_parity(wd, wd_type):
    kwargs = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, weight_decay_type=wd_type)
    params, ref, plain, _ = _run(kwargs, dtype=torch.bfloat16)
    assert_bf16_close(params, plain, ref)


def test_per_tensor_step_counts_and_scheduler():
    def sched(opt):
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.3)

    kwargs = dict(lr=3e-2, weight_decay=0.05, weight_decay_type="stable")
    params, ref, _, opt = _run(kwargs, skip_odd=(1, 3, 4), scheduler=sched)
    assert_fp32_close(params, ref)
    assert [opt.state[p]["step"].item() for p in params] == [6, 3, 6, 3, 3, 6]
