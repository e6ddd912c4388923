"""Two gloo processes on the CPU for the distributed tests, meeting through a file.

The rendezvous is a file in the test's own folder (``init_method="file://..."``), not a TCP
port: a port picked free beforehand can be taken by any other process on the machine in the
seconds before rank 0 binds it (the children import torch first), and then the test fails
with "address already in use" for reasons of its own. The children also run with the
parent's torch thread count, so that their float results can equal the parent's bit for bit.
A rank that has done its work meets the other at a barrier and then leaves without destroying
the group (``os._exit``): with torch 2.4.1, destroying a gloo group right after a collective
can deadlock (in 1 of 20 runs here): the main thread joins gloo's worker thread while holding
the GIL, and the worker thread waits for the GIL to free the last collective's tensors.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = timedelta(minutes=2)


def spawn(worker: Callable[..., None], folder: Path, *args) -> None:
    """Run ``worker(rank, folder, *args)`` on ranks 0 and 1 of a fresh gloo process group.
    ``worker`` must be a module-level function (it is pickled by reference)."""
    rendezvous = Path(folder) / "rendezvous"
    rendezvous.unlink(missing_ok=True)
    # spawn, not fork: a child forked from a process whose OpenMP pool is running can hang
    args = (worker, str(folder), torch.get_num_threads(), args)
    ranks = mp.spawn(_entry, args=args, nprocs=2, join=False)
    deadline = time.monotonic() + 2 * TIMEOUT.total_seconds()
    while not ranks.join(timeout=1):  # raises when a rank failed
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            raise TimeoutError(f"the two ranks did not finish in {2 * TIMEOUT}")


def _entry(rank: int, worker, folder: str, threads: int, args: tuple) -> None:
    torch.set_num_threads(threads)
    init = f"file://{Path(folder).resolve() / 'rendezvous'}"
    # a lost peer fails the test within the timeout instead of hanging it
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=TIMEOUT)
    worker(rank, folder, *args)  # an exception ends the rank as a failure, reported by spawn
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
