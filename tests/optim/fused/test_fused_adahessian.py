"""AdaHessian's fused update against the float64 reference rule (tolerances: common.py).

The losses are separable (a diagonal Hessian), so the Hutchinson estimate is exact whatever
the probe, and the reference takes the exact diagonal."""

from __future__ import annotations

import pytest
import torch

from apollo_optim.adahessian import AdaHessian
from tests.optim.reference_adahessian import PARITY_CASES, step_with_reference

from .common import DEVICE, assert_fp32_close, needs_fused

pytestmark = [
    needs_fused,
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
]
SHAPES = [(), (5,), (4, 3), (2, 3, 4), (3, 2, 3, 3), (2, 1, 2, 2, 3)]


def _run(kwargs, steps=6, skip_odd=(), scheduler=None):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=torch.float64).float() for s in SHAPES]
    params = [x.to(DEVICE).requires_grad_() for x in init]
    ref_params = [x.double() for x in init]
    opt = AdaHessian(params, seed=0, fused=True, **kwargs)
    step_with_reference(opt, params, ref_params, kwargs, steps, skip_odd, scheduler)
    return params, ref_params, opt


@pytest.mark.parametrize("case", PARITY_CASES)
def test_float32_parity(case):
    params, ref, _ = _run(PARITY_CASES[case])
    assert_fp32_close(params, ref)


def test_per_parameter_step_counts_and_scheduler():
    def sched(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    kwargs = dict(lr=0.1, warmup=4, init_lr=0.01, update_each=2, weight_decay=0.01)
    params, ref, opt = _run(kwargs, steps=8, skip_odd=(1, 4), scheduler=sched)
    assert_fp32_close(params, ref)
    assert [opt.state[p]["step"].item() for p in params] == [8, 4, 8, 8, 4, 8]
