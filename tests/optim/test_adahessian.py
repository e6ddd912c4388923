"""AdaHessian against the spec's reference loop, GradScaler, and the peer-library pitfalls.

The generic checks every registered optimizer gets (bad arguments, rejected groups, sparse
gradients, closure, add_param_group, p.grad untouched, ...) live in conformance.py."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import apollo_optim as optim
from apollo_optim.adahessian import AdaHessian, _mix
from tests.optim.reference_adahessian import PARITY_CASES, step_with_reference

# AdaHessian needs backward(create_graph=True); torch warns about the .grad reference cycle.
pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")

SHAPES = [(), (5,), (4, 3), (2, 3, 4), (3, 2, 3, 3), (2, 1, 2, 2, 3)]  # 0-D to 5-D


def _params(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]


def _run_pair(kwargs, steps=20, skip_odd=(), scheduler=None):
    params = _params()
    ref_params = [p.detach().clone() for p in params]
    opt = AdaHessian(params, seed=0, **kwargs)
    step_with_reference(opt, params, ref_params, kwargs, steps, skip_odd, scheduler)
    return params, ref_params


@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity_with_reference(case):
    params, ref_params = _run_pair(PARITY_CASES[case])
    for p, r in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-11, atol=1e-12)


def test_parity_with_scheduler_and_per_parameter_step_counters():
    """Warmup uses each parameter's own count; parameters without a gradient every other
    step keep their own bias correction and update_each phase; a scheduler changes lr."""

    def sched(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=6, gamma=0.5)

    kwargs = dict(lr=0.1, warmup=4, init_lr=0.01, update_each=2, weight_decay=0.01)
    params, ref_params = _run_pair(kwargs, steps=24, skip_odd=(1, 4), scheduler=sched)
    for p, r in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-11, atol=1e-12)


def test_estimate_is_z_times_hz_for_a_full_hessian():
    """A non-diagonal quadratic: the first step's D̂ is z ⊙ (A z) for the seeded probe (of
    the first parameter at step 0: a generator seeded with _mix(seed, 0, 0))."""
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = m @ m.T + torch.eye(6, dtype=torch.float64)
    theta = torch.randn(2, 3, generator=gen, dtype=torch.float64).requires_grad_()
    opt = AdaHessian([theta], lr=0.0, betas=(0.0, 0.5), seed=11)
    (0.5 * theta.reshape(-1) @ a @ theta.reshape(-1)).backward(create_graph=True)
    opt.step()
    z = torch.randint(0, 2, (2, 3), generator=torch.Generator().manual_seed(_mix(11, 0, 0)))
    z = z * 2 - 1
    z = z.to(torch.float64).reshape(-1)
    expected = (z * (a @ z)).reshape(2, 3)
    # v = (1 - β2)·D̂² after one step
    torch.testing.assert_close(opt.state[theta]["exp_hessian_diag_sq"], 0.5 * expected**2)


# ---------------------------------------------------------------- torch.amp.GradScaler


def _scaled_run(dtype, scaler, clip=None, steps=6):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    model = model.to(dtype)
    x = torch.randn(8, 4, dtype=dtype)
    opt = AdaHessian(model.parameters(), lr=0.05, weight_decay=0.01, seed=5)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model(x).pow(2).mean()  # not separable: the probe matters
        (loss if scaler is None else scaler.scale(loss)).backward(create_graph=True)
        if clip is not None:
            if scaler is not None:
                scaler.unscale_(opt)  # then GradScaler no longer hands the loss scale over
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step() if scaler is None else optim.scaler_step(opt, scaler)
    return [p.detach() for p in model.parameters()], opt


@pytest.mark.parametrize("clip", [None, 0.05], ids=["plain", "unscale_then_clip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_scaler_gives_the_unscaled_updates(dtype, clip):
    plain, _ = _scaled_run(dtype, None, clip)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled, opt = _scaled_run(dtype, scaler, clip)
    assert scaler.get_scale() == 2.0**10  # no overflow, so every step ran
    assert all(opt.state[p]["step"].item() == 6 for g in opt.param_groups for p in g["params"])
    for a, b in zip(plain, scaled, strict=True):
        assert torch.equal(a, b)  # a power-of-two scale divides out exactly


def test_grad_scaler_overflow_skips_the_step():
    p = torch.ones(3, requires_grad=True)
    opt = AdaHessian([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt.zero_grad(set_to_none=True)
    scaler.scale((p**2).sum() * float("inf")).backward(create_graph=True)
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), torch.ones(3))
    assert not opt.state  # nothing was counted
    assert scaler.get_scale() < 2.0**10  # the scaler saw the overflow


# ---------------------------------------------------------------- pitfalls of the peers


def test_conv_shapes_1d_to_3d_and_average_conv_kernel():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {
            "c1": torch.nn.Conv1d(2, 3, 3),  # 3-D weight
            "c2": torch.nn.Conv2d(2, 3, 3),  # 4-D weight (kernel averaged)
            "c3": torch.nn.Conv3d(2, 3, 2),  # 5-D weight
        }
    ).double()
    scalar = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))  # 0-D
    params = [*model.parameters(), scalar]
    before = [p.detach().clone() for p in params]
    opt = AdaHessian(params, lr=0.05, average_conv_kernel=True)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        loss = (
            model["c1"](torch.randn(2, 2, 6, dtype=torch.float64)).tanh().pow(2).mean()
            + model["c2"](torch.randn(2, 2, 5, 5, dtype=torch.float64)).tanh().pow(2).mean()
            + model["c3"](torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)).tanh().pow(2).mean()
            + scalar**4
        )
        loss.backward(create_graph=True)
        opt.step()
    for p, b in zip(params, before, strict=True):
        assert torch.isfinite(p).all() and not torch.equal(p.detach(), b)
    v = opt.state[model["c2"].weight]["exp_hessian_diag_sq"]
    assert torch.equal(v, v[:, :, :1, :1].expand_as(v))  # constant over each 3x3 kernel


def test_gradient_without_graph_gets_zero_curvature():
    """A parameter entering the loss linearly has a constant gradient (no grad_fn)."""
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor(0.5, requires_grad=True)
    opt = AdaHessian([w, b], lr=0.1)
    ((w**2).sum() + 3.0 * b).backward(create_graph=True)
    assert b.grad.grad_fn is None
    opt.step()
    assert opt.state[b]["exp_hessian_diag_sq"].item() == 0.0
    assert b.item() < 0.5


def test_state_dict_round_trip_restores_the_probe_generator():
    """A non-separable loss, so a resumed run equals the uninterrupted one only if it draws
    the same probes."""

    def run(opt, w, steps):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            (w.sum() ** 2 + (w**3).sum()).backward(create_graph=True)
            opt.step()

    w = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([w], lr=0.05, update_each=2)
    run(opt, w, 3)
    buf = io.BytesIO()
    torch.save({"w": w.detach().clone(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    run(opt, w, 4)
    w2 = ckpt["w"].clone().requires_grad_()
    opt2 = AdaHessian([w2], lr=0.05, update_each=2, seed=123)  # another seed, then restored
    opt2.load_state_dict(ckpt["opt"])
    run(opt2, w2, 4)
    assert torch.equal(w, w2)


def test_deepcopy_continues_the_same_probe_stream():
    w = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([w], lr=0.05)

    def step(opt, w):
        opt.zero_grad(set_to_none=True)
        (w.sum() ** 2 + (w**3).sum()).backward(create_graph=True)
        opt.step()

    step(opt, w)
    opt.zero_grad(set_to_none=True)  # a gradient with a graph cannot be deep-copied
    opt2 = copy.deepcopy(opt)  # copies the parameters with the state
    (w2,) = opt2.param_groups[0]["params"]
    for _ in range(3):
        step(opt, w)
        step(opt2, w2)
    assert torch.equal(w, w2)


def test_backward_without_create_graph_is_a_clear_error():
    w = torch.ones(3, requires_grad=True)
    opt = AdaHessian([w])
    (w**2).sum().backward()
    with pytest.raises(RuntimeError, match=r"create_graph=True"):
        opt.step()


def test_grad_scaler_hessian_overflow_skips_the_step_and_backs_off():
    """Finite scaled gradients, but S·Hz overflows float32: skipped, and the scale shrinks."""
    p = torch.full((3,), 1e-36, requires_grad=True)
    opt = AdaHessian([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt.zero_grad(set_to_none=True)
    scaler.scale(((1e36 * p) * p).sum()).backward(create_graph=True)
    assert torch.isfinite(p.grad).all()
    optim.scaler_step(opt, scaler)
    assert torch.equal(p.detach(), torch.full((3,), 1e-36))
    assert opt.state[p]["step"].item() == 0
    assert scaler.get_scale() < 2.0**10
