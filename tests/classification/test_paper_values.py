"""Every image-table row's hyperparameters against the paper's tables, typed in from
the paper and the authors' READMEs, not read from the configs under test."""

from __future__ import annotations

from pathlib import Path

import pytest

from classification.train import SCHEMA
from engine import config as cfg

ROOT = Path(__file__).resolve().parents[2]
L2, DEC = "L2", "decoupled"

# row: (registry name, lr, weight decay, decay type, eps, warmup, init_lr, cosine last_lr)
CIFAR10 = {
    "SGD": ("sgd", 0.1, 5e-4, L2, None, 0, None, 1e-4),
    "Adam*": ("adam", 1e-3, 5e-4, DEC, 1e-8, 0, None, 1e-6),
    "RAdam*": ("radam", 1e-3, 5e-4, DEC, 1e-8, 0, None, 1e-6),
    "Adam": ("adam", 1e-3, 2.5e-1, DEC, 1e-8, 0, None, 1e-6),
    "RAdam": ("radam", 1e-3, 2.5e-1, DEC, 1e-8, 0, None, 1e-6),
    "AdaBelief": ("adabelief", 1e-3, 2.5e-1, DEC, 1e-8, 0, None, 1e-6),
    "AdaHessian": ("adahessian", 0.15, 1e-3, DEC, 1e-2, 500, 1e-3, None),
    "Apollo": ("apollo", 0.01, 2.5e-4, L2, 1e-4, 500, 1e-5, 1e-5),
    "ApolloW": ("apollow", 0.01, 2.5e-2, DEC, 1e-4, 500, 1e-5, 1e-5),
}
IMAGENET_WD = {
    "SGD": 1e-4,
    "Adam*": 1e-4,
    "RAdam*": 1e-4,
    "Adam": 1e-1,
    "RAdam": 1e-1,
    "AdaBelief": 1e-1,
    "AdaHessian": 1e-3,
    "Apollo": 1e-4,
    "ApolloW": 1e-2,
}
IMAGENET = {row: (*v[:2], IMAGENET_WD[row], *v[3:]) for row, v in CIFAR10.items()}


def v1(wd: float, wd_adj: float) -> dict:
    """The first version: Apollo with sigma 1, lr 0.5, warmup 100 from 0.01, SGD's decay (L2)."""
    return {
        "SGD": ("sgd", 0.1, wd, L2, None, 0, None, 1e-4),
        "Adam": ("adam", 1e-3, wd, DEC, 1e-8, 0, None, 1e-6),
        "RAdam": ("radam", 1e-3, wd, DEC, 1e-8, 0, None, 1e-6),
        "Adam-adj": ("adam", 1e-3, wd_adj, DEC, 1e-8, 0, None, 1e-6),
        "RAdam-adj": ("radam", 1e-3, wd_adj, DEC, 1e-8, 0, None, 1e-6),
        "Apollo": ("apollo", 0.5, wd, L2, 1e-4, 100, 0.01, 1e-5),
    }


# table: (rows, sigma of Apollo, epochs and milestones per schedule, batch size)
TABLES = {
    "configs/cifar10.yaml": (CIFAR10, 0.01, {"milestone": 164, "cosine": 200}, [80, 120], 128),
    "configs/imagenet.yaml": (IMAGENET, 0.01, {"milestone": 120, "cosine": 120}, [40, 80], 256),
    "configs/v1/cifar10.yaml": (
        v1(5e-4, 2.5e-1),
        1.0,
        {"milestone": 164, "cosine": 200},
        [80, 120],
        128,
    ),
    "configs/v1/imagenet.yaml": (
        v1(2e-4, 1e-1),
        1.0,
        {"milestone": 120, "cosine": 120},
        [40, 80],
        256,
    ),
}
CASES = [(t, row, s) for t, spec in TABLES.items() for row in spec[0] for s in spec[2]]


@pytest.mark.parametrize(("table", "row", "schedule"), CASES)
def test_row_matches_the_paper(table: str, row: str, schedule: str) -> None:
    rows, sigma, epochs, milestones, batch = TABLES[table]
    name, lr, wd, wd_type, eps, warmup, init_lr, last_lr = rows[row]
    c = cfg.resolve(
        cfg.load_table(ROOT / table), row, schedule, schema=SCHEMA, flags={"device": "cpu"}
    )
    o = c["optimizer"]
    assert (o["name"], o["lr"], o["weight_decay"]) == (name, lr, wd)
    assert o.get("weight_decay_type", DEC) == wd_type  # AdaHessian's decay is always decoupled
    assert o.get("eps") == eps
    assert (o.get("warmup", 0), o.get("init_lr")) == (warmup, init_lr)
    assert c["schedule"]["warmup"] == 0  # never a second warmup
    if name == "sgd":
        assert (o["momentum"], o["nesterov"]) == (0.9, True)
    if name in ("adam", "radam", "adabelief", "adahessian"):
        assert tuple(o["betas"]) == (0.9, 0.999)
    if name in ("apollo", "apollow"):
        assert (o["beta"], o["sigma"], o["rebound"]) == (0.9, sigma, "constant")
    assert (c["epochs"], c["batch_size"], c["eval_batch_size"]) == (epochs[schedule], batch, 1000)
    if schedule == "milestone":
        assert (c["schedule"]["milestones"], c["schedule"]["decay_rate"]) == (milestones, 0.1)
    elif last_lr is not None:  # AdaHessian's cosine floor is not given by the paper
        assert c["schedule"]["last_lr"] == last_lr
