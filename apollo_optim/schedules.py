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

from . import _validation as v

SCHEDULES = ("constant", "milestone", "cosine", "inverse_sqrt", "exponential")
OPTIONS = ("warmup", "init_lr", "milestones", "decay_rate", "total_steps", "last_lr", "gamma")


RULES = (
    v.one_of("kind", SCHEDULES),
    v.Rule("warmup", lambda w, _: isinstance(w, int) and w >= 0, "must be an integer >= 0"),
    v.Rule(
        "warmup",
        lambda w, a: a["kind"] != "inverse_sqrt" or w > 0,
        "inverse_sqrt needs warmup > 0: lr * sqrt(warmup / step) after it",
    ),
    v.Rule("init_lr", lambda x, _: x >= 0, "must be >= 0"),
    v.Rule(
        "milestones",
        lambda m, _: all(isinstance(x, int) and x >= 0 for x in m) and list(m) == sorted(set(m)),
        "must be increasing non-negative integers",
    ),
    v.Rule("decay_rate", lambda d, a: a["kind"] != "milestone" or 0 < d <= 1, "must be in (0, 1]"),
    v.Rule(
        "total_steps",
        lambda n, a: a["kind"] != "cosine" or (isinstance(n, int) and n > 0),
        "cosine needs a positive integer",
    ),
    v.Rule("last_lr", lambda x, _: x >= 0, "must be >= 0"),
    v.Rule("gamma", lambda g, a: a["kind"] != "exponential" or 0 < g <= 1, "must be in (0, 1]"),
)


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
    options = (warmup, init_lr, milestones, decay_rate, total_steps, last_lr, gamma)
    v.validate("Schedule", dict(zip(("kind", *OPTIONS), (kind, *options), strict=True)), RULES)
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
        self.kind = kind
        self.options = {
            "warmup": warmup,
            "init_lr": init_lr,
            "milestones": list(milestones),
            "decay_rate": decay_rate,
            "total_steps": total_steps,
            "last_lr": last_lr,
            "gamma": gamma,
        }
        v.validate("Schedule", {"kind": kind, **self.options}, RULES)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [lr_at(self.last_epoch, base, self.kind, **self.options) for base in self.base_lrs]

    _get_closed_form_lr = get_lr
