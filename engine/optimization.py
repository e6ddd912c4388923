"""The run config's ``optimizer`` and ``schedule`` sections -> ``apollo_optim`` objects, and
:func:`build_training`: what every task's loop trains, built before its run directory opens.

``optimizer`` is ``{"name": <registry name>, **constructor kwargs}``; ``schedule`` is
``{"name", "kind", "unit", **optim.Schedule kwargs}``. The warmup of Apollo and AdaHessian
lives in the optimizer's kwargs, never in the schedule (``engine.config`` rejects both).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

import apollo_optim as optim

from . import amp
from .checkpoint import seed_everything
from .config import schedule_kwargs


@dataclass
class Training:
    """What a task's loop trains: the model (on its device, not DDP-wrapped), its optimizer
    with the registry record (``spec.needs_create_graph``), the schedule and the fp16 scaler."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    spec: optim.OptimizerSpec
    schedule: optim.Schedule
    scaler: torch.amp.GradScaler | None


def build_training(
    config: Mapping[str, Any],
    rank: int,
    device: torch.device,
    make_model: Callable[[], torch.nn.Module],
) -> Training:
    """Seed, build the model (``make_model()``, on ``device``), its optimizer, schedule and
    scaler, then reseed for this rank.

    Every rank draws the initial weights from ``seed`` alone (identical models without a
    broadcast); afterwards the generators are reseeded with ``seed + rank``, so augmentation
    and dropout draws differ between ranks. A bad model or optimizer value is a ValueError
    here, before anything is written.
    """
    where = str(config["config"])
    seed_everything(config["seed"])
    try:
        model = make_model()
    except ValueError as exc:  # torch's own checks (dropout, sizes) name no file
        raise ValueError(exc if str(exc).startswith(where) else f"{where}: model: {exc}") from None
    try:
        optimizer, spec = build_optimizer(model.parameters(), config["optimizer"])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    try:
        schedule = build_schedule(optimizer, config)
    except ValueError as exc:  # optim.Schedule's checks name no file
        raise ValueError(f"{where}: schedule: {exc}") from None
    scaler = amp.grad_scaler(device, config["amp"])
    seed_everything(config["seed"] + rank)
    return Training(model, optimizer, spec, schedule, scaler)


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


def applied_lr(optimizer: torch.optim.Optimizer, *, upcoming: bool = False) -> float:
    """The learning rate the optimizer's last step applied to its first parameter group
    (``upcoming``: the one its next step will apply, given the group's lr now).

    Apollo and AdaHessian warm up inside the optimizer: for their first ``warmup`` steps they
    apply ``init_lr + (base_lr - init_lr) * t / warmup`` at step count t, whatever the group's
    ``lr`` (a schedule's) says, and a group at lr 0 does not move. Other optimizers apply the
    group's ``lr``. Read from the group and the optimizer's step count (a host read where the
    count lives on a GPU: call it at log points).
    """
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    warmup = group.get("warmup") or 0
    if warmup <= 0 or lr == 0 or group.get("base_lr") is None or group.get("init_lr") is None:
        return lr
    states = (optimizer.state.get(p) or {} for p in group["params"])  # get: adds no entry
    counts = (state["step"] for state in states if "step" in state)
    t = int(next(counts, 0))  # the count before the next step
    if not upcoming:
        t = max(t - 1, 0)  # the count before the last step
    return optim.warmup_lr(group, t)


def build_schedule(optimizer: torch.optim.Optimizer, config: Mapping[str, Any]) -> optim.Schedule:
    """``optim.Schedule`` for the run config's ``schedule`` section.

    Its length (cosine's ``total_steps`` unless the section sets it) is the run's length in the
    schedule's unit: ``epochs`` for ``unit: epoch``, ``max_updates`` for ``unit: update``.
    """
    section = config["schedule"]
    steps = config["max_updates"] if section["unit"] == "update" else config["epochs"]
    return optim.Schedule(optimizer, section["kind"], **schedule_kwargs(section, steps))


def restore_schedule(schedule: optim.Schedule, state: Mapping[str, Any]) -> None:
    """Resume ``schedule`` at the checkpoint's position with the *current* config's options.

    Only the position (``last_epoch``) comes from the checkpoint, so a resume that changes
    nothing the schedule depends on continues it exactly; the lrs come from the closed form.
    The schedule is put one step before the position and stepped (public API only); the
    optimizer has not stepped in this process yet, which torch would warn about.
    """
    schedule.load_state_dict({"last_epoch": int(state["last_epoch"]) - 1})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
        schedule.step()
