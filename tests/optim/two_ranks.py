"""Two gloo processes on the CPU for the distributed tests, meeting through a file.

The rendezvous is a file in the test's own folder (``init_method="file://..."``), not a TCP
port: a port picked free beforehand can be taken by any other process on the machine in the
seconds before rank 0 binds it (the children import torch first), and then the test fails
with "address already in use" for reasons of its own. The children also run with the
parent's torch thread count, so that their float results can equal the parent's bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def spawn(worker: Callable[..., None], folder: Path, *args) -> None:
    """Run ``worker(rank, folder, *args)`` on ranks 0 and 1 of a fresh gloo process group.
    ``worker`` must be a module-level function (it is pickled by reference)."""
    rendezvous = Path(folder) / "rendezvous"
    rendezvous.unlink(missing_ok=True)
    # spawn, not fork: a child forked from a process whose OpenMP pool is running can hang
    mp.spawn(_entry, args=(worker, str(folder), torch.get_num_threads(), args), nprocs=2)


def _entry(rank: int, worker, folder: str, threads: int, args: tuple) -> None:
    torch.set_num_threads(threads)
    init = f"file://{Path(folder).resolve() / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        worker(rank, folder, *args)
    finally:
        dist.destroy_process_group()
