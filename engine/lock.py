"""One writer per run directory: an exclusive ``flock`` on ``<out_dir>/.lock``.

The lock is the kernel's: it is released when the run ends or its process dies (even by
SIGKILL), so a lock left by a killed run is simply taken over; the file then still holds the
dead holder's ``<pid> <host>`` (a clean release empties it), which is reported. A second run
on a held directory gets :class:`RunDirBusy`, one line naming the holder's PID. Temp files
orphaned by a killed write are deleted once the lock is held (nobody else writes there).
``flock`` works across processes of one machine and, on Linux, over NFS (emulated with POSIX
locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path


class RunDirBusy(ValueError):
    """Another live process holds the run directory's lock."""


class RunDirLock:
    """An exclusive ``flock`` on ``<folder>/.lock`` holding ``<pid> <host>`` while held."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.path = folder, folder / ".lock"
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a dead holder's lock was taken over."""
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"--out-dir {self.folder} is a file, not a directory")
        from .checkpoint import WriteError, clean_temp_files  # torch: only once a run starts

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WriteError(
                f"cannot write to run directory {self.folder}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirBusy(
                f"{self.folder} is in use by another run (PID {holder}); wait for it to end "
                "or pick another --out-dir"
            ) from None
        previous = _read_holder(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as exc:  # a full disk
            os.close(fd)  # and with it the lock
            raise WriteError(
                f"cannot write to run directory {self.folder}: {exc.strerror or exc}"
            ) from None
        self.fd = fd
        clean_temp_files(self.folder)
        if previous != "unknown":  # a clean release empties the file: its holder was killed
            return (
                f"{self.folder} was locked by PID {previous}, which ended without "
                "releasing it (killed?); taking over"
            )
        return None

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return "unknown"
    return " on ".join(text[:2]) if text else "unknown"
