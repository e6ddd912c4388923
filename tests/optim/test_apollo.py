"""Apollo against the plain reference loop of docs/update_rules.md, in float64.

The generic checks every registered optimizer gets (bad arguments, state_dict round trip,
closure, sparse gradients, torch.compile, Rosenbrock, ...) live in conformance.py; this file
is Apollo's own rule, in each implementation (the fused one: tests/optim/fused).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import apollo_optim as optim
from apollo_optim._kernels import cpu_buffers
from tests.optim.reference_apollo import ReferenceApollo, RefGroup
from tests.optim.reference_apollo import noisy_quadratic_grad as _grad

SHAPES = [(), (3,), (3, 4), (2, 3, 4), (2, 3, 2, 2), (2, 1, 2, 2, 2)]  # 0-D to 5-D
RTOL = 1e-12


def _tensors(shapes, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def _assert_close(params, ref_params, rtol=RTOL) -> None:
    for p, r in zip(params, ref_params, strict=True):
        scale = r.abs().max().clamp_min(1.0)
        assert (p.detach() - r).abs().max() <= rtol * scale, (p, r)


def _run_pair(cfg: dict, steps: int = 12, foreach: bool = True, shapes=SHAPES, every=None):
    """Apollo and the reference side by side; param i gets a gradient every ``every[i]`` steps."""
    gen = torch.Generator().manual_seed(1)
    init = _tensors(shapes, gen)
    noise = [_tensors(shapes, gen) for _ in range(steps)]
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = optim.Apollo(params, foreach=foreach, **cfg)
    ref = ReferenceApollo([RefGroup([x.clone() for x in init], **cfg)])
    for k in range(steps):
        has = [every is None or k % every[i] == 0 for i in range(len(shapes))]
        for p, n, h in zip(params, noise[k], has, strict=True):
            p.grad = _grad(p.detach(), n) if h else None
        opt.step()
        ref.step(
            [
                _grad(r, n) if h else None
                for r, n, h in zip(ref.groups[0].params, noise[k], has, strict=True)
            ]
        )
    return params, ref.groups[0].params


CONFIGS = [
    dict(
        lr=0.01 if sigma == 0.01 else 0.5,  # the two paper versions' lr ranges
        rebound=rebound,
        weight_decay_type=wdt,
        weight_decay=wd,
        sigma=sigma,
        warmup=warmup,  # 5 < 12 steps: the warmup ends mid-run
    )
    for rebound, wdt, wd, sigma, warmup in itertools.product(
        ["constant", "belief"], ["L2", "decoupled", "stable"], [0.0, 0.1], [0.01, 1.0], [0, 5]
    )
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_parity_with_reference_foreach_and_loop(cfg):
    fast, ref = _run_pair(cfg, foreach=True)  # on CPU: the blocked step (_kernels/cpu_apollo)
    loop, ref2 = _run_pair(cfg, foreach=False)
    _assert_close(fast, ref)
    _assert_close(loop, ref2)


@pytest.mark.parametrize("cfg", CONFIGS[1::4], ids=lambda c: "-".join(str(v) for v in c.values()))
def test_cpu_blocks_and_batches(cfg, monkeypatch):
    # tiny limits: tensors above 5 elements are swept in blocks of 7 (several blocks each),
    # smaller ones batched 7 // n at a time (several batches of one size)
    monkeypatch.setattr(cpu_buffers, "SMALL", 5)
    monkeypatch.setattr(cpu_buffers, "BLOCK", 7)
    monkeypatch.setattr(cpu_buffers, "SWEEP", 7)
    fast, ref = _run_pair(cfg, foreach=True, shapes=[*SHAPES, (2,), (2,), (2,), (3,), (40,)])
    _assert_close(fast, ref)


@pytest.mark.parametrize("foreach", [True, False])
def test_grad_every_other_step_gets_its_own_bias_correction(foreach):
    # params 1 and 3 see a gradient only every other step, so one group holds two step counts
    cfg = dict(lr=0.01, warmup=4, weight_decay=0.1)
    params, ref = _run_pair(cfg, steps=9, foreach=foreach, every=[1, 2, 1, 2, 1, 3])
    _assert_close(params, ref)


@pytest.mark.parametrize("foreach", [True, False])
def test_lr_scheduler_changes_lr_after_warmup(foreach):
    gen = torch.Generator().manual_seed(2)
    init, noise = _tensors(SHAPES, gen), [_tensors(SHAPES, gen) for _ in range(10)]
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = optim.Apollo(params, lr=0.02, warmup=3, foreach=foreach)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    ref = ReferenceApollo([RefGroup([x.clone() for x in init], lr=0.02, warmup=3)])
    lrs = []
    for k in range(10):
        for p, n in zip(params, noise[k], strict=True):
            p.grad = _grad(p.detach(), n)
        opt.step()
        ref.step([_grad(r, n) for r, n in zip(ref.groups[0].params, noise[k], strict=True)])
        sched.step()
        ref.groups[0].lr = opt.param_groups[0]["lr"]
        lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) > 3  # the schedule really moved
    assert opt.param_groups[0]["base_lr"] == 0.02
    _assert_close(params, ref.groups[0].params)


@pytest.mark.parametrize("foreach", [True, False])
def test_per_group_lrs_during_warmup_and_add_param_group(foreach):
    gen = torch.Generator().manual_seed(3)
    a0, b0, c0 = _tensors([(4, 3), (5,), (2, 2, 2)], gen)
    a, b, c = (torch.nn.Parameter(x.clone()) for x in (a0, b0, c0))
    opt = optim.Apollo(
        [{"params": [a]}, {"params": [b], "lr": 0.001}], lr=0.05, warmup=6, foreach=foreach
    )
    ref = ReferenceApollo(
        [RefGroup([a0.clone()], lr=0.05, warmup=6), RefGroup([b0.clone()], lr=0.001, warmup=6)]
    )
    for k in range(10):
        if k == 2:  # after the first steps, with its own lr and the default init_lr
            opt.add_param_group({"params": [c], "lr": 0.2, "rebound": "belief"})
            ref.add_group(RefGroup([c0.clone()], lr=0.2, warmup=6, rebound="belief"))
        live = [a, b] + ([c] if k >= 2 else [])
        noise = _tensors([p.shape for p in live], gen)
        ref_live = [g.params[0] for g in ref.groups]
        for p, n in zip(live, noise, strict=True):
            p.grad = _grad(p.detach(), n)
        opt.step()
        ref.step([_grad(r, n) for r, n in zip(ref_live, noise, strict=True)])
    assert [g["base_lr"] for g in opt.param_groups] == [0.05, 0.001, 0.2]
    assert opt.param_groups[2]["weight_decay_type"] == "decoupled"  # belief's default
    _assert_close([a, b, c], [g.params[0] for g in ref.groups])


def test_maximize_equals_minimizing_the_negated_gradient():
    gen = torch.Generator().manual_seed(5)
    init, grads = _tensors(SHAPES, gen), [_tensors(SHAPES, gen) for _ in range(4)]
    a = [torch.nn.Parameter(x.clone()) for x in init]
    b = [torch.nn.Parameter(x.clone()) for x in init]
    opt_a = optim.Apollo(a, lr=0.01, warmup=2, weight_decay=0.1, maximize=True)
    opt_b = optim.Apollo(b, lr=0.01, warmup=2, weight_decay=0.1)
    for gs in grads:
        for p, q, g in zip(a, b, gs, strict=True):
            p.grad, q.grad = g.clone(), -g
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)


def test_empty_and_channels_last_parameters():
    empty = torch.nn.Parameter(torch.zeros(0, 3))
    conv = torch.nn.Parameter(torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last))
    ref_conv = conv.detach().clone().contiguous()
    opt = optim.Apollo([empty, conv], lr=0.01, warmup=0, rebound="belief")
    gen = torch.Generator().manual_seed(6)
    for _ in range(3):
        empty.grad = torch.zeros(0, 3)
        g = torch.randn(2, 3, 4, 4, generator=gen)
        conv.grad = g.to(memory_format=torch.channels_last)
        opt.step()
    ref = optim.Apollo([torch.nn.Parameter(ref_conv)], lr=0.01, warmup=0, rebound="belief")
    gen = torch.Generator().manual_seed(6)
    for _ in range(3):
        ref.param_groups[0]["params"][0].grad = torch.randn(2, 3, 4, 4, generator=gen)
        ref.step()
    torch.testing.assert_close(conv.detach(), ref.param_groups[0]["params"][0].detach())


def test_float16_parameters_are_a_clear_error():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    p.grad = torch.ones(3, dtype=torch.float16)
    with pytest.raises(ValueError, match="float16"):
        optim.Apollo([p], lr=0.01).step()


def test_defaults_derived_from_the_other_arguments():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert optim.Apollo(p, lr=0.01).param_groups[0]["weight_decay_type"] == "L2"
    belief = optim.Apollo(p, lr=0.01, rebound="belief")
    assert belief.param_groups[0]["weight_decay_type"] == "decoupled"
    assert optim.Apollo(p, lr=0.01).param_groups[0]["init_lr"] == pytest.approx(1e-5)


def test_compiled_option_matches_eager():  # ~10 s: one small inductor compile
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(8)
    # one tensor large enough for the compiled kernel, two that stay on the eager path
    shapes = [(256, 256), (3, 4), (5,)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    a = [torch.nn.Parameter(x.clone()) for x in init]
    b = [torch.nn.Parameter(x.clone()) for x in init]
    opt_a = optim.Apollo(a, lr=0.01, warmup=2, weight_decay=0.1, compiled=True)
    opt_b = optim.Apollo(b, lr=0.01, warmup=2, weight_decay=0.1)
    for k in range(5):
        for p, q in zip(a, b, strict=True):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            q.grad = p.grad.clone()
        opt_a.param_groups[0]["lr"] = opt_b.param_groups[0]["lr"] = 0.01 / (1 + k)
        opt_a.step()
        opt_b.step()
    assert opt_a._compiled_fn is not None
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)
