"""AdaBelief against the spec's reference loop, in each implementation (the fused one:
tests/optim/fused). The generic checks every registered optimizer gets (bad arguments,
state_dict round trip, closure, sparse gradients, torch.compile, ...) live in conformance.py."""

from __future__ import annotations

import pytest
import torch

from apollo_optim import adabelief
from apollo_optim.adabelief import AdaBelief
from tests.optim.reference_adabelief import ReferenceAdaBelief

SHAPES = [(), (5,), (4, 3), (2, 3, 4), (2, 2, 3, 3), (2, 1, 2, 2, 3)]  # 0-D to 5-D


def _params(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]


def _grads(params, step, skip_odd=()):
    """Deterministic pseudo-gradients; indices in ``skip_odd`` get none on odd steps."""
    gen = torch.Generator().manual_seed(1000 + step)
    out = []
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.1 * p.detach()
        out.append(None if (i in skip_odd and step % 2) else g)
    return out


def _run_pair(kwargs, steps=25, foreach=True, scheduler=None, skip_odd=()):
    params = _params()
    ref_params = [p.detach().clone() for p in params]
    opt = AdaBelief(params, foreach=foreach, **kwargs)
    sched = scheduler(opt) if scheduler else None
    ref = ReferenceAdaBelief(
        **{k: v for k, v in kwargs.items() if k != "lr"},
    )
    for step in range(steps):
        grads = _grads(params, step, skip_odd)
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else g.clone()
        lr = opt.param_groups[0]["lr"]
        opt.step()
        ref.step(ref_params, grads, lr)
        if sched:
            sched.step()
    return params, ref_params


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize(
    "wd,wd_type",
    [
        (0.0, "L2"),
        (0.1, "L2"),
        (0.0, "decoupled"),
        (0.1, "decoupled"),
        (0.0, "stable"),
        (0.1, "stable"),
    ],
)
def test_parity_with_reference(foreach, wd, wd_type):
    kwargs = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, weight_decay_type=wd_type)
    params, ref_params = _run_pair(kwargs, foreach=foreach)
    for p, r in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [True, False])
def test_parity_with_scheduler_changing_lr(foreach):
    def sched(opt):
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[7, 15], gamma=0.3)

    kwargs = dict(lr=3e-2, weight_decay=0.05, weight_decay_type="stable")
    params, ref_params = _run_pair(kwargs, foreach=foreach, scheduler=sched)
    for p, r in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [True, False])
def test_per_parameter_step_counters(foreach):
    """Parameters that get a gradient only every other step keep their own bias correction."""
    kwargs = dict(lr=1e-2, weight_decay=0.1, weight_decay_type="decoupled")
    params, ref_params = _run_pair(kwargs, foreach=foreach, skip_odd=(1, 3, 4))
    for p, r in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)


def test_eps_accumulates_into_state():
    p = torch.zeros(3, requires_grad=True)
    opt = AdaBelief([p], lr=0.0, eps=0.5)
    for _ in range(3):
        p.grad = torch.zeros(3)
        opt.step()
    # r = 0 every step, so s = ε·(1 + β2 + β2²)
    expected = 0.5 * (1 + 0.999 + 0.999**2)
    torch.testing.assert_close(opt.state[p]["exp_avg_var"], torch.full((3,), expected))


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("wd_type", ["L2", "decoupled", "stable"])
def test_foreach_equals_per_tensor_bitwise(wd_type, chunk, monkeypatch):
    """Mixed dtypes exercise the device/dtype grouping, a tiny chunk size the cutting of
    tensors into cache-sized views; the two paths agree exactly on CPU."""
    if chunk:
        monkeypatch.setattr(adabelief, "CHUNK_NUMEL", chunk)
    results = []
    for foreach in (True, False):
        params = _params(torch.float32) + _params(torch.float64, seed=1)
        opt = AdaBelief(
            params, lr=1e-2, weight_decay=0.1, weight_decay_type=wd_type, foreach=foreach
        )
        for step in range(10):
            for p, g in zip(params, _grads(params, step, skip_odd=(2, 7)), strict=True):
                p.grad = g
            opt.step()
        results.append(params)
    for a, b in zip(*results, strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)


@pytest.mark.parametrize("wd_type", ["L2", "decoupled", "stable"])
def test_cpu_batches_of_same_shape_tensors_equal_the_loop_bitwise(wd_type, monkeypatch):
    """Same-shape small tensors share batch matrices (several batches of one shape here);
    a larger one stays on the multi-tensor path: the loop's numbers, bit for bit."""
    from apollo_optim._kernels import cpu_buffers

    monkeypatch.setattr(cpu_buffers, "SMALL", 30)
    monkeypatch.setattr(cpu_buffers, "BLOCK", 24)
    shapes = [(2, 3, 2)] * 5 + [(7,)] * 3 + [(5, 8)]
    results = []
    for foreach in (True, False):
        gen = torch.Generator().manual_seed(2)
        params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        opt = AdaBelief(
            params, lr=1e-2, weight_decay=0.1, weight_decay_type=wd_type, foreach=foreach
        )
        for step in range(4):
            for p, g in zip(params, _grads(params, step, skip_odd=(1,)), strict=True):
                p.grad = g
            opt.step()
        results.append((params, opt))
    (fast, opt), (loop, _) = results
    for a, b in zip(fast, loop, strict=True):
        assert torch.equal(a, b)
    rows = {opt.state[p]["exp_avg"].untyped_storage().data_ptr() for p in fast[:5]}
    assert len(rows) < 5  # the state of batched tensors shares batch matrices
