"""Mixed precision for second-order optimizers (AdaHessian): the GradScaler step that hands
over the loss scale, and BatchNorm in float32 under fp16 autocast."""

from __future__ import annotations

import torch


def scaler_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """``scaler.step(optimizer)`` and ``scaler.update()``, right for every optimizer.

    A second-order optimizer (``needs_create_graph``) differentiates the scaled gradient
    again, so its Hessian-vector product carries the loss scale too: it gets the scale
    (``loss_scale=``; GradScaler stops handing it over after ``scaler.unscale_``, e.g. for
    gradient clipping), and when its estimate overflowed (``hessian_overflow``, which
    GradScaler, checking only the gradients, cannot see) the scaler backs off as it would
    for an overflowing gradient.
    """
    if not getattr(optimizer, "needs_create_graph", False):
        scaler.step(optimizer)
        scaler.update()
        return
    scaler.step(optimizer, loss_scale=scaler.get_scale())
    backoff = scaler.get_scale() * scaler.get_backoff_factor()
    scaler.update(backoff if getattr(optimizer, "hessian_overflow", False) else None)


def batchnorm_in_float32(model: torch.nn.Module) -> int:
    """Run every BatchNorm layer of ``model`` in float32 under autocast; returns how many.

    For second-order optimizers (AdaHessian) under fp16 autocast: differentiating
    BatchNorm's backward pass (``create_graph=True``, then Hz) in float16 overflows its sums
    over the batch, and every Hessian estimate comes out NaN (a step skipped each time, a
    model that never learns). A float32 input makes that pass float32; the next layer casts
    back to float16. Outside autocast the hook changes nothing.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(_float32_input)
            count += 1
    return count


def _float32_input(module: torch.nn.Module, args: tuple) -> tuple | None:
    x = args[0]
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        return (x.float(), *args[1:])
    return None
