"""Address and block tables for the fused kernels, built once per parameter set.

A Triton kernel takes a fixed list of arguments, so a step over any number of tensors
passes each list of tensors (parameters, gradients, each state) as a device table of
their addresses. The block table maps each program of a launch to one block of one
tensor. Tables of tensors that persist across steps (parameters, state) are built when
the parameter set changes; the gradients' table is re-sent only when their addresses
change (``zero_grad(set_to_none=True)`` usually hands back the same memory). Nothing here
waits for the device: host tables go up from pinned memory without blocking.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

# Elements per program (a power of two). On CUDA 2048 keeps the partial sums of a 16M-element
# tensor to 8k numbers; in the interpreter a small block makes the test tensors span several
# blocks (and each Triton op costs the same whatever the block size there).
CUDA_BLOCK = 2048
INTERPRETER_BLOCK = 16
CUDA_WARPS = 8
ALIGNMENT = 16  # bytes, the width of the vector loads that aligned addresses allow


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


def block_size(device: torch.device) -> int:
    return INTERPRETER_BLOCK if device.type == "cpu" and interpreting() else CUDA_BLOCK


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` on ``device`` without waiting for the device (pinned, non-blocking)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def addresses(tensors: Sequence[torch.Tensor]) -> list[int]:
    return [t.data_ptr() for t in tensors]


class Tables:
    """The tables of one list of tensors on one device.

    ``rows``: lists of tensors whose addresses go into the address tables, one per list;
    they are kept alive here so that their addresses stay valid. Sizes come from the first
    row; the last ``counters`` rows hold step counters, read one number per tensor."""

    def __init__(
        self, rows: Sequence[Sequence[torch.Tensor]], device: torch.device, counters: int = 0
    ) -> None:
        first = rows[0]
        self.n = len(first)
        self.device = device
        self.block = block_size(device)
        numels = [t.numel() for t in first]
        counts = [-(-k // self.block) for k in numels]
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        self.nblocks = starts[-1]
        self._rows = [list(r) for r in rows]
        self._contiguous = [t.is_contiguous() for t in first]
        host = torch.tensor([addresses(r) for r in rows], dtype=torch.int64)
        walked = host[: len(rows) - counters]
        self._aligned = {"static": bool((walked % ALIGNMENT == 0).all())}
        self.ptrs = upload(host, device).unbind()  # one address table per row
        self.numels = upload(torch.tensor(numels, dtype=torch.int64), device)
        self.first_block = upload(torch.tensor(starts, dtype=torch.int32), device)
        counts_t = torch.tensor(counts, dtype=torch.int64)
        owner = torch.repeat_interleave(torch.arange(self.n, dtype=torch.int32), counts_t)
        # each block's first element: its index within its tensor times the block size
        within = torch.arange(self.nblocks, dtype=torch.int64) - torch.repeat_interleave(
            torch.tensor(starts[:-1], dtype=torch.int64), counts_t
        )
        self.block_tensor = upload(owner, device)
        self.block_start = upload(within * self.block, device)
        self._dynamic: dict[str, tuple[list[int], torch.Tensor, torch.Tensor]] = {}
        self._buffers: dict[str, tuple[torch.Tensor, ...]] = {}

    def dynamic(self, name: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The address table of ``tensors`` (gradients), sent again only when they moved.

        The tensors are not kept alive: what matters is their addresses, compared every step.
        The pinned host copy is kept, as a captured CUDA graph copies from it on replay."""
        ptrs = addresses(tensors)
        entry = self._dynamic.get(name)
        if entry is None or entry[0] != ptrs:
            host = torch.tensor(ptrs, dtype=torch.int64)
            if self.device.type == "cuda":
                host = host.pin_memory()
            entry = (ptrs, host.to(self.device, non_blocking=True), host)
            self._dynamic[name] = entry
            self._aligned[name] = all(a % ALIGNMENT == 0 for a in ptrs)
        return entry[1]

    @property
    def aligned(self) -> bool:
        """Whether every address walked by the kernels is a multiple of 16 bytes (then full
        blocks use 16-byte memory accesses). Never under the interpreter, where the hint
        does nothing but cost a call per load."""
        return all(self._aligned.values()) and not interpreting()

    def laid_out(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``grads``, where one is laid out unlike its parameter replaced by a copy laid out
        like it (autograd gives a parameter's layout; a user's assignment may not)."""
        params = self._rows[0]
        for i, (g, c) in enumerate(zip(grads, self._contiguous, strict=True)):
            if not (c and g.is_contiguous()) and not matching(g, params[i]):
                grads = list(grads)
                grads[i] = like(g, params[i])
        return grads

    def buffer(self, name: str, rows: int, per_block: bool) -> tuple[torch.Tensor, ...]:
        """``rows`` float32 device buffers of one number per block (partial sums) or per
        tensor (scalars), reused across steps."""
        bufs = self._buffers.get(name)
        if bufs is None:
            size = self.nblocks if per_block else self.n
            bufs = torch.empty(rows, size, dtype=torch.float32, device=self.device).unbind()
            self._buffers[name] = bufs
        return bufs

    @property
    def blocks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The arguments of ``common.locate``."""
        return self.block_tensor, self.block_start, self.numels


def matching(t: torch.Tensor, p: torch.Tensor) -> bool:
    """Whether the kernels can walk ``t`` with ``p``'s element order: same dtype, device,
    shape and strides (the kernels index memory linearly)."""
    if t.dtype != p.dtype or t.device != p.device or t.shape != p.shape:
        return False
    # strides of size-1 dimensions never matter
    return all(a == b for a, b, n in zip(t.stride(), p.stride(), p.shape, strict=True) if n > 1)


def like(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``t`` itself if :func:`matching`, else a copy laid out like ``p``."""
    if matching(t, p):
        return t
    return torch.empty_like(p).copy_(t)
