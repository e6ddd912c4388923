"""``torch.distributed`` under torchrun: setup, DDP wrapping, rank-0 logging, gathering.

The same command runs on one process or under ``torchrun --nproc_per_node=N -m <task>.train``
(or as SLURM tasks, ``scripts.slurm``); :func:`setup` reads the launcher's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and picks NCCL on GPUs and gloo
on CPU (how the tests run two processes). Every helper is a no-op on a single process, so task
code never branches on the world size.

**A lost peer stops the run.** Every collective waits at most ``timeout_min`` minutes (a run's
``--dist-timeout``, default 10, see ``engine.config``; torch's own is 30); a rank whose peer
died, froze or never came then ends with one line (:class:`PeerLost`) instead of a traceback
or a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Context:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class PeerLost(ValueError):
    """A collective failed or timed out: another rank died, froze or never joined (one line)."""


def setup(device: str, timeout_min: float | None = None) -> Context:
    """Initialise the process group when launched by torchrun (or as SLURM tasks, with the same
    variables); pin this rank's GPU. Collectives wait at most ``timeout_min`` minutes (None:
    torch's default)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = None if timeout_min is None else datetime.timedelta(minutes=timeout_min)
        with _peer_errors(rank, timeout_min):
            dist.init_process_group(
                backend="nccl" if dev.type == "cuda" else "gloo", timeout=timeout
            )
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str, timeout_min: float | None = None) -> Iterator[Context]:
    """:func:`setup` ... :func:`cleanup`, with a barrier first when the body succeeded: a rank
    that tears gloo down while another still finishes its last collective can abort
    ("terminate called without an active exception"; seen in 1 of 6 two-rank CPU runs).
    A failed or timed-out collective inside ends as :class:`PeerLost`."""
    ctx = setup(device, timeout_min)
    try:
        with _peer_errors(ctx.rank, timeout_min):
            yield ctx
            barrier(ctx)
    finally:
        cleanup()


@contextlib.contextmanager
def _peer_errors(rank: int, timeout_min: float | None) -> Iterator[None]:
    """A backend's error of a collective (gloo raises RuntimeError, NCCL DistBackendError) as
    one :class:`PeerLost` line; NCCL's watchdog may instead abort the process at the timeout."""
    try:
        yield
    except RuntimeError as exc:
        message = str(exc).strip()
        if not (isinstance(exc, dist.DistError) or _BACKEND_ERROR.search(message)):
            raise
        first = _SOURCE_PREFIX.sub("", message.splitlines()[0] if message else type(exc).__name__)
        waits = "torch's default" if timeout_min is None else f"{timeout_min:g} min"
        raise PeerLost(
            f"rank {rank}: the other ranks did not answer ({first.split('. ')[0]}): a peer "
            f"died, froze or never started (collectives wait --dist-timeout: {waits}); "
            "relaunch the same command to resume from the last checkpoint"
        ) from None


#: What gloo and NCCL say when a peer is gone: "Timed out waiting 6000ms for recv operation",
#: "Application timeout caused pair closure", "Connection reset by peer", ...
_BACKEND_ERROR = re.compile(
    r"gloo|nccl|time ?out|timed out|connection (reset|closed|refused)|broken pipe|pair closure",
    re.IGNORECASE,
)
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*")


def wrap(
    model: torch.nn.Module, ctx: Context, *, find_unused_parameters: bool = False
) -> torch.nn.Module:
    """DDP-wrap ``model`` when there are several ranks (it must already be on ``ctx.device``).

    ``find_unused_parameters`` is for models whose steps leave some parameters without a
    gradient (the LM's adaptive softmax skips tail clusters no target of the batch falls in).
    """
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (what checkpoints store)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def no_sync(model: torch.nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce for this backward (gradient accumulation micro-batches)."""
    if skip_sync and isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def broadcast_buffers(model: torch.nn.Module, ctx: Context) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP does this at each forward that syncs gradients, but not after ``no_sync`` steps (a
    second-order optimizer's): call it before evaluating and checkpointing.
    """
    if ctx.distributed:
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def gather_objects(obj: Any, ctx: Context) -> list[Any]:
    """Every rank's ``obj`` (e.g. its RNG state), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def check_same(values: Mapping[str, Any], ctx: Context, what: str) -> None:
    """One collective: every rank's ``values`` must equal rank 0's, else every rank raises the
    same :class:`RanksDiffer` line naming the first rank that differs and where."""
    if not ctx.distributed:
        return
    everyone = gather_objects(dict(values), ctx)
    first = everyone[0]
    for rank, other in enumerate(everyone[1:], 1):
        keys = sorted(set(first) | set(other))
        diffs = [
            f"{k}: rank 0 {first.get(k)!r}, rank {rank} {other.get(k)!r}"
            for k in keys
            if first.get(k) != other.get(k)
        ]
        if diffs:
            raise RanksDiffer(f"{what}: rank {rank} differs from rank 0 ({'; '.join(diffs)})")


class RanksDiffer(ValueError):
    """The ranks of one run do not see the same run (one line naming the rank)."""


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def split_batch(global_batch: int, ctx: Context) -> int:
    """The per-rank batch size of a global batch (the paper's 256 over 8 GPUs is 32 each)."""
    if global_batch % ctx.world_size:
        raise ValueError(
            f"batch_size {global_batch} does not split evenly over {ctx.world_size} ranks"
        )
    return global_batch // ctx.world_size


class RunLogFile(logging.FileHandler):
    """``train.log``: a write that fails (a full disk) stops the run with one line naming the
    file, instead of logging's traceback on stderr and a run that goes on unlogged."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            raise _write_error(Path(self.baseFilename), exc) from None
        super().handleError(record)


def _write_error(path: Path, exc: OSError) -> ValueError:
    from .checkpoint import WriteError  # torch-free import of this module stays cheap

    return WriteError(f"cannot write {path}: {exc.strerror or exc}")


def get_logger(
    ctx: Context, out_dir: str | Path | None = None, name: str = "run"
) -> logging.Logger:
    """A logger that prints on rank 0 (to stdout and ``out_dir/train.log``); quiet elsewhere."""
    logger = logging.getLogger(f"engine.{name}")
    for old in list(logger.handlers):  # a second run in one process must not leak open files
        old.close()
        logger.removeHandler(old)
    logger.propagate = False
    logger.setLevel(logging.INFO if ctx.is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if out_dir is not None and ctx.is_main:
        path = Path(out_dir) / "train.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(RunLogFile(path))
        except OSError as exc:
            raise _write_error(path, exc) from None
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger
