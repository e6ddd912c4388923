"""The image tables as configs: every row of both versions builds; docs are generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import apollo_optim as optim
from classification.train import SCHEMA
from engine import config as cfg
from engine.optimization import build_optimizer, build_schedule
from scripts import gen_hyperparameters

ROOT = Path(__file__).resolve().parents[2]
TABLES = [
    "configs/cifar10.yaml",
    "configs/imagenet.yaml",
    "configs/v1/cifar10.yaml",
    "configs/v1/imagenet.yaml",
]
CASES = [
    (t, r, s)
    for t in TABLES
    for tb in [cfg.load_table(ROOT / t)]
    for r in cfg.row_names(tb)
    for s in cfg.schedule_names(tb)
]


@pytest.mark.parametrize(("table", "row", "schedule"), CASES)
def test_every_row_builds_its_optimizer_and_schedule(table: str, row: str, schedule: str) -> None:
    c = cfg.resolve(
        cfg.load_table(ROOT / table), row, schedule, schema=SCHEMA, flags={"device": "cpu"}
    )
    model = torch.nn.Linear(3, 2)
    opt, spec = build_optimizer(model.parameters(), c["optimizer"])
    assert spec.needs_create_graph == (c["optimizer"]["name"] == "adahessian")
    sched = build_schedule(opt, c)
    assert isinstance(sched, optim.Schedule)
    # never two warmups: the schedule's warmup is 0 in every image table
    assert c["schedule"]["warmup"] == 0
    for group in opt.param_groups:  # every table value reached the constructor
        for key, value in c["optimizer"].items():
            if key in group and key != "lr":
                assert group[key] == (tuple(value) if isinstance(value, list) else value), key


def test_tables_have_the_papers_rows_and_seeds() -> None:
    seeds = [1, 101, 8191, 65537, 131071, 524287, 6700417]
    current = [
        "SGD",
        "Adam*",
        "RAdam*",
        "Adam",
        "RAdam",
        "AdaBelief",
        "AdaHessian",
        "Apollo",
        "ApolloW",
    ]
    v1 = ["SGD", "Adam", "RAdam", "Adam-adj", "RAdam-adj", "Apollo"]
    for table, rows in zip(TABLES, [current, current, v1, v1], strict=True):
        t = cfg.load_table(ROOT / table)
        assert cfg.row_names(t) == rows and t["seeds"] == seeds
        assert cfg.schedule_names(t) == ["milestone", "cosine"]


def test_hyperparameters_doc_is_not_stale() -> None:
    doc = ROOT / gen_hyperparameters.OUTPUT
    assert doc.read_text(encoding="utf-8") == gen_hyperparameters.render(), (
        "docs/hyperparameters.md is stale: run python -m scripts.gen_hyperparameters"
    )
