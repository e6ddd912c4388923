"""The main job end to end (shortened), its config against the CIFAR-10 table, the digits task."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from classification.digits import TEST_SIZE, DigitsCNN, build_datasets
from classification.train import SCHEMA
from engine import config as cfg
from tests.scripts.conftest import ENV, REPO, run_quickstart


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ")]


@pytest.mark.slow
def test_quickstart_trains_reports_and_records_provenance(short_quickstart) -> None:
    out, stdout = short_quickstart
    assert "[1/2]" in stdout and "[2/2]" in stdout  # one progress line per run
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip(" |").split("|")]
        for line in _table_lines(stdout)
    }
    assert list(rows) == ["Method", "SGD", "Apollo"]  # the CIFAR-10 table's order
    assert rows["Method"][1:] == ["cosine", "cosine: final train loss", "cosine: seeds"]
    for row in ("SGD", "Apollo"):
        acc, loss, seeds = rows[row][1:]
        assert acc.endswith(" (-)")  # one seed: no std
        assert 20.0 < float(acc.split()[0]) <= 100.0  # well above chance (10%): it trained
        assert float(loss.split()[0]) > 0 and seeds == "1"
    report = out / "quickstart" / "report"
    for name in ("table.md", "table.tex", "table.csv"):
        assert (report / name).stat().st_size > 0
    assert (report / "curves_quickstart_current_cosine.png").read_bytes()[:4] == b"\x89PNG"

    run = out / "quickstart" / "current" / "Apollo" / "cosine" / "seed1"
    config = json.loads((run / "config.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert results["finished"] and results["epochs_completed"] == 2
    assert config["seed"] == 1 and config["model"] == "digits_cnn" and config["device"] == "cpu"
    assert config["optimizer"]["name"] == "apollo" and config["optimizer"]["warmup"] == 58
    prov = config["provenance"]
    assert len(prov["git"]["commit"]) == 40 and prov["versions"]["torch"] == torch.__version__
    assert prov["hardware"]["device"] == "cpu" and prov["hardware"]["cpu_count"] >= 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_report_turns_the_runs_into_the_same_table(short_quickstart, tmp_path: Path) -> None:
    out, stdout = short_quickstart
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.report",
            str(out / "quickstart"),
            "--out",
            str(tmp_path),
            "--no-plots",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert _table_lines(proc.stdout) == _table_lines(stdout)
    assert (tmp_path / "table.md").read_text() == (
        out / "quickstart" / "report" / "table.md"
    ).read_text()


@pytest.mark.slow
def test_a_quickstart_run_equals_the_training_command_alone(short_quickstart, tmp_path) -> None:
    """The workers run the real entry point: the same numbers as the command in its own process,
    which (the digits cached by the quickstart's first runs) imports neither scikit-learn and
    SciPy nor torchvision: ~3 s of start-up per run."""
    out, _ = short_quickstart
    cmd = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "classification.train",
        "--config",
        "configs/quickstart.yaml",
        "--row",
        "Apollo",
        "--schedule",
        "cosine",
        "--seed",
        "1",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path / "alone"),
    ]
    env = {**ENV, "OMP_NUM_THREADS": "1"}  # the quickstart's workers use one thread
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=300
    )
    timed = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in timed}
    assert "torch" in imported and not imported & {"sklearn", "scipy", "torchvision"}

    def epochs(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(line).items() if not k.endswith(("_s", "per_s"))}
            for line in lines
        ]

    ours = out / "quickstart" / "current" / "Apollo" / "cosine" / "seed1"
    assert epochs(tmp_path / "alone") == epochs(ours)


def _resolved(path: str, row: str) -> dict:
    table = cfg.load_table(REPO / path)
    return cfg.resolve(table, row, "cosine", schema=SCHEMA, flags={"device": "cpu"})


def test_rows_and_hyperparameters_come_from_the_cifar10_table() -> None:
    quick, cifar = (
        cfg.load_table(REPO / "configs/quickstart.yaml"),
        cfg.load_table(REPO / "configs/cifar10.yaml"),
    )
    assert (
        cfg.row_names(quick)
        == cfg.row_names(cifar)
        == [
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
    )
    assert cfg.schedule_names(quick) == ["cosine"] and quick["seeds"] == cifar["seeds"]
    for row in cfg.row_names(cifar):
        ours = _resolved("configs/quickstart.yaml", row)
        paper = _resolved("configs/cifar10.yaml", row)
        assert ours["table"] == "quickstart" and ours["epochs"] == 15
        assert ours["dataset"] == "digits" and ours["data_dir"] is None
        expected = dict(paper["optimizer"])
        if "warmup" in expected:  # the only change: warmup scaled to the short run (58 updates)
            assert expected["warmup"] == 500
            expected["warmup"] = 58
        assert ours["optimizer"] == expected, row
        assert ours["schedule"] == {**paper["schedule"]}, row  # cosine to the row's last_lr


def test_digits_split_and_model() -> None:
    train, test = build_datasets({"augmentation": {"style": "none"}, "num_classes": 10})
    assert (len(train), len(test)) == (1797 - TEST_SIZE, TEST_SIZE) == (1437, 360)
    x = train.tensors[0]
    assert x.shape == (1437, 1, 8, 8) and abs(float(x.mean())) < 1e-5
    assert float(x.std()) == pytest.approx(1.0, abs=1e-3)
    assert torch.bincount(test.tensors[1]).tolist() == [35, 36, 35, 37, 37, 37, 37, 36, 33, 37]
    model = DigitsCNN()
    assert sum(p.numel() for p in model.parameters()) == 14_458
    assert model(x[:4]).shape == (4, 10)
    with pytest.raises(ValueError, match=r"augmentation\.style=none"):
        build_datasets({"augmentation": {"style": "cifar"}, "num_classes": 10})


def test_extends_merges_deletes_and_reports_problems(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "extends: configs/quickstart.yaml\n"
        "rows:\n  Mine: {optimizer: {name: sgd, lr: 0.5}, schedule: {last_lr: 1.0e-4}}\n"
        "  SGD: {optimizer: {nesterov: null}}\n"
    )
    table = cfg.load_table(tmp_path / "mine.yaml")
    assert cfg.row_names(table)[-2:] == ["ApolloW", "Mine"] and table["table"] == "quickstart"
    assert "nesterov" not in table["rows"]["SGD"]["optimizer"]
    assert table["rows"]["SGD"]["optimizer"]["lr"] == 0.1  # the rest of the row is inherited
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(cfg.ConfigError, match="loops back"):
        cfg.load_table(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(cfg.ConfigError, match="no such file"):
        cfg.load_table(tmp_path / "c.yaml")


@pytest.mark.slow
def test_a_run_of_another_length_is_refused_not_mixed(short_quickstart) -> None:
    """The 2-epoch quickstart, then a 3-epoch one in the same out-dir: the first run stops the
    table with one line naming the directory; nothing is trained, reported or overwritten."""
    out, _ = short_quickstart
    run = out / "quickstart" / "current" / "SGD" / "cosine" / "seed1"
    before = (run / "results.json").read_bytes()
    proc = run_quickstart(out, "--seeds", "1", "--rows", "SGD", "--epochs", "3")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: SGD / cosine / seed 1: ")
    assert "epochs=2 whose cosine schedule is sized by it; epochs=3 would not" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr and "| SGD" not in proc.stdout
    assert (run / "results.json").read_bytes() == before


def test_bad_overrides_stop_the_table_with_one_line(tmp_path: Path, capsys) -> None:
    from engine import cli
    from scripts import run_table

    for extra, message in (
        (["nope=1"], "unknown key 'nope'"),
        (["optimizer.name=nadam"], "unknown optimizer 'nadam'"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(
                run_table.main,
                [
                    "--config",
                    str(REPO / "configs/quickstart.yaml"),
                    "--out-root",
                    str(tmp_path),
                    "--",
                    *extra,
                ],
            )
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not list(tmp_path.iterdir())
