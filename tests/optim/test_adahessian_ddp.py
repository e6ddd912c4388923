"""AdaHessian under DDP with two gloo processes on CPU.

DDP cannot run the ``create_graph`` backward (pytorch#63812), so each rank runs it under
``ddp.no_sync()`` and AdaHessian averages the gradient and the Hessian estimate itself, with
rank 0's Rademacher probe. The ranks get different seeds and different data: they must end
with identical parameters, equal to one process minimising the mean of the two shard losses
with rank 0's seed. A parameter that only rank 0 uses gets zeros on rank 1, as DDP
with find_unused_parameters would give it.
"""

from __future__ import annotations

import pytest
import torch

from apollo_optim.adahessian import AdaHessian
from tests.optim.two_ranks import spawn

pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")

STEPS = 4
KWARGS = dict(lr=0.05, weight_decay=0.01, update_each=2, average_conv_kernel=True)


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(8, 1)
        )
        self.extra = torch.nn.Parameter(torch.tensor([0.3, -0.4]))  # used by shard 0 only
        self.scale = torch.nn.Parameter(torch.tensor(1.5))  # stays float32: mixed dtypes

    def forward(self, x: torch.Tensor, shard: int) -> torch.Tensor:
        out = self.body(x) * self.scale.double()
        return out * (self.extra**2).sum() if shard == 0 else out


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = _Model().double()
    model.scale.data = model.scale.data.float()
    return model


def _shard(rank: int) -> torch.Tensor:
    return torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(100 + rank)).double()


def _loss(model, shard: int) -> torch.Tensor:
    # not separable, so the ranks match one process only if they share the probe
    return model(_shard(shard), shard).pow(2).mean()


def _worker(rank: int, out_dir: str) -> None:
    ddp = torch.nn.parallel.DistributedDataParallel(_model(), find_unused_parameters=True)
    opt = AdaHessian(ddp.parameters(), seed=1 + rank, **KWARGS)  # seeds differ on purpose
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        with ddp.no_sync():
            _loss(ddp, rank).backward(create_graph=True)
        assert (ddp.module.extra.grad is None) == (rank == 1)
        local = [None if p.grad is None else p.grad.detach().clone() for p in ddp.parameters()]
        opt.step()
        for p, g in zip(ddp.parameters(), local, strict=True):  # p.grad stays local
            assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    torch.save([p.detach() for p in ddp.parameters()], f"{out_dir}/rank{rank}.pt")


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    spawn(_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for a, b in zip(*ranks, strict=True):
        assert torch.equal(a, b)

    model = _model()
    opt = AdaHessian(model.parameters(), seed=1, **KWARGS)  # rank 0's probe
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        # mean of the shard losses: gradient and Hz are the ranks' averages
        (0.5 * (_loss(model, 0) + _loss(model, 1))).backward(create_graph=True)
        opt.step()
    start = _model()
    for p, r, s in zip(model.parameters(), ranks[0], start.parameters(), strict=True):
        assert not torch.equal(r, s.detach())
        # halving is exact, so the ranks' (a + b) / 2 is one process's a/2 + b/2
        assert torch.equal(r, p.detach())
