"""Apollo's fused kernels against the float64 reference rule (see common.py for tolerances).

The option grid covers every kernel variant (rebound, each weight-decay type, L2's extra
read of θ, the stable decay's extra passes, maximize, a tensor lr) and every value of σ and
warmup of the plain parity grid (``tests/optim/test_apollo.py``) with each rebound, in 6
steps (the warmup of 5 ends mid-run); the interpreter is too slow for the full product.
"""

from __future__ import annotations

import io

import pytest
import torch

import apollo_optim as optim
from tests.optim.reference_apollo import ReferenceApollo, RefGroup
from tests.optim.reference_apollo import noisy_quadratic_grad as _grad

from .common import DEVICE, SHAPES, assert_bf16_close, assert_fp32_close, needs_fused, rel_err

pytestmark = needs_fused

# On CUDA one tensor spans more blocks than one pass of the per-tensor totals reads
# (2048 x 1024 elements); under the interpreter the blocks are 8 elements, so SHAPES do.
BIG = [(1100, 4000)] if DEVICE.type == "cuda" else []


def _run(cfg, dtype=torch.float32, steps=6, every=None, shapes=SHAPES, lr_tensor=False):
    """Fused Apollo, the float64 rule and (for low precision) the rule in ``dtype``, side
    by side; parameter i gets a gradient every ``every[i]`` steps."""
    gen = torch.Generator().manual_seed(1)
    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    noise = [
        [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)
    ]
    params = [torch.nn.Parameter(x.to(DEVICE)) for x in init]
    opt = optim.Apollo(params, fused=True, **cfg)
    if lr_tensor:  # read on the device
        opt.param_groups[0]["lr"] = torch.tensor(cfg["lr"], device=DEVICE)
    ref = ReferenceApollo([RefGroup([x.double() for x in init], **cfg)])
    plain = ReferenceApollo([RefGroup([x.clone() for x in init], **cfg)])
    for k in range(steps):
        has = [every is None or k % every[i] == 0 for i in range(len(shapes))]
        for p, n, h in zip(params, noise[k], has, strict=True):
            p.grad = _grad(p.detach().double().cpu(), n).to(dtype).to(DEVICE) if h else None
        opt.step()
        for rule in (ref, plain) if dtype != torch.float32 else (ref,):
            live = rule.groups[0].params
            rule.step(
                [
                    _grad(r.double(), n).to(r.dtype) if h else None
                    for r, n, h in zip(live, noise[k], has, strict=True)
                ]
            )
    return params, ref.groups[0].params, plain.groups[0].params, opt


def _cfg(rebound, wdt, wd, sigma, warmup, **extra):
    return dict(
        lr=0.01 if sigma == 0.01 else 0.5,
        rebound=rebound,
        weight_decay_type=wdt,
        weight_decay=wd,
        sigma=sigma,
        warmup=warmup,
        **extra,
    )


GRID = [
    _cfg("constant", "L2", 0.0, 0.01, 0),
    _cfg("constant", "L2", 0.1, 1.0, 5),
    _cfg("constant", "decoupled", 0.1, 0.01, 5),
    _cfg("constant", "stable", 0.1, 1.0, 0),
    _cfg("belief", "decoupled", 0.0, 1.0, 5),
    _cfg("belief", "L2", 0.1, 0.01, 0),
    _cfg("belief", "decoupled", 0.1, 1.0, 0),
    _cfg("belief", "stable", 0.1, 0.01, 5),
    _cfg("constant", "L2", 0.1, 0.01, 5, maximize=True),
]


def _id(cfg):
    return "-".join(str(v) for v in cfg.values())


@pytest.mark.parametrize("cfg", GRID, ids=_id)
def test_float32_parity(cfg):
    params, ref, _, opt = _run(cfg, shapes=SHAPES + BIG)
    assert_fp32_close(params, ref)
    step = opt.state[params[0]]["step"]
    assert step.device.type == DEVICE.type and step.dtype == torch.float32 and step.item() == 6


def test_float32_parity_with_a_tensor_lr():
    params, ref, _, _ = _run(_cfg("belief", "stable", 0.1, 0.01, 5), lr_tensor=True)
    assert_fp32_close(params, ref)


