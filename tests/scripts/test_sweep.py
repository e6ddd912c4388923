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
    sweep.main(["--table", table, "--version", version, "--dry-run", "--gpus", "8", "--",
                "amp=bf16"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(t["rows"]) * len(t["schedules"]) * len(t["seeds"])
    assert all(x.startswith("torchrun --standalone --nproc_per_node=8 -m classification.train")
               and x.endswith("amp=bf16") for x in lines)  # fmt: skip
    assert len(set(lines)) == len(lines)


def test_subset_seeds_and_unknown_names(capsys) -> None:
    config = str(ROOT / "configs/cifar10.yaml")
    sweep.main(["--config", config, "--rows", "Adam*,Apollo", "--schedules", "cosine",
                "--seed-list", "1,101", "--gpus", "0", "--dry-run"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "--row 'Adam*'" in lines[0] and "--device cpu" in lines[0]
    assert "--out-dir runs/cifar10/current/Adam-star/cosine/seed1 --device cpu" in lines[0]
    sweep.main(["--config", config, "--rows", "SGD", "--seeds", "2", "--dry-run"])
    assert [re.search(r"--seed (\d+)", x)[1] for x in capsys.readouterr().out.splitlines()] == [
        "1", "101", "1", "101"]  # fmt: skip
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
    code = [x for x in (ROOT / "scripts" / script).read_text().splitlines()
            if x.strip() and not x.lstrip().startswith("#")]  # fmt: skip
    assert not [x for x in code if re.search(r"(?<![\w$])\d", x)], (
        "hyperparameters belong in configs/"
    )


def test_a_shell_script_takes_the_common_flags_and_names_itself() -> None:
    script = ROOT / "scripts" / "lm1b.sh"
    out = subprocess.run(["bash", str(script), "--rows", "SGD", "--seeds", "2", "--plugin",
                          "optim", "--dry-run"], env=ENV, capture_output=True, text=True,
                         check=True).stdout.splitlines()  # fmt: skip
    assert len(out) == 2 and all("--plugin optim" in x for x in out)
    assert "--seed 1 " in out[0] and "--seed 101 " in out[1]  # a count: the table's first two
    helped = subprocess.run(["bash", str(script), "--help"], env=ENV, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert helped.startswith("usage: bash scripts/lm1b.sh") and "engine.sweep" not in helped
    assert "--seed-list" in helped and "--plugin" in helped
