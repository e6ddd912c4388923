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
                "--script",
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


def _bash(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120
    )


def test_a_table_script_runs_its_own_table_only(tmp_path: Path) -> None:
    """``cifar10.sh --help`` is the script's own header; another table is refused in one line,
    an extension of its own table is taken."""
    helped = _bash(str(ROOT / "scripts/cifar10.sh"), "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: bash scripts/cifar10.sh")
    assert "ResNet-110 on CIFAR-10" in helped.stdout and "--jobs-per-gpu" in helped.stdout
    assert "Rows x schedules x seeds of one table" not in helped.stdout  # not the sweep's help
    for args in (["--table", "imagenet"], ["--config", str(ROOT / "configs/imagenet.yaml")]):
        refused = _bash(str(ROOT / "scripts/cifar10.sh"), *args, "--dry-run")
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.startswith("error: bash scripts/cifar10.sh runs the cifar10 table")
        assert refused.stderr.count("\n") == 1
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"extends: {ROOT / 'configs/cifar10.yaml'}\n")
    taken = _bash(
        str(ROOT / "scripts/cifar10.sh"),
        *("--config", str(mine), "--rows", "SGD", "--seeds", "1", "--gpus", "0", "--dry-run"),
    )
    assert taken.returncode == 0 and len(taken.stdout.splitlines()) == 2, taken.stderr


def test_where_runs_execute_is_said_and_never_a_silent_cpu() -> None:
    assert sweep.gpus_per_run(None, visible=lambda: 4) == (
        1,
        "each run on 1 GPU (4 visible; --gpus N for N per run, --jobs-per-gpu N for N runs "
        "on each)",
    )
    gpus, where = sweep.gpus_per_run(None, visible=lambda: 0)
    assert gpus == 0 and where.startswith("no GPU visible to torch: each run on the CPU")
    assert sweep.gpus_per_run(0, visible=lambda: 1 / 0)[0] == 0  # no probe needed
    assert sweep.gpus_per_run(2, visible=lambda: 2)[0] == 2
    with pytest.raises(ValueError, match=r"--gpus 2: torch sees 1 GPU\(s\) here .*--gpus 0"):
        sweep.gpus_per_run(2, visible=lambda: 1)
    assert sweep.gpus_per_run(8, check=False, visible=lambda: 1 / 0)[0] == 8  # a dry run


@pytest.mark.slow  # one tiny training run: ~10 s on a 2-core CPU
def test_a_table_script_takes_paths_relative_to_the_callers_directory(tmp_path: Path) -> None:
    """``bash /checkout/scripts/cifar10.sh --data-dir data/x`` from another directory trains on
    that directory's data/x and writes its runs there; the first line says where they run."""
    from tests.classification.conftest import write_cifar

    write_cifar(tmp_path / "data" / "x")
    tiny = ["--epochs", "1", "--max-steps-per-epoch", "2", "--workers", "0", "model=cifar_resnet8"]
    tiny += ["batch_size=8", "eval_batch_size=10", "augmentation.crop=16"]
    proc = _bash(
        str(ROOT / "scripts/cifar10.sh"),
        *("--data-dir", "data/x", "--rows", "SGD", "--schedules", "cosine", "--seeds", "1"),
        *("--gpus", "0", "--out-dir", "out", "--", *tiny),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == "each run on the CPU (--gpus 0)"
    results = tmp_path / "out/cifar10/current/SGD/cosine/seed1/results.json"
    assert '"finished": true' in results.read_text()
