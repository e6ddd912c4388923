"""What the conformance suite needs to know about each registered optimizer, as data.

Like torch's ``OptimizerInfo``: the implementations an optimizer has (each a set of
constructor flags, or a step traced by ``torch.compile``), the dtypes each runs in, the
keyword arguments the implementation checks use (weight decay on, so that its copy of the
gradient is exercised) and the table of bad arguments with the name each error must cite.
``conformance.py`` runs every check over optimizer x implementation x dtype from here; an
optimizer registered without an entry (a user's plugin, the docs' example) gets
:func:`default_info`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

F32, F64 = torch.float32, torch.float64


@dataclass(frozen=True)
class Implementation:
    """One implementation of an optimizer: built with ``flags``; ``compiled``: its step is
    traced by ``torch.compile`` (the tensor-scalar path); ``fused``: the Triton kernels, run
    on CUDA or under ``TRITON_INTERPRET=1`` only (``tests/optim/fused``)."""

    name: str
    flags: Mapping[str, Any] = field(default_factory=dict)
    dtypes: tuple[torch.dtype, ...] = (F64, F32)
    compiled: bool = False
    fused: bool = False

    @property
    def device(self) -> str:
        """Where the checks put its parameters: the fused kernels' on CUDA when there is one
        (else CPU tensors, under Triton's interpreter)."""
        return "cuda" if self.fused and torch.cuda.is_available() else "cpu"


DEFAULT = Implementation("default", dtypes=(F64,))


@dataclass(frozen=True)
class OptimizerInfo:
    name: str
    implementations: tuple[Implementation, ...] = (DEFAULT,)
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # (arguments, a pattern the ValueError's message must match: the argument's name)
    bad_arguments: tuple[tuple[dict, str], ...] = (({"lr": -1.0}, r"\blr\b"),)
    # the package's own optimizers also validate add_param_group's groups and refuse
    # sparse gradients with a ValueError
    ours: bool = False

    def __str__(self) -> str:
        return self.name


def arg(name: str) -> str:
    """The pattern of our messages: ``<Optimizer>: invalid <name>=<value> (...)``."""
    return rf"\b{name}="


COMPILED = Implementation("compiled", dtypes=(F64,), compiled=True)
FUSED = Implementation("fused", {"fused": True}, dtypes=(F32,), fused=True)
WEIGHT_DECAY_TYPE = (({"weight_decay_type": "l1"}, arg("weight_decay_type")),)
BETAS = (
    ({"betas": (1.0, 0.999)}, arg("betas")),
    ({"betas": (0.9, -0.1)}, arg("betas")),
    ({"betas": 0.9}, arg("betas")),
)
COMMON = (
    ({"lr": -0.1}, arg("lr")),
    ({"lr": "0.1"}, arg("lr")),
    ({"eps": 0.0}, arg("eps")),
    ({"eps": "1e-8"}, arg("eps")),
    ({"weight_decay": -1e-4}, arg("weight_decay")),
    ({"fused": "yes"}, arg("fused")),
)

TORCH_LR = ({"lr": -1.0}, "Invalid learning rate")  # torch.optim's own message

APOLLO = dict(
    implementations=(
        Implementation("blocked"),  # the CPU default (foreach=None)
        Implementation("loop", {"foreach": False}),
        COMPILED,
        FUSED,
    ),
    # (Apollo's natural lr on the checks' quartic: at 1e-2 its steps of ~lr/σ·g diverge)
    kwargs=MappingProxyType({"lr": 1e-3, "warmup": 2, "weight_decay": 0.1}),
    bad_arguments=(
        *COMMON,
        *WEIGHT_DECAY_TYPE,
        ({"beta": 1.0}, arg("beta")),
        ({"beta": -0.1}, arg("beta")),
        ({"rebound": "linear"}, arg("rebound")),
        ({"sigma": 0.0}, arg("sigma")),
        ({"warmup": -1}, arg("warmup")),
        ({"warmup": 2.5}, arg("warmup")),
        ({"init_lr": -1e-5}, arg("init_lr")),
        ({"lr": 0.01, "init_lr": 0.5}, arg("init_lr")),  # > lr
        ({"fused": True, "compiled": True}, arg("fused")),
        ({"fused": True, "foreach": True}, arg("fused")),
    ),
    ours=True,
)

INFOS = {
    "apollo": OptimizerInfo("apollo", **APOLLO),
    # Apollo's class with decoupled decay by default: the traced and fused forms of that decay
    # are in the parity grids of test_apollo.py (the loop is the traced code, run eagerly)
    # and fused/test_fused_apollo.py
    "apollow": OptimizerInfo(
        "apollow", **{**APOLLO, "implementations": APOLLO["implementations"][:2]}
    ),
    "adabelief": OptimizerInfo(
        "adabelief",
        implementations=(
            Implementation("batched"),  # the CPU default (foreach=None)
            Implementation("loop", {"foreach": False}),
            COMPILED,
            FUSED,
        ),
        kwargs=MappingProxyType({"weight_decay": 0.1, "weight_decay_type": "stable"}),
        bad_arguments=(
            *COMMON,
            *BETAS,
            *WEIGHT_DECAY_TYPE,
            ({"fused": True, "foreach": True}, arg("fused")),
        ),
        ours=True,
    ),
    "adahessian": OptimizerInfo(
        "adahessian",
        implementations=(Implementation("loop"), FUSED),
        kwargs=MappingProxyType({"warmup": 2, "init_lr": 1e-3, "weight_decay": 0.1}),
        bad_arguments=(
            *COMMON,
            *BETAS,
            ({"warmup": -1}, arg("warmup")),
            ({"warmup": 2.5}, arg("warmup")),
            ({"init_lr": -1e-3}, arg("init_lr")),
            ({"lr": 0.1, "init_lr": 0.2}, arg("init_lr")),
            ({"hessian_power": 0.0}, arg("hessian_power")),
            ({"hessian_power": 1.5}, arg("hessian_power")),
            ({"update_each": 0}, arg("update_each")),
            ({"update_each": 1.5}, arg("update_each")),
            ({"seed": "x"}, arg("seed")),
            ({"seed": -1}, arg("seed")),
        ),
        ours=True,
    ),
    # torch.optim's classes: the project only chooses their flags
    "sgd": OptimizerInfo(
        "sgd",
        kwargs=MappingProxyType({"weight_decay": 0.1}),
        bad_arguments=(TORCH_LR, ({"weight_decay_type": "decoupled"}, arg("weight_decay_type"))),
    ),
    "adam": OptimizerInfo(
        "adam",
        kwargs=MappingProxyType({"weight_decay": 0.1}),
        bad_arguments=(TORCH_LR, ({"weight_decay_type": "stable"}, arg("weight_decay_type"))),
    ),
    "radam": OptimizerInfo(
        "radam",
        kwargs=MappingProxyType({"weight_decay": 0.1}),
        bad_arguments=(TORCH_LR, ({"weight_decay_type": "stable"}, arg("weight_decay_type"))),
    ),
}


def default_info(name: str) -> OptimizerInfo:
    """An optimizer registered elsewhere: its one implementation, in float64, and lr < 0."""
    return INFOS.get(name, OptimizerInfo(name))
