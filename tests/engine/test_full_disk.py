"""A full disk while a run writes: inside torch.save, on train.log, on TensorBoard's events,
on the lock file. Each ends the run with one line naming the file; the last checkpoint stays
intact and the same command resumes once there is room again.

The disk fills up by making writes fail with ENOSPC, as the kernel does; torch.save then
raises its own RuntimeError from inline_container.cc, which is what the engine has to turn into
the line. (On this project's development machine the same lines were also checked on a real
64 KiB tmpfs filled to every level in 2 KB steps.)"""

from __future__ import annotations

import errno
import io
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import checkpoint, distributed
from tests.engine.toy import train as toy
from tests.helpers import fails as one_error_line

TOY = str(Path(__file__).parent / "toy" / "toy.yaml")
FULL = OSError(errno.ENOSPC, "No space left on device")


def argv(out: Path, *extra: str) -> list[str]:
    args = ["--config", TOY, "--row", "SGD", "--schedule", "cosine", "--out-dir", str(out)]
    return [*args, "--max-steps-per-epoch", "2", *extra]


class Disk:
    """Room for ``free`` more bytes in files opened by ``engine.checkpoint`` (None: plenty)."""

    def __init__(self) -> None:
        self.free: int | None = None

    def take(self, n: int) -> None:
        if self.free is not None:
            if n > self.free:
                self.free = 0
                raise OSError(FULL.errno, FULL.strerror)
            self.free -= n


class FillingFile(io.RawIOBase):
    """A file whose writes fail once the disk is full."""

    def __init__(self, f: Any, disk: Disk) -> None:
        self.f, self.disk = f, disk

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.disk.take(len(data))
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def fileno(self) -> int:
        return self.f.fileno()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes
            self.f.close()


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    disk, real = Disk(), os.fdopen

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real(fd, mode, *args, **kwargs)
        return FillingFile(f, disk) if "w" in mode else f

    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)
    return disk


def test_torch_save_on_a_full_disk_is_a_write_error_naming_the_file(tmp_path, disk) -> None:
    state = {"model": {"w": torch.zeros(10_000)}}
    checkpoint.save(tmp_path / "checkpoint.pt", state)
    disk.free = 1000  # torch.save's first records fit, then the disk is full
    with pytest.raises(RuntimeError, match="inline_container"):  # what torch itself raises
        with open(tmp_path / "raw.pt", "wb") as f:
            torch.save(state, FillingFile(f, disk))
    disk.free = 1000
    with pytest.raises(checkpoint.WriteError) as exc:
        checkpoint.save(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(10_000)}})
    assert str(exc.value) == (
        f"cannot write {tmp_path / 'checkpoint.pt'}: No space left on device (nothing replaced)"
    )
    assert torch.equal(
        checkpoint.load(tmp_path / "checkpoint.pt")["model"]["w"], torch.zeros(10_000)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "raw.pt"]


def test_a_run_whose_checkpoint_does_not_fit_stops_with_one_line(
    tmp_path, disk, monkeypatch, capsys
) -> None:
    out = tmp_path / "run"
    real_save, saves = checkpoint.save, []

    def save(path, state):
        saves.append(path)
        if len(saves) == 2:  # epoch 2's checkpoint: the disk is full partway through it
            disk.free = 1000
        real_save(path, state)

    monkeypatch.setattr(checkpoint, "save", save)
    err = one_error_line(toy.main, argv(out), capsys)
    monkeypatch.setattr(checkpoint, "save", real_save)
    why = "No space left on device (nothing replaced)"
    assert err == f"error: cannot write {out / 'checkpoint.pt'}: {why}\n"
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1
    disk.free = None  # room again: the same command resumes
    assert toy.main(argv(out))["epochs_completed"] == 2


def test_a_full_disk_on_train_log_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    real_open = distributed.RunLogFile._open

    def open_filling(handler):
        stream = real_open(handler)

        class Stream:
            def write(self, text: str) -> int:
                if "epoch 1/2" in text:  # the line after epoch 1's checkpoint and results
                    raise OSError(FULL.errno, FULL.strerror)
                return stream.write(text)

            def __getattr__(self, name: str) -> Any:
                return getattr(stream, name)

        return Stream()

    monkeypatch.setattr(distributed.RunLogFile, "_open", open_filling)
    err = one_error_line(toy.main, argv(out), capsys)
    assert err == f"error: cannot write {out / 'train.log'}: No space left on device\n"
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1
    assert not logging.getLogger("engine.run").handlers  # closed, nothing left open
    monkeypatch.undo()
    assert toy.main(argv(out))["epochs_completed"] == 2


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_disk_under_tensorboard_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    """TensorBoard writes from a thread of its own: its failure reaches the run as one line,
    with no thread traceback on stderr."""
    from tensorboard.compat.tensorflow_stub.io import gfile

    out = tmp_path / "run"
    real_write = gfile.LocalFileSystem._write

    def write(self, filename, content, mode):
        if (out / "checkpoint.pt").exists():  # after epoch 1's checkpoint
            raise OSError(FULL.errno, FULL.strerror)
        return real_write(self, filename, content, mode)

    monkeypatch.setattr(gfile.LocalFileSystem, "_write", write)
    err = one_error_line(toy.main, argv(out), capsys)
    assert err == f"error: cannot write {out / 'tb'}: No space left on device\n"
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1


def test_a_full_disk_on_the_lock_file_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        os,
        "pwrite",
        lambda *a: (_ for _ in ()).throw(OSError(FULL.errno, "No space left on device")),
    )
    out = tmp_path / "run"
    err = one_error_line(toy.main, argv(out), capsys)
    assert err == f"error: cannot write to run directory {out}: No space left on device\n"


def test_a_full_disk_at_fsync_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    """The bytes fit in the page cache; writing them out fails (fsync)."""
    out = tmp_path / "run"
    toy.main(argv(out, "--epochs", "1", "schedule.total_steps=2"))

    def fsync(fd: int) -> None:
        raise OSError(FULL.errno, FULL.strerror)

    monkeypatch.setattr(os, "fsync", fsync)
    err = one_error_line(toy.main, argv(out, "--epochs", "2", "schedule.total_steps=2"), capsys)
    assert "No space left on device" in err
    monkeypatch.undo()
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1
