"""The divergence policy through the toy task (tests/engine/toy/): a run stops at its first
non-finite training loss, records it in results.json, keeps the last checkpoint before it and
exits normally, so that a table goes on; the report's cell then reads ``diverged``."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import amp, checkpoint, cli
from engine.run import finished_results
from tests.engine.toy import train as toy
from tests.helpers import files, history, unmoved

ROOT = Path(__file__).resolve().parents[2]
TOY = str(Path(__file__).parent / "toy" / "toy.yaml")


def argv(out: Path, *extra: str, row: str = "Unstable") -> list[str]:
    """Two epochs of 8 updates; the Unstable row's lr (1000) diverges in the first."""
    return ["--config", TOY, "--row", row, "--schedule", "cosine", "--out-dir", str(out), *extra]


def test_the_first_non_finite_loss_stops_the_run_and_is_recorded(tmp_path: Path) -> None:
    """Checked at every update (log_every=1) the run stops at that update; checked at epoch
    ends only, it stops there, but records the same first update (watched on the device)."""
    every = toy.main(argv(tmp_path / "every", "log_every=1"))
    first = every["diverged"]
    assert first["epoch"] == 1 and 1 < first["update"] < 8
    assert not every["finished"] and every["epochs_completed"] == 0
    log = (tmp_path / "every" / "train.log").read_text()
    assert f"not finite at update {first['update']} (epoch 1); stopping at update " in log
    assert f"stopping at update {first['update']}\n" in log
    late = toy.main(argv(tmp_path / "late", "log_every=0"))
    assert late["diverged"] == first
    assert "stopping at update 8\n" in (tmp_path / "late" / "train.log").read_text()
    for out in (tmp_path / "every", tmp_path / "late"):
        assert not (out / "checkpoint.pt").exists() and history(out) == []


def test_the_last_checkpoint_before_it_is_kept_and_a_rerun_trains_nothing(tmp_path) -> None:
    """lr 3 trains through epoch 1 and diverges in epoch 2. A checkpoint is due after every
    update, yet none with the diverged weights is written; re-running the command finds the
    divergence and trains nothing; a sweep counts the run as done."""
    out = tmp_path / "run"
    args = argv(out, "optimizer.lr=3", "checkpoint_every=1")
    cli.main(toy.main, args)  # no SystemExit: the command exits with status 0
    results = toy.main(args)  # the same command again
    diverged = results["diverged"]
    assert diverged["epoch"] == 2 and results["epochs_completed"] == 1
    saved = checkpoint.load(out / "checkpoint.pt")
    assert diverged["update"] - 1 <= saved["update"] < diverged["update"]
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert [r["epoch"] for r in history(out)] == [1]
    log = (out / "train.log").read_text()
    assert f"diverged at update {diverged['update']} before: nothing to train" in log
    before = files(out)
    config = checkpoint.load(out / "checkpoint.pt")["config"]
    assert finished_results(out, config)["diverged"] == diverged
    assert toy.main(args)["diverged"] == diverged
    assert files(out)["checkpoint.pt"] == before["checkpoint.pt"]


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_steps_that_fp16_loss_scaling_skips_are_not_divergence(tmp_path, monkeypatch) -> None:
    """A loss scale of 2^120 overflows every float16 gradient: GradScaler skips each step and
    halves the scale, the loss itself stays finite, and the run finishes."""
    monkeypatch.setattr(
        amp, "grad_scaler", lambda device, mode: torch.amp.GradScaler("cpu", init_scale=2.0**120)
    )
    captured = []
    real = toy.build_training

    def build(*args):
        training = real(*args)
        captured.append({k: p.detach().clone() for k, p in training.model.named_parameters()})
        return training

    monkeypatch.setattr(toy, "build_training", build)
    out = tmp_path / "fp16"
    results = toy.main(argv(out, "--amp", "fp16", "--epochs", "1", row="SGD"))
    assert results["finished"] and results["diverged"] is None
    assert math.isfinite(results["final"]["train_loss"])
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["scaler"]["scale"] == 2.0 ** (120 - 8)  # 8 updates, all skipped
    assert len(unmoved(captured[0], state["model"])) == len(captured[0])


def test_a_table_goes_on_past_a_diverged_run_and_the_report_says_so(tmp_path: Path) -> None:
    """scripts.run_table over the toy table: the Unstable row diverges for both seeds, the
    table still trains the SGD row and reports it, and the Unstable cell reads ``diverged``."""
    cmd = [
        sys.executable,
        "-m",
        "scripts.run_table",
        "--config",
        TOY,
        "--rows",
        "SGD,Unstable",
        "--schedules",
        "cosine",
        "--seeds",
        "2",
        "--out-dir",
        str(tmp_path),
        "--jobs",
        "1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("diverged at update") == 2
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if "|" in line}
    assert "diverged (2 of 2 seeds)" in rows["Unstable"]
    assert "diverged" not in rows["SGD"] and " (0." in rows["SGD"]  # mean (std) of test loss
    csv = (tmp_path / "toy" / "report" / "table.csv").read_text()
    assert "diverged (2 of 2 seeds)" in csv
    # the table's sweep, run again, trains nothing and says which runs diverged
    again = [sys.executable, "-m", "scripts.sweep", *cmd[3:-2], "--gpus", "0"]
    proc = subprocess.run(again, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("diverged already: ") == 2, proc.stdout
    assert proc.stdout.count("finished already: ") == 2, proc.stdout
