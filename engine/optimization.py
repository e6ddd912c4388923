"""The run config's ``optimizer`` and ``schedule`` sections -> ``optim`` objects.

``optimizer`` is ``{"name": <registry name>, **constructor kwargs}``; ``schedule`` is
``{"name", "kind", "unit", **optim.Schedule kwargs}``. The warmup of Apollo and AdaHessian
lives in the optimizer's kwargs, never in the schedule (``engine.config`` rejects both).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

import optim

from .config import schedule_kwargs


def build_optimizer(
    params: Iterable, section: Mapping[str, Any]
) -> tuple[torch.optim.Optimizer, optim.OptimizerSpec]:
    """``optim.create(name, params, **kwargs)`` and the registry spec (``needs_create_graph``)."""
    kwargs = {k: v for k, v in section.items() if k != "name"}
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])
    spec = optim.get(section["name"])  # ValueError listing the registered names
    try:
        return spec.create(params, **kwargs), spec
    except TypeError as exc:  # an argument the constructor does not take
        raise ValueError(f"optimizer {spec.name!r} rejected its arguments: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"optimizer {spec.name!r}: {exc}") from None


def build_schedule(
    optimizer: torch.optim.Optimizer, section: Mapping[str, Any], steps: int
) -> optim.Schedule:
    """``optim.Schedule`` for a ``schedule`` section; ``steps`` is its length in its unit."""
    return optim.Schedule(optimizer, section["kind"], **schedule_kwargs(section, steps))


def restore_schedule(
    schedule: optim.Schedule, state: Mapping[str, Any], optimizer: torch.optim.Optimizer
) -> None:
    """Resume ``schedule`` at the checkpoint's position with the *current* config's options.

    Only the position (``last_epoch``) comes from the checkpoint, so a resume with a longer
    ``--epochs`` stretches a cosine schedule instead of keeping the old length; each group's
    lr is then recomputed from the closed form (identical when nothing changed).
    """
    schedule.last_epoch = int(state["last_epoch"])
    lrs = schedule.get_lr()
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    schedule._last_lr = list(lrs)
