"""engine.sweep and scripts/*.sh: every row x schedule x seed, numbers only from the configs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from engine import config as cfg
from engine import sweep

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("table", ["cifar10", "imagenet"])
@pytest.mark.parametrize("version", ["current", "v1"])
def test_dry_run_lists_the_whole_table(table: str, version: str, capsys) -> None:
    path = (
        ROOT / "configs" / (f"{table}.yaml" if version == "current" else f"{version}/{table}.yaml")
    )
    t = cfg.load_table(path)
    sweep.run(["--table", table, "--version", version, "--configs-root", str(ROOT / "configs"),
               "--dry-run", "--gpus", "8", "--", "amp=bf16"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(t["rows"]) * len(t["schedules"]) * len(t["seeds"])
    assert all(x.startswith("torchrun --standalone --nproc_per_node=8 -m classification.train")
               and x.endswith("amp=bf16") for x in lines)  # fmt: skip
    assert len(set(lines)) == len(lines)


def test_subset_and_unknown_row(capsys) -> None:
    config = str(ROOT / "configs/cifar10.yaml")
    sweep.run(["--config", config, "--rows", "Adam*,Apollo", "--schedules", "cosine",
               "--seeds", "1,101", "--gpus", "0", "--dry-run"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "--row 'Adam*'" in lines[0] and "--device cpu" in lines[0]
    assert lines[0].endswith("--out-dir runs/cifar10/current/Adam-star/cosine/seed1 --device cpu")
    with pytest.raises(ValueError, match=r"unknown rows \['Nope'\]; rows: SGD"):
        sweep.run(["--config", str(ROOT / "configs/cifar10.yaml"), "--rows", "Nope", "--dry-run"])


@pytest.mark.parametrize("script", ["cifar10.sh", "imagenet.sh"])
def test_shell_scripts_hold_no_numbers_and_dry_run(script: str) -> None:
    code = [x for x in (ROOT / "scripts" / script).read_text().splitlines()
            if x.strip() and not x.lstrip().startswith("#")]  # fmt: skip
    assert not [x for x in code if re.search(r"(?<![\w$])\d", x)], (
        "hyperparameters belong in configs/"
    )
    out = subprocess.run(["bash", str(ROOT / "scripts" / script), "--rows", "SGD", "--seeds", "1",
                          "--dry-run"], capture_output=True, text=True, check=True)  # fmt: skip
    assert len(out.stdout.splitlines()) == 2  # milestone and cosine
