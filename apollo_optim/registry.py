"""Name -> optimizer spec: the one place an optimizer joins every comparison.

A spec records how to build the optimizer and what the training loop must do
for it (``needs_create_graph`` for second-order methods such as AdaHessian), so
loops call ``loss.backward(create_graph=spec.needs_create_graph)`` and never
compare names.

Adding an optimizer is one call, usually as a decorator in its own module::

    from apollo_optim import register

    @register("lion", summary="Lion (Chen et al., 2023)")
    class Lion(torch.optim.Optimizer): ...

A module placed in the ``apollo_optim`` package is imported by ``apollo_optim/__init__.py``
automatically; a module elsewhere is imported by the user (or by the training
scripts' ``--plugin`` flag).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

Factory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything a training loop needs to know about one registered optimizer."""

    name: str
    factory: Factory
    needs_create_graph: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""

    def create(self, params: Iterable, **kwargs: Any) -> torch.optim.Optimizer:
        return self.factory(params, **{**self.defaults, **kwargs})


_REGISTRY: dict[str, OptimizerSpec] = {}


def register(
    name: str,
    factory: Factory | None = None,
    *,
    needs_create_graph: bool | None = None,
    defaults: Mapping[str, Any] | None = None,
    summary: str = "",
    overwrite: bool = False,
):
    """Register ``factory(params, **kwargs) -> Optimizer`` under ``name``.

    ``defaults`` are keyword arguments applied before the caller's (ApolloW is
    Apollo with ``weight_decay_type='decoupled'``). ``needs_create_graph``
    defaults to the factory's ``needs_create_graph`` attribute. Without
    ``factory`` this returns a decorator. Registering a taken name raises
    ``ValueError`` unless ``overwrite=True``.
    """
    if not isinstance(name, str) or not name or name != name.strip().lower():
        raise ValueError(f"optimizer name must be a non-empty lower-case string, got {name!r}")

    def _add(f: Factory) -> Factory:
        if not callable(f):
            raise TypeError(f"register({name!r}): factory must be callable, got {f!r}")
        if name in _REGISTRY and not overwrite:
            raise ValueError(
                f"optimizer {name!r} is already registered; pass overwrite=True to replace it"
            )
        needs = needs_create_graph
        if needs is None:
            needs = bool(getattr(f, "needs_create_graph", False))
        _REGISTRY[name] = OptimizerSpec(
            name=name,
            factory=f,
            needs_create_graph=needs,
            defaults=MappingProxyType(dict(defaults or {})),
            summary=summary or (f.__doc__ or "").strip().split("\n")[0],
        )
        return f

    return _add if factory is None else _add(factory)


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive use)."""
    get(name)
    del _REGISTRY[name]


def get(name: str) -> OptimizerSpec:
    """The spec registered under ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown optimizer {name!r}; known optimizers: {', '.join(names())}"
        ) from None


def names() -> list[str]:
    """Registered optimizer names, sorted."""
    return sorted(_REGISTRY)


def create(name: str, params: Iterable, **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered under ``name`` over ``params``."""
    return get(name).create(params, **kwargs)
