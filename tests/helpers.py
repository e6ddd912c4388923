"""What tests in several folders share: host-read and CUDA-sync counters, a free port, and
running an entry point as its command line would (one error line, run directory contents).

Only torch and the standard library are imported here at module level, so the optimizer
library's tests can use it without the engine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: Tensor methods that copy a value to the host (a device sync on a GPU).
HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
#: Keys of an epoch record that depend on the machine's speed.
TIMING_KEYS = ("images_per_s", "tokens_per_s", "epoch_time_s")


def free_port() -> int:
    """A TCP port nobody listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_host_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on every host read of a tensor (:data:`HOST_READS`) appends its name to the
    returned list."""
    reads: list[str] = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, _counted(real, name, reads))
    return reads


def _counted(real: Callable, name: str, reads: list[str]) -> Callable:
    def wrapper(self, *args, **kwargs):
        reads.append(name)
        return real(self, *args, **kwargs)

    return wrapper


def per_call(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, counter: Callable[[], int]
) -> list[int]:
    """Wrap ``owner.name`` so that each call appends how much ``counter()`` grew during it."""
    counted: list[int] = []
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        before = counter()
        result = real(*args, **kwargs)
        counted.append(counter() - before)
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return counted


def cuda_syncs_per_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Synchronizing CUDA calls made by each call of ``owner.name``, as
    ``torch.cuda.set_sync_debug_mode("warn")`` flags them."""
    counted: list[int] = []
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                result = real(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counted.append(sum("synchroniz" in str(w.message) for w in caught))
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return counted


def fails(entry: Callable, argv: Sequence[str], capsys: pytest.CaptureFixture) -> str:
    """``entry(argv)`` as its command line runs it must end with one ``error:`` line on
    stderr, exit status 2 and no traceback; returns that line."""
    from engine import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(entry, list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def history(out: Path, drop: Iterable[str] = TIMING_KEYS) -> list[dict]:
    """``metrics.jsonl`` of a run directory, without the keys in ``drop``."""
    drop = set(drop)
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]


def files(out: Path) -> dict[str, bytes]:
    """The bytes of every file in a run directory but its lock (what a refusal must not touch)."""
    return {
        p.name: p.read_bytes() for p in Path(out).iterdir() if p.is_file() and p.name != ".lock"
    }


def model_digest(out: Path) -> str:
    """The digest of the model in a run directory's ``checkpoint.pt``."""
    from engine import checkpoint

    return checkpoint.state_digest(checkpoint.load(Path(out) / "checkpoint.pt")["model"])


def initial_parameters(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """From now on, each run's parameters as ``Run.restore`` leaves them (a fresh run's
    initial weights) are appended to the returned list, copied."""
    from engine import run as runs

    captured: list[dict[str, torch.Tensor]] = []
    real = runs.Run.restore

    def restore(self, training):
        state = real(self, training)
        captured.append({k: p.detach().clone() for k, p in training.model.named_parameters()})
        return state

    monkeypatch.setattr(runs.Run, "restore", restore)
    return captured


def unmoved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """The parameters of ``before`` that ``after`` (a state dict) holds bit for bit unchanged."""
    return [k for k, v in before.items() if torch.equal(v, after[k].to(v.device, v.dtype))]


def output_dtypes(monkeypatch: pytest.MonkeyPatch, module_type: type) -> list[torch.dtype]:
    """From now on the dtype of every output of a ``module_type`` layer (its first tensor) is
    appended to the returned list: what autocast really ran it in."""
    seen: list[torch.dtype] = []
    real = module_type.forward

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen.append((out if isinstance(out, torch.Tensor) else out[0]).dtype)
        return out

    monkeypatch.setattr(module_type, "forward", forward)
    return seen


class TrainedRun(NamedTuple):
    out: Path  # the run directory
    initial: dict[str, torch.Tensor]  # the parameters the run started from


def trained(run: Callable[[], Any], out: Path) -> TrainedRun:
    """Call ``run()`` (a fresh run into ``out``), recording the parameters it starts from."""
    with pytest.MonkeyPatch.context() as mp:
        initial = initial_parameters(mp)
        run()
    return TrainedRun(Path(out), initial[0])


def two_ranks(module: str, argv: Sequence[str], out: Path) -> dict:
    """``torchrun --standalone --nproc_per_node=2 -m module argv`` on the CPU (gloo), from the
    repository root; returns the run's ``results.json``, whose ranks must have ended with one
    model."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, "-m", module, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((Path(out) / "results.json").read_text())
    digests = results["model_sha256_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]  # the ranks end bit-identical
    return results
