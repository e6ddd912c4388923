"""A stop signal inside a SLURM job: classification cannot checkpoint mid-epoch, so it stops at
the next update and keeps its last epoch checkpoint; the resumed run equals an uninterrupted one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from classification import train
from engine import checkpoint, preemption
from engine import run as runs

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--workers", "0", "--device", "cpu", "model=cifar_resnet8", "batch_size=8"]
TINY += ["eval_batch_size=10", "augmentation.crop=16"]


def _run(out: Path, data: Path) -> dict:
    argv = ["--config", str(ROOT / "configs" / "cifar10.yaml"), "--row", "Apollo"]
    argv += ["--schedule", "cosine", "--data-dir", str(data), "--out-dir", str(out)]
    return train.main([*argv, "--epochs", "3", "--max-steps-per-epoch", "3", *TINY])


def test_classification_stops_at_the_next_update_keeping_its_epoch_checkpoint(
    cifar_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    straight = _run(tmp_path / "straight", cifar_dir)
    real = runs.Run.update_done

    def update_done(self: runs.Run, *args, **kwargs) -> None:
        if self.update + 1 == 5:  # the second update of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        real(self, *args, **kwargs)

    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr(runs.Run, "update_done", update_done)
    with pytest.raises(preemption.Stopped):
        _run(tmp_path / "stopped", cifar_dir)
    state = checkpoint.load(tmp_path / "stopped" / "checkpoint.pt")
    assert (state["epoch"], state["update"], state["position"]) == (1, 3, 0)
    log = (tmp_path / "stopped" / "train.log").read_text()
    assert "stopped on SIGTERM at update 6: the last checkpoint (epoch 1) is kept" in log
    monkeypatch.undo()
    resumed = _run(tmp_path / "stopped", cifar_dir)
    assert resumed["final"] == straight["final"] | {
        k: resumed["final"][k] for k in ("images_per_s", "epoch_time_s")
    }
