"""Two-node runs that fail loudly: two torchrun "nodes" on this machine (static rendezvous, one
gloo rank each) running the quickstart's classification task.

* a frozen node (SIGSTOP): its peer stops within ``--dist-timeout`` with one clear line;
* two nodes that do not share the run directory (each its own working directory, the same
  relative ``--out-dir``): both stop before any training with one line naming the rank.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TIMEOUT_MIN = 0.1  # 6 s
LENGTH = "schedule.total_steps=2"  # a cosine of 2 epochs: 1 epoch, then 2, continues it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(rank: int, port: int, cwd: Path, *train_args: str) -> subprocess.Popen:
    """``torchrun`` as node ``rank`` of 2."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        f"--node-rank={rank}",
        "--nproc-per-node=1",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        "-m",
        "classification.train",
        "--config",
        QUICKSTART,
        "--row",
        "SGD",
        "--schedule",
        "cosine",
        "--device",
        "cpu",
        "--dist-timeout",
        str(TIMEOUT_MIN),
        *train_args,
    ]
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in their own sessions)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(p for child in children for p in _tree(int(child)))]


def _signal_node(node: subprocess.Popen, sig: signal.Signals) -> None:
    for pid in _tree(node.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _kill(node: subprocess.Popen) -> None:
    if node.poll() is None:
        _signal_node(node, signal.SIGKILL)
    node.communicate(timeout=60)


@pytest.mark.slow
def test_a_frozen_node_stops_its_peer_within_the_dist_timeout(tmp_path: Path) -> None:
    port = _free_port()
    out = tmp_path / "run"
    args = ("--out-dir", str(out), "--epochs", "200")
    nodes = [_node(rank, port, tmp_path, *args) for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").exists():  # training is under way
            assert time.monotonic() < deadline, "no epoch finished"
            assert all(n.poll() is None for n in nodes), nodes[0].communicate()[0]
            time.sleep(0.2)
        _signal_node(nodes[1], signal.SIGSTOP)  # node 1 freezes: torchrun and its rank
        frozen = time.monotonic()
        output, _ = nodes[0].communicate(timeout=300)
        waited = time.monotonic() - frozen
    finally:
        for node in nodes:
            _kill(node)
    assert nodes[0].returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-3000:]
    # gloo's own words vary with where the wait ended: "Timed out waiting 6000ms for recv
    # operation to complete", "Application timeout caused pair closure"
    assert errors[0].startswith("error: rank 0: the other ranks did not answer ("), errors[0]
    assert errors[0].endswith(
        "): a peer died, froze or never started (collectives wait --dist-timeout: 0.1 min); "
        "relaunch the same command to resume from the last checkpoint"
    ), errors[0]
    # torch's default would be 30 min; the timeout is 6 s, torchrun's exit a few more
    assert waited < TIMEOUT_MIN * 60 + 30, waited


@pytest.mark.slow
def test_nodes_without_a_shared_run_directory_stop_before_training(tmp_path: Path) -> None:
    """Node 0's directory holds a checkpoint after one epoch; node 1 sees an empty one (the
    same relative --out-dir from another working directory): one line names rank 1."""
    a, b = tmp_path / "node0", tmp_path / "node1"
    a.mkdir(), b.mkdir()
    one_epoch = [sys.executable, "-m", "classification.train", "--config", QUICKSTART]
    one_epoch += ["--row", "SGD", "--schedule", "cosine", "--device", "cpu", "--out-dir", "run"]
    first = subprocess.run(
        [*one_epoch, "--epochs", "1", LENGTH],
        cwd=a,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    before = {p.name: p.stat().st_mtime_ns for p in (a / "run").iterdir() if p.name != ".lock"}
    port = _free_port()
    args = ("--out-dir", "run", "--epochs", "2", LENGTH)
    nodes = [_node(0, port, a, *args), _node(1, port, b, *args)]
    try:
        outputs = [n.communicate(timeout=300)[0] for n in nodes]
    finally:
        for node in nodes:
            _kill(node)
    assert all(n.returncode != 0 for n in nodes)
    for output in outputs:
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, output[-3000:]
        assert errors[0].startswith(
            "error: run (the run directory must be on a filesystem every node shares, and "
            "every rank started with the same command): rank 1 differs from rank 0 (run "
            "directory: rank 0 'checkpoint at epoch 1 update 45, model sha256 "
        ), errors[0]
        assert errors[0].endswith("', rank 1 'no checkpoint')")
    # before any training: nothing in node 0's directory changed (but the lock it took and
    # released), nothing written on node 1
    after = {p.name: p.stat().st_mtime_ns for p in (a / "run").iterdir() if p.name != ".lock"}
    assert after == before
    assert not (b / "run").exists()
