"""Mixed precision through ``torch.amp`` and the backward/step pair every loop shares.

``--amp bf16`` runs the forward pass under ``torch.autocast(dtype=bfloat16)`` with no scaler;
``--amp fp16`` uses float16 autocast and a ``torch.amp.GradScaler``. NVIDIA apex is not used
(its AMP is deprecated upstream). Second-order optimizers (AdaHessian) get
``create_graph=True`` from their registry spec, never from a name comparison; the optimizer
itself accounts for the loss scale when it differentiates the gradient again: ``step`` hands
such an optimizer the scale (``optimizer.step(loss_scale=...)``) and backs the scaler off when
the optimizer reports an overflow of its Hessian estimate (``optimizer.hessian_overflow``),
which GradScaler, checking only the gradients, cannot see. Under DDP such a
backward must run inside ``engine.distributed.no_sync(model, skip_sync=True)`` (forward
included): DDP cannot all-reduce a ``create_graph`` backward, and the optimizer averages the
gradient and its estimate over ranks itself.

Gradient accumulation (NMT: ~65K tokens per update on fewer GPUs) is ``backward`` on each
micro-batch inside ``engine.distributed.no_sync(model, skip_sync=not last)``, then one
``step``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch

from apollo_optim import scaler_step

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, amp: str) -> Any:
    """The forward-pass context for ``amp`` in {'none', 'fp16', 'bf16'}."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in _DTYPES:
        raise ValueError(f"amp must be one of none, fp16, bf16, got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (bf16 has float32's range and needs none)."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def backward(
    loss: torch.Tensor, scaler: torch.amp.GradScaler | None, create_graph: bool = False
) -> None:
    """``loss.backward``, through the scaler when there is one."""
    (scaler.scale(loss) if scaler is not None else loss).backward(create_graph=create_graph)


@torch.no_grad()
def grad_norm(
    parameters: Iterable[torch.nn.Parameter], scaler: torch.amp.GradScaler | None = None
) -> torch.Tensor:
    """The total 2-norm of the parameters' gradients, without the loss scale (a 0-d tensor on
    their device; reading it waits for the GPU, so the caller decides when)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return norm / scaler.get_scale() if scaler is not None else norm


def step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_norm: float | None = None,
    parameters: Iterable[torch.nn.Parameter] | None = None,
) -> torch.Tensor | None:
    """Unscale, clip the total gradient norm if asked (LM, NMT: 1.0), step, update the scaler.

    Returns the total gradient norm before clipping (a 0-d tensor on the device: reading it
    would wait for the GPU, so the caller decides when) when ``clip_norm`` is set. With a scaler,
    a step whose gradients overflowed is skipped (GradScaler's rule).
    """
    norm = None
    if clip_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = parameters
        if params is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
    if scaler is not None:
        scaler_step(optimizer, scaler)  # second-order: hands over the loss scale, backs off
    else:
        optimizer.step()
    return norm
