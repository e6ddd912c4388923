"""Sharded parameters (FSDP2 / DTensor) and the checks that keep every update exact.

Apollo's rule takes sums, norms and maxima over each *whole* parameter tensor
(``docs/update_rules.md``: "parameter-wise"). Under FSDP2 a parameter is a ``DTensor``
whose local tensor is one rank's shard, so the optimizers run the elementwise work on the
local shards and all-reduce each per-tensor reduction over the mesh dimensions the tensor
is sharded on:
the result equals a one-process run up to float rounding.

FSDP1 hands the optimizer flat 1-D shards (a ``FlatParameter``, or flat views of the
original parameters with ``use_orig_params=True``) that mix tensors and cut them at
arbitrary offsets; a per-tensor reduction over such a shard is a different update, so
those parameters are refused (see :func:`check_params`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist


def _dtensor_module():
    """The module defining DTensor and its placements, if it was imported. DTensor parameters
    exist only once it is, and importing it costs seconds: look it up instead of importing it
    with the optimizers. Recent torch has it as ``torch.distributed.tensor``; torch 2.4 only as
    ``torch.distributed._tensor`` (its ``torch.distributed.tensor`` holds only ``parallel``)."""
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        mod = sys.modules.get(name)
        if getattr(mod, "DTensor", None) is not None:
            return mod
    return None


def is_dtensor(t: torch.Tensor) -> bool:
    mod = _dtensor_module()
    return mod is not None and isinstance(t, mod.DTensor)


def check_params(name: str, params: Iterable[torch.Tensor], *, elementwise: bool) -> None:
    """Refuse parameters whose per-tensor reductions this optimizer cannot take exactly.

    ``elementwise``: the rule has no per-tensor reduction (AdaBelief without 'stable'
    decay), so FSDP1's flat shards are fine for it, as they are for torch's Adam.
    """
    for p in params:
        if getattr(p, "_fsdp_flattened", False) and not elementwise:
            raise ValueError(
                f"{name} does not support FSDP1 (FullyShardedDataParallel): its flat parameter "
                "shards mix tensors, so the rule's per-tensor reductions would be taken over the "
                "wrong elements; use FSDP2 (torch.distributed.fsdp.fully_shard) or DDP"
            )
        if is_dtensor(p):
            mod = _dtensor_module()
            for placement in p.placements:
                # exact types: Shard's subclasses (strided shards of FSDP2 + TP) cut a
                # dimension in pieces that the reductions below do not know about
                if type(placement) not in (mod.Shard, mod.Replicate):
                    raise ValueError(
                        f"{name} supports DTensor parameters that are sharded (Shard) or "
                        f"replicated (Replicate) on each mesh dimension, not {placement}"
                    )


def to_local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (the same storage, so in-place updates land), else ``t``."""
    return t._local_tensor if is_dtensor(t) else t


class Shards:
    """Per-tensor reductions over the whole of each (possibly sharded) tensor.

    ``sum_`` and ``max_`` take a tensor whose first dimension runs over ``params`` (one
    row of local partial results per parameter) and all-reduce every row over the mesh
    dimensions its parameter is sharded on; rows of plain tensors are left alone.
    """

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.numel = [p.numel() for p in params]  # a DTensor's numel is the global one
        groups: dict[tuple, tuple] = {}  # (mesh, sharded mesh dims) -> rows
        for i, p in enumerate(params):
            if is_dtensor(p):
                dims = tuple(d for d, pl in enumerate(p.placements) if pl.is_shard())
                if dims:
                    key = (id(p.device_mesh), dims)
                    groups.setdefault(key, (p.device_mesh, dims, []))[2].append(i)
        self._groups = list(groups.values())

    def _reduce(self, values: torch.Tensor, op) -> torch.Tensor:
        for mesh, dims, idx in self._groups:
            rows = values[idx] if len(idx) < len(values) else values
            for d in dims:
                dist.all_reduce(rows, op=op, group=mesh.get_group(d))
            if rows is not values:
                values[idx] = rows
        return values

    def mean(self, i: int, local: torch.Tensor) -> torch.Tensor:
        """The mean of the whole ``i``-th tensor, from its local shard ``local``."""
        total = local.sum().reshape(1)
        for mesh, dims, idx in self._groups:
            if i in idx:
                for d in dims:
                    dist.all_reduce(total, group=mesh.get_group(d))
        return total[0] / self.numel[i]

    def sum_(self, values: torch.Tensor) -> torch.Tensor:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max_(self, values: torch.Tensor) -> torch.Tensor:
        return self._reduce(values, dist.ReduceOp.MAX)
