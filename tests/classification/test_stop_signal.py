"""A stop signal inside a SLURM job stops classification at the next update with a mid-epoch
checkpoint; the resumed run equals an uninterrupted one, for both data pipelines and with
DataLoader workers (their seeds come from the random state the epoch began with)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from classification import train
from engine import checkpoint, preemption
from engine import run as runs

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--device", "cpu", "model=cifar_resnet8", "batch_size=8"]
TINY += ["eval_batch_size=10", "augmentation.crop=16"]


def _run(out: Path, data: Path, extra: list[str]) -> dict:
    argv = ["--config", str(ROOT / "configs" / "cifar10.yaml"), "--row", "Apollo"]
    argv += ["--schedule", "cosine", "--data-dir", str(data), "--out-dir", str(out)]
    return train.main([*argv, "--epochs", "3", "--max-steps-per-epoch", "3", *TINY, *extra])


def _same_numbers(a: dict, b: dict) -> None:
    timing = ("images_per_s", "epoch_time_s")
    assert a["final"] == b["final"] | {k: a["final"][k] for k in timing}
    assert a["model_sha256_by_rank"] == b["model_sha256_by_rank"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--workers", "0"],  # the crops and flips drawn in this process
        ["--workers", "2"],  # drawn in workers seeded from the epoch's random state
        ["--workers", "0", "data_pipeline=device"],  # drawn from the epoch's own generator
    ],
    ids=["loader", "workers", "device"],
)
def test_a_stop_signal_checkpoints_mid_epoch_and_the_resume_equals_a_straight_run(
    cifar_dir: Path, tmp_path: Path, monkeypatch, extra: list[str]
) -> None:
    straight = _run(tmp_path / "straight", cifar_dir, extra)
    real = runs.Run.update_done

    def update_done(self: runs.Run, *args, **kwargs) -> None:
        if self.update + 1 == 5:  # the second update of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        real(self, *args, **kwargs)

    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr(runs.Run, "update_done", update_done)
    with pytest.raises(preemption.Stopped):
        _run(tmp_path / "stopped", cifar_dir, extra)
    state = checkpoint.load(tmp_path / "stopped" / "checkpoint.pt")
    assert (state["epoch"], state["update"], state["position"]) == (1, 5, 2)
    assert state["ranks"][0]["sums"]["count"] == 16  # the epoch's two updates so far
    log = (tmp_path / "stopped" / "train.log").read_text()
    assert "stopped on SIGTERM at update 5: checkpoint written at epoch 1 update 5" in log
    monkeypatch.undo()
    resumed = _run(tmp_path / "stopped", cifar_dir, extra)
    assert "resuming epoch 2 at step 2" in (tmp_path / "stopped" / "train.log").read_text()
    _same_numbers(resumed, straight)


def test_mid_epoch_checkpoints_change_no_number(cifar_dir: Path, tmp_path: Path) -> None:
    straight = _run(tmp_path / "straight", cifar_dir, ["--workers", "0"])
    every = _run(tmp_path / "every", cifar_dir, ["--workers", "0", "checkpoint_every=2"])
    _same_numbers(every, straight)