@pytest.mark.parametrize("cfg", [GRID[1], GRID[3], GRID[7]], ids=_id)
def test_bfloat16_parity(cfg):
    params, ref, plain, _ = _run(cfg, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert_bf16_close(params, plain, ref)


def test_per_tensor_step_counts_and_lr_scheduler():
    # params 1, 3 and 5 skip steps: one launch serves tensors with different counts
    cfg = _cfg("belief", "decoupled", 0.1, 0.01, 4)
    params, ref, _, opt = _run(cfg, steps=7, every=[1, 2, 1, 2, 1, 3])
    assert_fp32_close(params, ref)
    assert [opt.state[p]["step"].item() for p in params] == [7, 4, 7, 4, 7, 3]


def test_groups_add_param_group_lr_zero_and_untouched_grads():
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,), (2, 2, 2), (3,)]
    a0, b0, c0, z0 = (torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes)
    a, b, c, z = (torch.nn.Parameter(x.float().to(DEVICE)) for x in (a0, b0, c0, z0))
    opt = optim.Apollo(
        [{"params": [a]}, {"params": [b], "lr": 0.001}, {"params": [z], "lr": 0.0}],
        lr=0.05,
        warmup=6,
        weight_decay=0.1,
        fused=True,
    )
    ref = ReferenceApollo(
        [
            RefGroup([a0.float().double()], lr=0.05, warmup=6, weight_decay=0.1),
            RefGroup([b0.float().double()], lr=0.001, warmup=6, weight_decay=0.1),
        ]
    )
    for k in range(6):
        if k == 2:  # after the first steps, with its own lr and rebound
            opt.add_param_group({"params": [c], "lr": 0.2, "rebound": "belief"})
            late = RefGroup([c0.float().double()], lr=0.2, warmup=6, weight_decay=0.1)
            late.rebound, late.weight_decay_type = "belief", "decoupled"  # belief's default
            ref.add_group(late)
        live = [a, b] + ([c] if k >= 2 else [])
        noise = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in live]
        grads = [
            _grad(p.detach().double().cpu(), n).float().to(DEVICE)
            for p, n in zip(live, noise, strict=True)
        ]
        for p, g in zip(live, grads, strict=True):
            p.grad = g.clone()
        z.grad = torch.ones_like(z)
        opt.step()
        ref.step([_grad(g.params[0], n) for g, n in zip(ref.groups, noise, strict=True)])
        for p, g in zip(live, grads, strict=True):
            assert torch.equal(p.grad, g)  # L2 decay went to a copy
    assert_fp32_close([a, b, c], [g.params[0] for g in ref.groups])
    assert torch.equal(z.detach().cpu(), z0.float())  # lr 0: never moves, warmup included


def test_layouts_match_the_multi_tensor_path():
    """channels_last (with a contiguous gradient assigned by hand), a parameter whose
    address is not 16-byte aligned (a view), a 0-element one: as the unfused path."""
    gen = torch.Generator().manual_seed(6)
    conv = torch.randn(3, 4, 5, 5, generator=gen).to(memory_format=torch.channels_last)
    odd = torch.randn(41, generator=gen)
    runs = []
    for fused in (True, False):
        ps = [
            torch.nn.Parameter(conv.clone().to(DEVICE, memory_format=torch.channels_last)),
            torch.nn.Parameter(odd.clone().to(DEVICE)[1:]),
            torch.nn.Parameter(torch.zeros(0, 3, device=DEVICE)),
        ]
        opt = optim.Apollo(ps, lr=0.01, warmup=0, rebound="belief", fused=fused)
        g = torch.Generator().manual_seed(7)
        for k in range(3):
            grad = torch.randn(3, 4, 5, 5, generator=g).to(DEVICE)
            ps[0].grad = grad.contiguous() if k == 1 else grad.to(memory_format=torch.channels_last)
            ps[1].grad = torch.randn(40, generator=g).to(DEVICE)
            ps[2].grad = torch.zeros(0, 3, device=DEVICE)
            opt.step()
        runs.append(ps)
    assert runs[0][1].data_ptr() % 16 != 0
    assert rel_err(runs[0], runs[1]) <= 1e-5


def test_state_dict_round_trip_and_unfused_checkpoints():
    cfg = _cfg("constant", "decoupled", 0.1, 0.01, 3)
    gen = torch.Generator().manual_seed(8)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(6)]

    def make(fused):
        ps = [torch.nn.Parameter(x.clone().to(DEVICE)) for x in init]
        return ps, optim.Apollo(ps, fused=fused, **cfg)

    def steps(ps, opt, ks):
        for k in ks:
            for p, g in zip(ps, grads[k], strict=True):
                p.grad = g.to(DEVICE)
            opt.step()

    whole, opt = make(True)
    steps(whole, opt, range(6))
    for saved_fused in (True, False):  # a fused checkpoint, and one with host counters
        ps, opt = make(saved_fused)
        steps(ps, opt, range(3))
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        buf.seek(0)
        sd = torch.load(buf, weights_only=True)
        for g in sd["param_groups"]:
            # load_state_dict restores the saved groups' flags, as torch.optim does: resume
            # the unfused checkpoint (host counters) with the fused path asked for
            g["fused"] = True
        resumed = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        opt2 = optim.Apollo(resumed, fused=True, **cfg)
        opt2.load_state_dict(sd)
        steps(resumed, opt2, range(3, 6))
        if saved_fused:
            for a, b in zip(resumed, whole, strict=True):
                assert torch.equal(a, b)  # deterministic kernels, exact resume
        else:
            assert rel_err(resumed, whole) <= 1e-5
        assert opt2.state[resumed[0]]["step"].device.type == DEVICE.type
