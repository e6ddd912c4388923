"""The in-optimizer warmup of Apollo and AdaHessian, and its interplay with LR schedulers.

Apollo and AdaHessian warm up *inside* the optimizer (rule step 1): for the first
``warmup`` steps the learning rate goes linearly from ``init_lr`` to the group's
``base_lr`` (its lr at construction) and the group's current ``lr`` is not read. That is
the paper's rule and stays; but an LR scheduler that changes ``lr`` in those steps is
silently ignored and its value then takes over with a jump, so the first time it happens
the optimizer says so, once, with the two ways out.
"""

from __future__ import annotations

import warnings
from typing import Any


class WarmupLRWarning(UserWarning):
    """A scheduler changed a group's lr while the optimizer's own warmup ignores it."""


def warmup_lr(group: dict[str, Any], t: float) -> float:
    """The learning rate of a step whose count before it is ``t`` (Apollo's rule step 1,
    AdaHessian's step 3): linear from ``init_lr`` to the group's ``base_lr`` over ``warmup``
    steps, then the group's current ``lr``. A group whose current lr is 0 does not move, in
    warmup too: that is what an LR scheduler at 0 and torch.distributed.checkpoint's state
    initialisation (a step with zero gradients and lr 0) expect."""
    lr = float(group["lr"])
    warmup = group["warmup"]
    if t < warmup and lr != 0:
        init_lr = group["init_lr"]
        return init_lr + (group.get("base_lr", lr) - init_lr) * t / warmup
    return lr


def warn_if_scheduled_in_warmup(name: str, group: dict[str, Any], t: int) -> bool:
    """Warn (once: the caller keeps the returned flag) when step ``t`` is inside the
    group's warmup and its lr differs from its ``base_lr``. Returns True when nothing is
    left to check: a warning was given, or the warmup is over."""
    warmup = int(group["warmup"])
    if t >= warmup:
        return True
    lr = float(group["lr"])
    if lr in (group["base_lr"], 0.0):  # a group at lr 0 stays put (the warmup honours that)
        return False
    warnings.warn(
        f"{name}: the group's lr was changed to {lr:g} (base_lr {group['base_lr']:g}) during "
        f"{name}'s own warmup (step {t} of warmup={warmup}), which ignores the lr until it "
        f"ends: at step {warmup} the scheduler's lr takes over at once. Either pass warmup=0 "
        f"and let the scheduler warm up, or leave the lr alone for the first {warmup} steps "
        "(start the schedule after the warmup).",
        WarmupLRWarning,
        stacklevel=4,
    )
    return True
