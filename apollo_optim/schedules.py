"""The paper's learning-rate schedules, each with an optional linear warmup.

:func:`lr_at` is the whole schedule as a pure function of the step count;
:class:`Schedule` applies it to an optimizer as a standard
``torch.optim.lr_scheduler.LRScheduler`` (closed form, so resuming from a
``state_dict`` gives exactly the uninterrupted sequence).

A "step" is whatever the loop counts: classification and language modelling
step the schedule once per epoch (after the epoch, as the paper's scripts do);
NMT steps it once per update. Milestones, ``total_steps`` and ``warmup`` are in
those units and are absolute (a milestone at 250,000 updates is at update
250,000 whatever the warmup).

Apollo and AdaHessian warm up *inside* the optimizer (their ``warmup`` and
``init_lr`` arguments); give them a schedule without warmup, never both.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

import torch

SCHEDULES = ("constant", "milestone", "cosine", "inverse_sqrt", "exponential")


def _validate(
    kind: str,
    warmup: int,
    init_lr: float,
    milestones: Sequence[int],
    decay_rate: float,
    total_steps: int | None,
    last_lr: float,
    gamma: float,
) -> None:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; known schedules: {', '.join(SCHEDULES)}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if init_lr < 0:
        raise ValueError(f"init_lr must be >= 0, got {init_lr}")
    if any(not isinstance(m, int) or m < 0 for m in milestones) or list(milestones) != sorted(
        set(milestones)
    ):
        raise ValueError(f"milestones must be increasing non-negative integers, got {milestones}")
    if kind == "milestone" and not 0.0 < decay_rate <= 1.0:
        raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate}")
    if kind == "cosine" and (not isinstance(total_steps, int) or total_steps <= 0):
        raise ValueError(f"cosine needs total_steps, a positive integer, got {total_steps!r}")
    if last_lr < 0:
        raise ValueError(f"last_lr must be >= 0, got {last_lr}")
    if kind == "inverse_sqrt" and warmup == 0:
        raise ValueError("inverse_sqrt needs warmup > 0 (lr = lr * sqrt(warmup / step) after it)")
    if kind == "exponential" and not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")


def lr_at(
    step: int,
    base_lr: float,
    kind: str,
    *,
    warmup: int = 0,
    init_lr: float = 0.0,
    milestones: Sequence[int] = (),
    decay_rate: float = 0.1,
    total_steps: int | None = None,
    last_lr: float = 0.0,
    gamma: float = 1.0,
) -> float:
    """The learning rate used during step ``step`` (0-based) of a schedule.

    - warmup (any kind): ``init_lr + (base_lr - init_lr) * step / warmup`` while ``step < warmup``;
    - ``constant``: ``base_lr``;
    - ``milestone``: ``base_lr * decay_rate ** (number of milestones <= step)``;
    - ``cosine``: ``last_lr + (base_lr - last_lr) * (1 + cos(pi * step / total_steps)) / 2``,
      held at ``last_lr`` past ``total_steps`` (torch's CosineAnnealingLR for step <= total);
    - ``inverse_sqrt``: ``base_lr * sqrt(warmup / step)`` (fairseq's rule);
    - ``exponential``: ``base_lr * gamma ** (step - warmup)``.
    """
    _validate(kind, warmup, init_lr, milestones, decay_rate, total_steps, last_lr, gamma)
    if step < warmup:
        return init_lr + (base_lr - init_lr) * step / warmup
    if kind == "milestone":
        return base_lr * decay_rate ** bisect_right(milestones, step)
    if kind == "cosine":
        t = min(step, total_steps)
        return last_lr + (base_lr - last_lr) * (1.0 + math.cos(math.pi * t / total_steps)) / 2.0
    if kind == "inverse_sqrt":
        return base_lr * math.sqrt(warmup / step)
    if kind == "exponential":
        return base_lr * gamma ** (step - warmup)
    return base_lr


class Schedule(torch.optim.lr_scheduler.LRScheduler):
    """Sets every param group's lr to :func:`lr_at` of its initial lr at each ``step()``.

    Example (the paper's CIFAR-10 cosine schedule for SGD, stepped once per epoch)::

        schedule = optim.Schedule(opt, "cosine", total_steps=200, last_lr=1e-4)
        for epoch in range(200):
            train_one_epoch(...)
            schedule.step()

    Resume by constructing it with the same arguments and calling
    ``load_state_dict``; the state holds only plain Python values.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str,
        *,
        warmup: int = 0,
        init_lr: float = 0.0,
        milestones: Sequence[int] = (),
        decay_rate: float = 0.1,
        total_steps: int | None = None,
        last_lr: float = 0.0,
        gamma: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        milestones = list(milestones)
        _validate(kind, warmup, init_lr, milestones, decay_rate, total_steps, last_lr, gamma)
        self.kind = kind
        self.options = {
            "warmup": warmup,
            "init_lr": init_lr,
            "milestones": milestones,
            "decay_rate": decay_rate,
            "total_steps": total_steps,
            "last_lr": last_lr,
            "gamma": gamma,
        }
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [lr_at(self.last_epoch, base, self.kind, **self.options) for base in self.base_lrs]

    _get_closed_form_lr = get_lr
