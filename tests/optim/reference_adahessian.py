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


# ---------------------------------------------------------------- what the tests feed it


def _coeffs(i, step):
    # per-coordinate curvature changes over steps so D̂ and the reuse of update_each matter
    return 0.5 + 0.3 * i + 0.05 * (step % 4), 0.1, 0.2 * (i + 1)


def separable_loss(params, step, skip_odd=()):
    """Σ a·θ² + b·θ⁴ - c·θ per coordinate: diagonal Hessian 2a + 12bθ²."""
    total = 0.0
    for i, p in enumerate(params):
        if i in skip_odd and step % 2:
            continue
        a, b, c = _coeffs(i, step)
        total = total + (a * p**2 + b * p**4 - c * p).sum()
    return total


def exact_grads_and_diags(params, step, skip_odd=()):
    grads, diags = [], []
    for i, p in enumerate(params):
        if i in skip_odd and step % 2:
            grads.append(None)
            diags.append(None)
            continue
        a, b, c = _coeffs(i, step)
        grads.append(2 * a * p + 4 * b * p**3 - c)
        diags.append(2 * a + 12 * b * p**2)
    return grads, diags


def step_with_reference(opt, params, ref_params, kwargs, steps, skip_odd=(), scheduler=None):
    """``steps`` steps of ``opt`` over ``params`` and of the float64 reference rule over
    ``ref_params`` on the same separable loss (exact gradients and Hessian diagonals)."""
    ref = ReferenceAdaHessian(**kwargs)
    sched = scheduler(opt) if scheduler else None
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        separable_loss(params, step, skip_odd).backward(create_graph=True)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        ref.step(ref_params, *exact_grads_and_diags(ref_params, step, skip_odd), lr)
        if sched:
            sched.step()


PARITY_CASES = {
    "defaults": dict(lr=0.05),
    "warmup": dict(lr=0.1, warmup=7, init_lr=1e-3),
    "weight_decay": dict(lr=0.05, weight_decay=0.1),
    "hessian_power": dict(lr=0.05, hessian_power=0.5),
    "update_each": dict(lr=0.05, update_each=3),
    "average_conv_kernel": dict(lr=0.05, average_conv_kernel=True),
    "everything": dict(
        lr=0.08,
        betas=(0.8, 0.99),
        eps=1e-3,
        weight_decay=0.05,
        warmup=5,
        init_lr=0.01,
        hessian_power=0.7,
        update_each=2,
        average_conv_kernel=True,
    ),
}
