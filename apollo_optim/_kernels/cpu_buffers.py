"""CPU buffers for the optimizers' blocked steps: scratch space, and batches of same-shape
small tensors whose state lives in the rows of one matrix per state (see ``cpu_apollo``)."""

from __future__ import annotations

import torch

SMALL = 1 << 16  # tensors up to this size are batched with same-shape tensors
BLOCK = 1 << 17  # elements per batch of small tensors
SWEEP = 1 << 19  # elements per block of a large tensor's sweeps (in L3 with its temporaries)


class Buffers:
    """One optimizer's CPU buffers of one dtype, none of them state: scratch space (one
    buffer per slot, grown on demand) and the batches of small tensors."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._bufs: dict[int, torch.Tensor] = {}
        self._views: dict[tuple, torch.Tensor] = {}
        self._batches: dict[tuple, tuple] = {}

    def __call__(self, slot: int, n: int) -> torch.Tensor:
        buf = self._bufs.get(slot)
        if buf is None or buf.numel() < n:
            buf = torch.empty(max(n, BLOCK), dtype=self.dtype)
            self._bufs[slot] = buf
            self._views.clear()
        return buf[:n]

    def stacked(self, slot: int, tensors: list[torch.Tensor]) -> torch.Tensor:
        """``tensors`` (one shape) stacked into slot's buffer, as a k x n matrix."""
        key = (slot, len(tensors), tensors[0].shape)
        whole = self._views.get(key)
        if whole is None:  # views are kept: making them every step costs microseconds each
            whole = self(slot, len(tensors) * tensors[0].numel()).view(len(tensors), *key[2])
            if len(self._views) > 4096:
                self._views.clear()
            self._views[key] = whole
        if not all(x.is_contiguous() for x in tensors):  # stack would lay out= like them
            tensors = [x.contiguous() for x in tensors]
        return torch.stack(tensors, out=whole).view(len(tensors), -1)

    def batch(self, params: list[torch.Tensor], states: list[dict], names: tuple) -> list:
        """The state tensors ``names`` of k same-shape tensors as rows of k x n matrices:
        ``[(matrix, rows)]`` per name. The first time (or when the state was replaced: a
        loaded state dict), the state tensors are copied into the matrices and become views
        of their rows, so that later steps update them in place without gathering and
        scattering."""
        key = tuple(map(id, params))
        entry = self._batches.get(key)
        ids = tuple(tuple(id(st[k]) for st in states) for k in names)
        if entry is None or entry[0] != ids:
            mats = []
            for k in names:
                whole = torch.stack([st[k].contiguous() for st in states])  # logical order
                rows = whole.unbind(0)
                for st, row in zip(states, rows, strict=True):
                    st[k] = row
                mats.append((whole.view(len(states), -1), rows))
            ids = tuple(tuple(id(st[k]) for st in states) for k in names)
            if len(self._batches) > 4096:  # bounded (parameter subsets that get gradients)
                self._batches.clear()
            entry = self._batches[key] = (ids, mats)  # holds the rows: ids stay unique
        return entry[1]
