"""engine.config: precedence, overrides, types, and one-line errors naming what exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import config as cfg

SCHEMA = {"model": str, "batch_size": int, "augmentation": dict}

TABLE = """\
# python -m toy.train --config toy.yaml --row A --schedule s
table: toy
task: toy
paper_version: current
seeds: [7, 8]
defaults:
  model: small
  batch_size: 32
  workers: 0
  amp: none
  device: cpu
  augmentation: {crop: 32, mean: [0.5, 0.5]}
  schedule: {unit: epoch, warmup: 0}
schedules:
  s:
    epochs: 10
    schedule: {kind: milestone, milestones: [5], decay_rate: 0.1}
  c:
    epochs: 20
    schedule: {kind: cosine}
rows:
  A:
    optimizer: {name: sgd, lr: 0.1, weight_decay: 5.0e-4}
    schedule: {last_lr: 1.0e-4}
  B:
    optimizer: {name: apollo, lr: 0.01, warmup: 500, init_lr: 1.0e-5}
    batch_size: 64
"""


@pytest.fixture
def table(tmp_path: Path) -> dict:
    path = tmp_path / "toy.yaml"
    path.write_text(TABLE)
    return cfg.load_table(path)


def resolve(table: dict, row: str = "A", schedule: str = "s", *overrides: str, **flags) -> dict:
    return cfg.resolve(table, row, schedule, schema=SCHEMA, flags=flags, overrides=overrides)


def test_precedence_defaults_schedule_row_flags_overrides(table: dict) -> None:
    c = resolve(table, "B", "c")
    assert (c["batch_size"], c["epochs"], c["seed"]) == (64, 20, 7)  # row wins; first seed
    assert c["schedule"] == {"name": "c", "kind": "cosine", "unit": "epoch", "warmup": 0}
    assert list(c)[:5] == ["config", "table", "task", "paper_version", "row"]
    c = resolve(table, "B", "c", "batch_size=16", "optimizer.lr=0.02", epochs=3, seed=101)
    assert (c["batch_size"], c["epochs"], c["seed"], c["optimizer"]["lr"]) == (16, 3, 101, 0.02)


def test_override_parsing_and_coercion(table: dict) -> None:
    c = resolve(
        table,
        "A",
        "s",
        "optimizer.weight_decay=1e-4",
        "schedule.milestones=[2, 4]",
        "optimizer.lr=1",
        "augmentation.mean=[0.1, 0.2]",
        "max_steps_per_epoch=null",
        "optimizer.nesterov=true",
    )
    assert c["optimizer"]["weight_decay"] == 1e-4  # PyYAML alone would read a string
    assert c["optimizer"]["lr"] == 1.0 and isinstance(c["optimizer"]["lr"], float)
    assert c["schedule"]["milestones"] == [2, 4]
    assert c["augmentation"]["mean"] == [0.1, 0.2]
    assert c["optimizer"]["nesterov"] is True  # a new optimizer argument is passed through
    assert c["max_steps_per_epoch"] is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nonsense=1", "unknown key 'nonsense'"),
        ("batch_size=abc", "batch_size must be int"),
        ("batch_size=0.5", "batch_size must be int"),
        ("augmentation.crop=big", "augmentation.crop must be int"),
        ("augmentation.size=3", "unknown key 'augmentation.size'"),
        ("schedule.foo=3", "unknown key 'schedule.foo'"),
        ("optimizer=3", "is a section"),
        ("noequals", "expected key=value"),
        ("amp=fp8", "amp must be one of"),
    ],
)
def test_bad_overrides_are_one_line_errors(table: dict, override: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError, match=message) as exc:
        resolve(table, "A", "s", override)
    assert "\n" not in str(exc.value)


def test_unknown_row_and_schedule_list_what_exists(table: dict) -> None:
    with pytest.raises(cfg.ConfigError, match=r"unknown row 'C'; rows: A, B"):
        resolve(table, "C")
    with pytest.raises(cfg.ConfigError, match=r"unknown schedule 'x'; schedules: s, c"):
        resolve(table, "A", "x")


def test_two_warmups_are_rejected(table: dict) -> None:
    with pytest.raises(cfg.ConfigError, match=r"both schedule.warmup and optimizer.warmup"):
        resolve(table, "B", "s", "schedule.warmup=100")


def test_table_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TABLE.replace("5.0e-4", "5e-4"))
    with pytest.raises(cfg.ConfigError, match=r"bad.yaml: rows.A.optimizer.weight_decay .*1.0e-4"):
        cfg.load_table(bad)
    bad.write_text(TABLE.replace("  model: small", "  modle: small"))
    with pytest.raises(cfg.ConfigError, match=r"unknown key 'defaults.modle'"):
        resolve(cfg.load_table(bad))
    bad.write_text("rows: [")
    with pytest.raises(cfg.ConfigError, match=r"bad.yaml: not valid YAML"):
        cfg.load_table(bad)
    with pytest.raises(cfg.ConfigError, match=r"cannot read config .*missing.yaml"):
        cfg.load_table(tmp_path / "missing.yaml")


def test_schedule_kwargs_cosine_length_follows_steps() -> None:
    section = {"name": "c", "kind": "cosine", "unit": "epoch", "last_lr": 1e-5}
    assert cfg.schedule_kwargs(section, 200) == {"last_lr": 1e-5, "total_steps": 200}
