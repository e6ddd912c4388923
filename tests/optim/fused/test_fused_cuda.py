"""What only a GPU can show: no host-device synchronisation inside ``step()`` (with the
fused path as ``optim.create``'s default, which the training loops call) and CUDA-graph
capture. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

import apollo_optim as optim

from .common import needs_cuda

pytestmark = [
    needs_cuda,
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 10),
    ).cuda()


def _loss(model):
    x = torch.randn(4, 3, 8, 8, device="cuda")
    return model(x).square().mean()


@pytest.mark.parametrize("name", ["apollo", "apollow", "adabelief", "adahessian"])
def test_default_step_is_fused_and_never_waits_for_the_gpu(name):
    model = _model()
    opt = optim.create(name, model.parameters(), lr=0.01)  # fused=None: the default
    needs_graph = optim.get(name).needs_create_graph
    for _ in range(3):  # the first step builds state and tables: it must not sync either
        opt.zero_grad(set_to_none=True)
        _loss(model).backward(create_graph=needs_graph)
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    step = opt.state[next(model.parameters())]["step"]
    if name != "adahessian":  # AdaHessian decides its probe steps on the host
        assert step.device.type == "cuda", "the fused path keeps its counters on the device"
    assert step.item() == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["apollo", "adabelief"])
def test_a_captured_cuda_graph_replays_the_step(name):
    """Counters and a tensor lr on the device: a captured step equals eager steps, and an
    LR scheduler writing into the lr tensor changes the replays."""
    params = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in [(64, 32), (32,), (7,)]]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    kwargs = {"warmup": 0} if name == "apollo" else {}  # so that the lr change shows
    opts = [optim.create(name, ps, lr=0.01, **kwargs) for ps in (params, twin)]
    lrs = [torch.tensor(0.01, device="cuda") for _ in opts]
    for opt, lr in zip(opts, lrs, strict=True):
        opt.param_groups[0]["lr"] = lr  # read on the device by the fused kernels
    grads = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g  # static gradients: the graph reads these addresses
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up: state, tables and Triton compilation
            for g in grads:
                g.normal_()
            opts[0].step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opts[0].step()
    # the twin catches up eagerly on the same gradients: 2 warm-up steps were random
    for p, q in zip(params, twin, strict=True):
        q.data.copy_(p.data)
    for k in opts[0].state[params[0]]:
        for p, q in zip(params, twin, strict=True):
            opts[1].state[q][k] = opts[0].state[p][k].clone()
    for k in range(4):
        if k == 2:
            for lr in lrs:
                lr.fill_(0.005)  # what a scheduler with a tensor lr does
        for g, q in zip(grads, twin, strict=True):
            g.normal_()
            q.grad = g.clone()
        graph.replay()
        opts[1].step()
    torch.cuda.synchronize()
    for p, q in zip(params, twin, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert opts[0].state[params[0]]["step"].item() == 2 + 4  # capturing runs nothing
