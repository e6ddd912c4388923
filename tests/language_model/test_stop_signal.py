"""SLURM's warning signals stop a language-model run at an update boundary with a checkpoint;
the resumed run ends with the numbers of an uninterrupted one (engine.preemption)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

import engine.checkpoint
from engine import preemption
from engine import run as runs
from tests.language_model.conftest import SMALL, train_small


def _run(lmdb_dir: Path, out: Path) -> dict:
    return train_small(lmdb_dir, out, "--epochs", "2", *SMALL)


def _signal_at(monkeypatch, update: int, sig: signal.Signals) -> None:
    """Deliver ``sig`` to this process just before the loop counts update ``update``."""
    real = runs.Run.update_done

    def update_done(self: runs.Run, *args, **kwargs) -> None:
        if self.update + 1 == update:
            os.kill(os.getpid(), sig)
        real(self, *args, **kwargs)

    monkeypatch.setattr(runs.Run, "update_done", update_done)


@pytest.fixture(scope="module")
def straight(lmdb_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm_stop") / "straight"
    _run(lmdb_dir, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=["TERM", "USR2"])
def test_a_signal_in_a_slurm_job_checkpoints_at_the_next_update_and_resumes_exactly(
    lmdb_dir, tmp_path, monkeypatch, sig, straight
):
    expected = json.loads((straight / "results.json").read_text())
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    _signal_at(monkeypatch, 70, sig)  # epoch 2 (an epoch is 53 updates), no checkpoint_every
    with pytest.raises(preemption.Stopped) as stop:
        _run(lmdb_dir, tmp_path / "stopped")
    assert stop.value.code == preemption.STOPPED_EXIT == 75
    assert signal.getsignal(sig) is not preemption._request  # handlers put back
    state = engine.checkpoint.load(tmp_path / "stopped" / "checkpoint.pt")
    assert (state["epoch"], state["update"], state["position"]) == (1, 70, 70 - 53)
    log = (tmp_path / "stopped" / "train.log").read_text()
    assert f"stopped on {sig.name} at update 70: checkpoint written at epoch 1 update 70" in log
    monkeypatch.undo()
    resumed = _run(lmdb_dir, tmp_path / "stopped")
    assert "resuming epoch 2 at step 17" in (tmp_path / "stopped" / "train.log").read_text()
    assert resumed["final"]["test_ppl"] == expected["final"]["test_ppl"]
    assert resumed["final"]["train_loss"] == expected["final"]["train_loss"]
    a = engine.checkpoint.load(straight / "checkpoint.pt")["model"]
    b = engine.checkpoint.load(tmp_path / "stopped" / "checkpoint.pt")["model"]
    assert engine.checkpoint.state_digest(a) == engine.checkpoint.state_digest(b)


def test_outside_slurm_no_handler_is_installed(monkeypatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert preemption.stop_signals() == ()
    assert preemption.install() == ()
    env = {"SLURM_JOB_ID": "3", "SUBMITIT_PREEMPT_SIGNAL": "USR1"}
    assert preemption.stop_signals(env) == (signal.SIGTERM, signal.SIGUSR1)
