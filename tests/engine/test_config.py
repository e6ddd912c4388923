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
  augmentation: {crop: 32, mean: [0.5, 0.5], dropout: 0.1}
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
        ("workers=-2", r"workers must be >= 0, got -2"),
        ("seed=-1", r"seed must be >= 0, got -1"),
        ("batch_size=0", r"batch_size must be >= 1, got 0"),
        ("augmentation.mean=[0.5, -0.5]", r"augmentation.mean must be >= 0, got \[0.5, -0.5\]"),
        ("augmentation.dropout=1.0", r"augmentation.dropout must be in \[0, 1\), got 1.0"),
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


def test_floats_read_as_yaml_1_2_reads_them(tmp_path: Path) -> None:
    """PyYAML alone reads 1e-4 as the string '1e-4'; the tables read it as a number."""
    path = tmp_path / "toy.yaml"
    path.write_text(TABLE.replace("5.0e-4", "5e-4").replace("1.0e-5", "1E-5"))
    rows = cfg.load_table(path)["rows"]
    assert rows["A"]["optimizer"]["weight_decay"] == 5e-4 and rows["B"]["batch_size"] == 64
    assert rows["B"]["optimizer"]["init_lr"] == 1e-5 and isinstance(
        rows["A"]["optimizer"]["lr"], float
    )
    assert [cfg.parse_value(x) for x in ("1e-4", "-2", "1", "[1e-3, 2]", "true", "x1e")] == [
        1e-4,
        -2,
        1,
        [1e-3, 2],
        True,
        "x1e",
    ]
    assert isinstance(cfg.parse_value("1"), int)


def test_table_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
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


def test_a_table_replaces_and_renames_the_rows_it_extends(tmp_path: Path) -> None:
    """``rows: !replace`` gives this table's rows in its order; ``from`` starts a row from a
    base row (renamed or changed); without ``!replace`` rows merge as before."""
    (tmp_path / "toy.yaml").write_text(TABLE)
    (tmp_path / "v1.yaml").write_text(
        "extends: toy.yaml\npaper_version: v1\n"
        "rows: !replace\n"
        "  B-old: {from: B, optimizer: {lr: 0.5}}\n"
        "  A: {from: A, batch_size: 8}\n"
    )
    v1 = cfg.load_table(tmp_path / "v1.yaml")
    assert cfg.row_names(v1) == ["B-old", "A"] and v1["paper_version"] == "v1"
    assert v1["rows"]["B-old"]["optimizer"] == {
        "name": "apollo",
        "lr": 0.5,
        "warmup": 500,
        "init_lr": 1e-5,
    }
    assert v1["rows"]["A"]["batch_size"] == 8 and v1["seeds"] == [7, 8]
    assert type(v1["rows"]) is dict  # a plain mapping again once merged
    c = resolve(v1, "B-old", "c")
    assert c["batch_size"] == 64 and c["optimizer"]["lr"] == 0.5 and c["paper_version"] == "v1"
    (tmp_path / "bad.yaml").write_text("extends: toy.yaml\nrows: {C: {from: Z}}\n")
    with pytest.raises(
        cfg.ConfigError, match=r"rows.C.from: the base table has no row 'Z'; rows: A, B"
    ):
        cfg.load_table(tmp_path / "bad.yaml")
    (tmp_path / "alone.yaml").write_text(TABLE.replace("  B:\n", "  B:\n    from: A\n"))
    with pytest.raises(
        cfg.ConfigError, match=r"rows.B.from names a row of the base: it needs extends"
    ):
        cfg.load_table(tmp_path / "alone.yaml")


def test_default_seeds_is_a_count_of_the_tables_seeds(tmp_path: Path) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(TABLE.replace("seeds: [7, 8]", "seeds: [7, 8]\ndefault_seeds: 1"))
    assert cfg.load_table(path)["default_seeds"] == 1
    path.write_text(TABLE.replace("seeds: [7, 8]", "seeds: [7, 8]\ndefault_seeds: 3"))
    with pytest.raises(cfg.ConfigError, match=r"'default_seeds' must be a count .* 1\.\.2, got 3"):
        cfg.load_table(path)


def _apollo_like(
    params,
    lr: float,
    beta: float = 0.9,
    warmup: int = 500,
    init_lr=None,
    betas: tuple[float, float] = (0.9, 0.99),
    rebound: str = "constant",
    foreach: bool | None = None,
):
    """A stand-in factory with the annotations of the registry's optimizers."""


def _torch_like(params, lr: float = 0.1, nesterov: bool = True, **kwargs):
    """A factory that passes the rest to a torch.optim class."""


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"lr": 0.1, "nope": 1},
            r"unknown key 'optimizer.nope' for optimizer 'toy'; its arguments: lr, beta, warmup",
        ),
        ({"lr": "fast"}, r"optimizer.lr must be float for optimizer 'toy', got 'fast'"),
        ({"lr": 0.1, "warmup": 5.5}, r"optimizer.warmup must be int"),
        ({"lr": 0.1, "warmup": True}, r"optimizer.warmup must be int"),
        ({"lr": 0.1, "rebound": 3}, r"optimizer.rebound must be str"),
        ({"lr": 0.1, "foreach": "yes"}, r"optimizer.foreach must be bool or None"),
        ({"lr": 0.1, "betas": 0.9}, r"optimizer.betas must be tuple"),
        ({"beta": 0.5}, r"optimizer 'toy' needs optimizer.lr"),
    ],
)
def test_optimizer_arguments_are_held_to_the_signature(section: dict, message: str) -> None:
    with pytest.raises(cfg.ConfigError, match=message) as exc:
        cfg.check_optimizer({"name": "toy", **section}, _apollo_like, "t.yaml")
    assert str(exc.value).startswith("t.yaml: ") and "\n" not in str(exc.value)


def test_optimizer_arguments_of_the_right_type_pass() -> None:
    section = {"name": "toy", "lr": 1, "betas": [0.9, 0.9], "init_lr": 1e-5, "foreach": None}
    cfg.check_optimizer(section, _apollo_like, "t.yaml")
    assert section["lr"] == 1.0 and isinstance(section["lr"], float)  # int where float is
    passed_on = {"name": "toy", "lr": 0.1, "dampening": 0.1}  # **kwargs: torch.optim checks
    cfg.check_optimizer(passed_on, _torch_like, "t.yaml")
    with pytest.raises(cfg.ConfigError, match=r"optimizer.nesterov must be bool"):
        cfg.check_optimizer({"name": "toy", "nesterov": "no"}, _torch_like, "t.yaml")


def test_every_table_row_fits_its_optimizers_signature() -> None:
    import apollo_optim as optim

    root = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted(root.rglob("*.yaml")):
        for name, row in cfg.load_table(path)["rows"].items():
            section = dict(row["optimizer"])
            cfg.check_optimizer(section, optim.get(section["name"]).factory, f"{path}:{name}")


def test_the_first_paper_versions_tables_extend_the_current_ones() -> None:
    """configs/v1/T.yaml restates only what the first version changed: it extends configs/T.yaml."""
    root = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted((root / "v1").glob("*.yaml")):
        raw = cfg.yaml.load(path.read_text(encoding="utf-8"), cfg.Loader)
        assert raw["extends"] == f"../{path.name}", path
        assert "defaults" not in raw and "schedules" not in raw, path
