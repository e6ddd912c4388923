"""AdaHessian written straight from the spec (``docs/update_rules.md``, "AdaHessian", steps 1-7).

Plain per-tensor float64 loop, no shared code with ``apollo_optim/adahessian.py``. Instead of
drawing a probe, ``step`` takes the Hessian diagonal itself: the tests use separable losses,
whose Hessian is diagonal, so the Hutchinson estimate z ⊙ Hz equals that diagonal exactly
whatever Rademacher z the optimizer draws.
"""

from __future__ import annotations

import torch


class ReferenceAdaHessian:
    def __init__(
        self,
        lr=0.15,
        betas=(0.9, 0.999),
        eps=1e-4,
        weight_decay=0.0,
        warmup=0,
        init_lr=0.0,
        hessian_power=1.0,
        update_each=1,
        average_conv_kernel=False,
    ):
        self.base_lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.wd = weight_decay
        self.warmup = warmup
        self.init_lr = init_lr
        self.k = hessian_power
        self.update_each = update_each
        self.average_conv_kernel = average_conv_kernel
        self.state: dict[int, dict] = {}

    def step(self, params, grads, hessian_diags, lr):
        """``lr`` is the group's current lr (a scheduler may change it)."""
        for i, (theta, g, h) in enumerate(zip(params, grads, hessian_diags, strict=True)):
            if g is None:
                continue
            st = self.state.setdefault(
                i,
                {"t": 0, "m": torch.zeros_like(theta), "v": torch.zeros_like(theta), "D": None},
            )
            t = st["t"]
            # 1. a new estimate every update_each steps, else the previous one
            if t % self.update_each == 0:
                d = h.clone()
                # 2. conv kernels: mean of |D| over the two spatial dims
                if self.average_conv_kernel and theta.dim() == 4:
                    d = d.abs().mean(dim=(2, 3), keepdim=True).expand_as(d).clone()
                st["D"] = d
            d = st["D"]
            # 3. warmup with the count before this step
            if t < self.warmup:
                lr_t = self.init_lr + (self.base_lr - self.init_lr) * t / self.warmup
            else:
                lr_t = lr
            # 4. decoupled weight decay
            new = theta * (1 - lr_t * self.wd)
            # 5.
            st["t"] = t = t + 1
            st["m"] = self.beta1 * st["m"] + (1 - self.beta1) * g
            st["v"] = self.beta2 * st["v"] + (1 - self.beta2) * d * d
            # 6.
            denom = (st["v"] / (1 - self.beta2**t)) ** (self.k / 2) + self.eps
            # 7.
            new = new - lr_t / (1 - self.beta1**t) * st["m"] / denom
            theta.copy_(new)
