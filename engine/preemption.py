"""Stopping a run at an update boundary when SLURM warns that it will end it.

Inside a SLURM job (``SLURM_JOB_ID`` is set), a training process turns two signals into a stop
request instead of dying: SIGTERM (``scancel``, ``scontrol requeue``, preemption: SLURM kills
the job ``KillWait`` / ``GraceTime`` seconds later) and submitit's time-limit warning
(``SUBMITIT_PREEMPT_SIGNAL``, default SIGUSR2, sent ``--signal`` seconds before the limit).
:class:`engine.run.Run` asks :func:`agreed` after every update; once every rank agrees, the loop
writes its checkpoint at that update boundary (a loop that cannot checkpoint mid-epoch stops
there and keeps its last epoch checkpoint) and the process exits with :data:`STOPPED_EXIT`.
The requeued job runs the same command, which resumes to the numbers of an uninterrupted run.

Outside SLURM nothing is installed: SIGTERM kills as it always did.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping

import torch
import torch.distributed as dist

from .distributed import Context

#: Exit status of a run that stopped on a signal after its checkpoint (EX_TEMPFAIL: retry).
STOPPED_EXIT = 75
#: Updates between the ranks' agreement on a stop (one small all-reduce); one process checks
#: after every update.
CHECK_EVERY = 10

_requested: str | None = None  # the name of the signal that asked for a stop
_previous: dict[int, object] = {}  # the handlers install() replaced


class Stopped(SystemExit):
    """The run stopped on a signal at an update boundary (exit status :data:`STOPPED_EXIT`)."""

    def __init__(self) -> None:
        super().__init__(STOPPED_EXIT)


def stop_signals(env: Mapping[str, str] | None = None) -> tuple[signal.Signals, ...]:
    """The signals that ask for a stop in this environment: none outside a SLURM job."""
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID"):
        return ()
    warning = env.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return tuple(dict.fromkeys((signal.SIGTERM, signal.Signals[f"SIG{warning}"])))


def install(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Turn :func:`stop_signals` into stop requests (main thread only); returns their names."""
    global _requested
    _requested = None
    if threading.current_thread() is not threading.main_thread():
        return ()
    for sig in stop_signals(env):
        _previous.setdefault(sig, signal.getsignal(sig))
        signal.signal(sig, _request)
    return tuple(sig.name for sig in _previous)


def uninstall() -> None:
    """Put back the handlers :func:`install` replaced (a worker process runs many runs)."""
    while _previous:
        sig, handler = _previous.popitem()
        signal.signal(sig, handler)


def installed() -> bool:
    return bool(_previous)


def requested() -> str | None:
    """The signal that asked this process to stop, if one did."""
    return _requested


def _request(signum: int, frame: object) -> None:
    global _requested
    _requested = _requested or signal.Signals(signum).name


def agreed(ctx: Context, update: int) -> bool:
    """Whether the run stops after this update: a request on any rank, seen by all of them at
    the same update (every :data:`CHECK_EVERY` updates when there are several ranks)."""
    if not _previous:
        return False
    if not ctx.distributed:
        return _requested is not None
    if update % CHECK_EVERY:
        return False
    flag = torch.tensor([int(_requested is not None)], device=_collective_device(ctx))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _collective_device(ctx: Context) -> torch.device:
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
