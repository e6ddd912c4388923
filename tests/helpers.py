"""What tests in several folders share: host-read and CUDA-sync counters, a free port, and
running an entry point as its command line would (one error line, run directory contents).

Only torch and the standard library are imported here at module level, so the optimizer
library's tests can use it without the engine.
"""

from __future__ import annotations

import json
import socket
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

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
