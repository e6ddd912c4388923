"""engine.optimization: the run config's optimizer and schedule sections -> optim objects, and
build_training (seeded model, optimizer, schedule and scaler, before a run directory opens)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import apollo_optim as optim
from engine import distributed
from engine import run as runs
from engine.optimization import build_optimizer, build_training

CPU = distributed.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _config(**extra) -> dict:
    return {
        "config": "toy.yaml",
        "seed": 3,
        "epochs": 1,
        "max_updates": None,
        "amp": "none",
        "optimizer": {"name": "apollo", "lr": 0.01, "warmup": 10},
        "schedule": {"name": "cosine", "kind": "cosine", "unit": "epoch"},
        **extra,
    }


def _warmup_warnings(make) -> list:
    p = torch.nn.Parameter(torch.ones(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", append=True)  # after any filter already in force
        opt = make([p])
        for lr in (0.01, 0.005):  # a schedule moving the lr during the warmup
            opt.param_groups[0]["lr"] = lr
            p.grad = torch.ones(3)
            opt.step()
    return [w for w in caught if issubclass(w.category, optim.WarmupLRWarning)]


def test_a_run_silences_the_warmup_vs_scheduler_warning_only_while_it_trains(tmp_path: Path):
    """The paper's loops step an epoch schedule inside Apollo's own warmup on purpose (the
    authors' rule): quiet inside a run; building an optimizer changes no warning filter, and
    a plain user of optim.Apollo (or this process after the run) still gets the warning."""
    section = {"name": "apollo", "lr": 0.01, "warmup": 10}
    filters = list(warnings.filters)
    assert _warmup_warnings(lambda ps: build_optimizer(ps, section)[0])
    assert warnings.filters == filters
    config = _config(out_dir=str(tmp_path / "run"))
    with runs.start(config, CPU, metric="loss", mode="min"):
        assert not _warmup_warnings(lambda ps: build_optimizer(ps, section)[0])
    assert _warmup_warnings(lambda ps: optim.Apollo(ps, lr=0.01, warmup=10))
    assert warnings.filters == filters


def test_build_training_seeds_the_weights_then_each_rank() -> None:
    """Initial weights depend on the seed only (every rank builds the same model); the draws
    after it (dropout, augmentation) on the seed and the rank."""

    def linear() -> torch.nn.Module:
        return torch.nn.Linear(4, 2)

    built, after = [], []
    for rank in (0, 1, 0):
        built.append(build_training(_config(), rank, CPU.device, linear))
        after.append(torch.rand(3))
    assert torch.equal(built[0].model.weight, built[1].model.weight)
    assert torch.equal(built[0].model.weight, built[2].model.weight)
    assert not torch.equal(after[0], after[1]) and torch.equal(after[0], after[2])
    t = built[0]
    assert isinstance(t.optimizer, optim.Apollo) and t.spec.name == "apollo"
    assert t.schedule.optimizer is t.optimizer and t.scaler is None
    assert build_training(_config(amp="fp16"), 0, CPU.device, linear).scaler is not None


def test_build_training_names_the_config_in_a_model_optimizer_or_schedule_error() -> None:
    def bad():
        return torch.nn.Dropout(1.5)

    with pytest.raises(ValueError, match=r"^toy\.yaml: model: dropout probability"):
        build_training(_config(), 0, CPU.device, bad)
    with pytest.raises(ValueError, match=r"^toy\.yaml: optimizer 'apollo': Apollo: invalid lr=-1"):
        config = _config(optimizer={"name": "apollo", "lr": -1.0})
        build_training(config, 0, CPU.device, lambda: torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"^toy\.yaml: schedule: Schedule: invalid warmup=-5"):
        config = _config(schedule={"name": "c", "kind": "cosine", "unit": "epoch", "warmup": -5})
        build_training(config, 0, CPU.device, lambda: torch.nn.Linear(2, 2))
