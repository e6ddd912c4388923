"""One argument check for every optimizer (and schedule) of the package.

Each optimizer states the rules of its arguments as data (a tuple of :class:`Rule`) and
checks its constructor's arguments, and every group that ``add_param_group`` receives
before it joins, with :func:`validate`; the baselines check their ``weight_decay_type``
and :class:`~apollo_optim.Schedule` its options the same way. A bad value is a ``ValueError``
naming the argument and the requirement, never a ZeroDivisionError later; a test that raises
``TypeError`` or ``ValueError`` (a string where a number belongs) counts as failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch


class Rule(NamedTuple):
    """``test(value, args)`` must hold for the argument ``name`` (``args``: all arguments)."""

    name: str
    test: Callable[[Any, Mapping[str, Any]], bool]
    requirement: str


def validate(owner: str, args: Mapping[str, Any], rules: Iterable[Rule]) -> None:
    """``ValueError("<owner>: invalid <name>=<value> (<requirement>)")`` for the first
    rule that ``args`` break; arguments absent from ``args`` are not checked."""
    for name, test, requirement in rules:
        if name not in args:
            continue
        try:
            ok = bool(test(args[name], args))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{owner}: invalid {name}={args[name]!r} ({requirement})")


def lr_value(lr: Any) -> float:
    """A learning rate as a number: torch.optim accepts one-element tensors (a compiled step
    reads them without recompiling)."""
    value = lr.item() if isinstance(lr, torch.Tensor) and lr.numel() == 1 else lr
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a learning rate: {lr!r}")
    return float(value)


def one_of(name: str, choices: tuple) -> Rule:
    return Rule(name, lambda v, _: v in choices, f"must be one of {choices}")


def optional(rule: Rule) -> Rule:
    """``rule``, or None (the optimizer then derives a default)."""
    requirement = f"None, or {rule.requirement}"
    return Rule(rule.name, lambda v, a: v is None or rule.test(v, a), requirement)


def exclusive(name: str, other: str) -> Rule:
    """``name`` and ``other`` select two different code paths: not both."""
    return Rule(name, lambda v, a: not (v and a.get(other)), f"{name} and {other} are two paths")


LR = Rule("lr", lambda v, _: lr_value(v) >= 0, "must be a number >= 0 or a one-element tensor")
BETAS = Rule(
    "betas", lambda v, _: len(v) == 2 and all(0 <= b < 1 for b in v), "each must be in [0, 1)"
)
EPS = Rule("eps", lambda v, _: v > 0, "must be > 0")
WEIGHT_DECAY = Rule("weight_decay", lambda v, _: v >= 0, "must be >= 0")
WEIGHT_DECAY_TYPES = ("L2", "decoupled", "stable")
WARMUP = Rule("warmup", lambda v, _: v >= 0 and float(v).is_integer(), "must be an integer >= 0")
INIT_LR = Rule("init_lr", lambda v, a: 0 <= v <= lr_value(a["lr"]), "must be in [0, lr]")
FUSED = Rule("fused", lambda v, _: v in (None, True, False), "must be None, True or False")
