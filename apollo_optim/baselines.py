"""SGD, Adam and RAdam: torch.optim's implementations, registered with the paper's flags.

The paper's baselines are not rewritten: these factories only translate the project's
common keyword ``weight_decay_type`` into the matching torch.optim class or flag, and pick
torch's fused kernels for CUDA parameters (one launch per step for every tensor, where the
per-tensor path issues several per tensor: most of a small model's step on a GPU).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from . import _validation as v
from .registry import register


def _with_fused_default(params: Iterable, kwargs: dict) -> list:
    """``params`` as a list; ``fused=True`` unless the caller chose, when every parameter is
    on CUDA (torch.optim's own default there is the multi-tensor path)."""
    params = list(params)
    if "fused" not in kwargs and "foreach" not in kwargs:
        tensors = [t for g in params for t in (g["params"] if isinstance(g, dict) else [g])]
        if tensors and all(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors):
            kwargs["fused"] = True
    return params


def _check_type(name: str, weight_decay_type: str, allowed: tuple[str, ...]) -> None:
    v.validate(
        name, {"weight_decay_type": weight_decay_type}, [v.one_of("weight_decay_type", allowed)]
    )


@register("sgd", summary="SGD with Nesterov momentum 0.9 and L2 weight decay (torch.optim.SGD)")
def sgd(
    params: Iterable,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    weight_decay_type: str = "L2",
    **kwargs,
) -> torch.optim.SGD:
    """SGD as the paper ran it: momentum 0.9, Nesterov, L2 weight decay.

    On CUDA the default is torch's fused kernel. Elsewhere ``foreach`` defaults to False:
    torch's multi-tensor Nesterov path adds the momentum buffer into ``p.grad`` in place
    when ``weight_decay == 0``, and ``step()`` must leave gradients untouched (they may be
    logged or reused); on a CPU the per-tensor path costs little next to a forward/backward.
    """
    _check_type("sgd", weight_decay_type, ("L2",))
    params = _with_fused_default(params, kwargs)
    if not kwargs.get("fused"):
        kwargs.setdefault("foreach", False)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **kwargs
    )


@register("adam", summary="Adam; decoupled weight decay is torch.optim.AdamW, L2 torch.optim.Adam")
def adam(
    params: Iterable,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_decay_type: str = "decoupled",
    **kwargs,
) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba); AdamW (Loshchilov & Hutter) when weight decay is decoupled."""
    _check_type("adam", weight_decay_type, ("decoupled", "L2"))
    params = _with_fused_default(params, kwargs)
    cls = torch.optim.AdamW if weight_decay_type == "decoupled" else torch.optim.Adam
    return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kwargs)


@register("radam", summary="RAdam with decoupled weight decay (torch.optim.RAdam)")
def radam(
    params: Iterable,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_decay_type: str = "decoupled",
    **kwargs,
) -> torch.optim.RAdam:
    """RAdam (Liu et al.); the paper's "RAdamW" when weight decay is decoupled."""
    _check_type("radam", weight_decay_type, ("decoupled", "L2"))
    return torch.optim.RAdam(
        params,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=weight_decay_type == "decoupled",
        **kwargs,
    )
