"""engine.optimization: the run config's optimizer and schedule sections -> optim objects."""

from __future__ import annotations

import warnings

import torch

import apollo_optim as optim
from engine.optimization import build_optimizer


def test_paper_loops_silence_the_warmup_vs_scheduler_warning():
    """The paper's loops step an epoch schedule inside Apollo's own warmup on purpose (the
    authors' rule); a plain user of optim.Apollo still gets the warning."""
    p = torch.nn.Parameter(torch.ones(3))

    def run(make):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = make()
            for lr in (0.01, 0.005):  # a schedule moving the lr during the warmup
                opt.param_groups[0]["lr"] = lr
                p.grad = torch.ones(3)
                opt.step()
        return [w for w in caught if issubclass(w.category, optim.WarmupLRWarning)]

    assert run(lambda: optim.Apollo([p], lr=0.01, warmup=10))
    section = {"name": "apollo", "lr": 0.01, "warmup": 10}
    assert not run(lambda: build_optimizer([p], section)[0])
