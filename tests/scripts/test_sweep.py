"""scripts.sweep and scripts/*.sh: every row x schedule x seed, numbers only from the configs;
configs resolved before any run; the first failure stops the sweep."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from engine import config as cfg
from scripts import sweep
from tests.scripts.conftest import ENV

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("table", ["cifar10", "imagenet"])
@pytest.mark.parametrize("version", ["current", "v1"])
def test_dry_run_lists_the_whole_table(table: str, version: str, capsys) -> None:
    t = cfg.load_table(sweep.table_path(table, version))
    sweep.main(
        ["--table", table, "--version", version, "--dry-run", "--gpus", "8", "--", "amp=bf16"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(t["rows"]) * len(t["schedules"]) * len(t["seeds"])
    assert all(
        x.startswith("torchrun --standalone --nproc_per_node=8 -m classification.train")
        and x.endswith("amp=bf16")
        for x in lines
    )
    assert len(set(lines)) == len(lines)


def test_subset_seeds_and_unknown_names(capsys) -> None:
    config = str(ROOT / "configs/cifar10.yaml")
    sweep.main(
        [
            "--config",
            config,
            "--rows",
            "Adam*,Apollo",
            "--schedules",
            "cosine",
            "--seed-list",
            "1,101",
            "--gpus",
            "0",
            "--dry-run",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "--row 'Adam*'" in lines[0] and "--device cpu" in lines[0]
    assert "--out-dir runs/cifar10/current/Adam-star/cosine/seed1 --device cpu" in lines[0]
    sweep.main(["--config", config, "--rows", "SGD", "--seeds", "2", "--dry-run"])
    assert [re.search(r"--seed (\d+)", x)[1] for x in capsys.readouterr().out.splitlines()] == [
        "1",
        "101",
        "1",
        "101",
    ]
    with pytest.raises(ValueError, match=r"unknown rows \['Nope'\]; rows: SGD"):
        sweep.main(["--config", config, "--rows", "Nope", "--dry-run"])
    with pytest.raises(ValueError, match=r"--seeds is a count, 1\.\.7 .* --seed-list"):
        sweep.main(["--config", config, "--seeds", "101", "--dry-run"])


def test_bad_overrides_and_optimizers_fail_once_before_any_run(tmp_path: Path) -> None:
    config = str(ROOT / "configs/quickstart.yaml")
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        sweep.plan(config, out_root=tmp_path, extra=["nope=1"])
    with pytest.raises(ValueError, match="unknown optimizer 'nadam'"):
        sweep.plan(config, out_root=tmp_path, extra=["optimizer.name=nadam"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["cifar10.sh", "imagenet.sh", "lm1b.sh"])
def test_shell_scripts_hold_no_numbers(script: str) -> None:
    code = [
        x
        for x in (ROOT / "scripts" / script).read_text().splitlines()
        if x.strip() and not x.lstrip().startswith("#")
    ]
    assert not [x for x in code if re.search(r"(?<![\w$])\d", x)], (
        "hyperparameters belong in configs/"
    )


def test_a_shell_script_takes_the_common_flags_and_names_itself(tmp_path: Path) -> None:
    script, plugin = ROOT / "scripts" / "lm1b.sh", tmp_path / "my_optimizer.py"
    plugin.write_text("LOADED = True\n")
    out = subprocess.run(
        [
            "bash",
            str(script),
            "--rows",
            "SGD",
            "--seeds",
            "2",
            "--plugin",
            str(plugin),
            "--dry-run",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 2 and all(f"--plugin {plugin}" in x for x in out)
    assert "--seed 1 " in out[0] and "--seed 101 " in out[1]  # a count: the table's first two
    helped = subprocess.run(
        ["bash", str(script), "--help"], env=ENV, capture_output=True, text=True, check=True
    ).stdout
    assert helped.startswith("usage: bash scripts/lm1b.sh") and "engine.sweep" not in helped
    assert "--seed-list" in helped and "--plugin" in helped


def test_the_first_failed_run_stops_the_sweep(tmp_path: Path, monkeypatch, capsys) -> None:
    started: list[list[str]] = []

    def fails_with_2(cmd):
        started.append(cmd)
        return subprocess.CompletedProcess(cmd, 2)

    monkeypatch.setattr(sweep.subprocess, "run", fails_with_2)
    with pytest.raises(SystemExit) as exc:
        sweep.main(
            [
                "--prog",
                "bash scripts/cifar10.sh",
                "--table",
                "cifar10",
                "--rows",
                "SGD",
                "--seeds",
                "2",
                "--gpus",
                "0",
                "--out-root",
                str(tmp_path),
            ]
        )
    assert exc.value.code == 2 and len(started) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "bash scripts/cifar10.sh: stopped: SGD / milestone / seed 1 exited with status "
        "2 (its error is above); 3 run(s) not started"
    ]
