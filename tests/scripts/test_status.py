"""scripts.status: each run's state from its directory (and SLURM's queue), one line per run and
one for the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.lock import RunDirLock
from scripts import status

ROOT = Path(__file__).resolve().parents[2]


def _run_dir(root: Path, name: str, *, epochs_done: int = 0, epochs: int = 5) -> Path:
    run = root / "quickstart" / "current" / name / "cosine" / "seed1"
    run.mkdir(parents=True)
    status.record_launch(run, "local", ["python", "-m", "classification.train"])
    if epochs_done:
        (run / "config.json").write_text(json.dumps({"epochs": epochs, "row": name}))
        lines = [json.dumps({"epoch": e, "update": 45 * e}) for e in range(1, epochs_done + 1)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run / "train.log").write_text(
            "2026-12-06 10:00:00 SGD / cosine / seed 1: starting, 5 epochs\n"
            f"2026-12-06 10:00:09 epoch {epochs_done}/{epochs} lr 0.1 | train loss 0.5\n"
        )
    return run


def _finish(run: Path) -> None:
    results = {"finished": True, "metric": "test_acc1", "epochs_completed": 5}
    results["best"] = {"epoch": 4, "test_acc1": 96.25}
    (run / "results.json").write_text(json.dumps(results))


def test_each_state_and_the_table_line(tmp_path: Path) -> None:
    finished = _run_dir(tmp_path, "SGD", epochs_done=5)
    _finish(finished)
    running = _run_dir(tmp_path, "Adam", epochs_done=2)
    lock = RunDirLock(running)
    lock.acquire()  # held by this live process, as a training run holds it
    stopped = _run_dir(tmp_path, "RAdam", epochs_done=3)
    (stopped / ".lock").write_text("999999999 " + os.uname().nodename + "\n")  # a killed holder
    failed = _run_dir(tmp_path, "Apollo", epochs_done=1)
    (failed / "stdout.log").write_text(
        "an earlier failure, before the last start:\nerror: old\n"
        "2026-12-06 10:00:00 Apollo / cosine / seed 1: starting, 5 epochs\n"
        "error: corrupt or unreadable checkpoint runs/x/checkpoint.pt (UnpicklingError)\n"
    )
    resumed = _run_dir(tmp_path, "ApolloW", epochs_done=1)
    (resumed / "stdout.log").write_text(
        "error: old\n2026-12-06 x: stopped on SIGTERM at update 9\n"
    )
    _run_dir(tmp_path, "AdaBelief")  # recorded by a launcher, never started
    try:
        found = {s.run_dir.parts[-3]: s for s in status.statuses([tmp_path])}
    finally:
        lock.release()
    assert {k: s.state for k, s in found.items()} == {
        "SGD": "finished",
        "Adam": "running",
        "RAdam": "stopped",
        "Apollo": "failed",
        "ApolloW": "stopped",
        "AdaBelief": "not started",
    }
    assert found["SGD"].detail == "test_acc1 96.25 (best epoch 4), 5 epochs"
    assert found["Adam"].detail.startswith(f"PID {os.getpid()}: epoch 2/5 done (update 90); ")
    assert "last log 2026-12-06 10:00:09" in found["Adam"].detail
    assert found["Adam"].detail.endswith(": epoch 2/5 lr 0.1 | train loss 0.5")
    assert found["RAdam"].detail == "epoch 3/5 done (update 135); launching again resumes"
    assert found["Apollo"].detail == (
        "error: corrupt or unreadable checkpoint runs/x/checkpoint.pt (UnpicklingError)"
    )
    line = status.table_line(list(found.values()))
    assert line == (
        "6 runs: 1 finished, 1 running, 1 failed, 2 stopped, 1 not started (17% finished)"
    )


def test_slurm_states_come_from_the_queue(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, "SGD", epochs_done=2)
    status.record_launch(run, "slurm", ["python"], job_id="12_3")
    assert status.run_status(run, {"12_3": "RUNNING"}).state == "running"
    queued = status.run_status(run, {"12_3": "PENDING"})
    assert (queued.state, queued.detail) == (
        "queued",
        "SLURM job 12_3 PENDING; epoch 2/5 done (update 90), resumes",
    )
    (run / "stdout.log").write_text(
        "[slurm] job 12_3 attempt 1, rank 0 of 1 on n1: python\nKilled\n[slurm] exit status -9\n"
    )
    assert status.run_status(run, {}).detail == "Killed"
    (run / "stdout.log").write_text("[slurm] job 12_3 attempt 1\n[slurm] exit status 75\n")
    assert status.run_status(run, {}).state == "stopped"  # stopped on a signal: no failure


def test_the_command_line(tmp_path: Path) -> None:
    _finish(_run_dir(tmp_path, "SGD", epochs_done=5))
    _run_dir(tmp_path, "Adam")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "scripts.status", str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("not started  ") and lines[0].endswith(": local launch recorded")
    assert lines[1].startswith("finished     ")
    assert lines[-1] == "2 runs: 1 finished, 1 not started (50% finished)"
    only = subprocess.run([*cmd, "--only", "finished"], env=env, capture_output=True, text=True)
    assert len(only.stdout.splitlines()) == 2
    bad = subprocess.run([*cmd, "--only", "done"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --only: unknown state")
    missing = subprocess.run(
        [sys.executable, "-m", "scripts.status", str(tmp_path / "nope")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no such folder" in missing.stderr
