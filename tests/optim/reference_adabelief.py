"""AdaBelief written straight from the spec (``docs/update_rules.md``, "AdaBelief", steps 1-8).

Deliberately plain: one tensor at a time, out-of-place ops, float64, no shared code with
``apollo_optim/adabelief.py``. Tests compare the real optimizer against this.
"""

from __future__ import annotations

import math

import torch


class ReferenceAdaBelief:
    """Holds per-parameter state; ``step(params, grads, lr)`` applies one update in place."""

    def __init__(self, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, weight_decay_type="L2"):
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.wd = weight_decay
        self.wd_type = weight_decay_type
        self.state: dict[int, dict] = {}

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor | None], lr: float):
        for i, (theta, g) in enumerate(zip(params, grads, strict=True)):
            if g is None:
                continue
            st = self.state.setdefault(
                i, {"t": 0, "m": torch.zeros_like(theta), "s": torch.zeros_like(theta)}
            )
            # 1
            st["t"] += 1
            t = st["t"]
            c1 = 1 - self.beta1**t
            c2 = 1 - self.beta2**t
            # 2
            if self.wd_type == "L2" and self.wd != 0:
                g = g + self.wd * theta
            # 3
            st["m"] = self.beta1 * st["m"] + (1 - self.beta1) * g
            # 4
            r = g - st["m"]
            # 5 (ε accumulates into the state)
            st["s"] = self.beta2 * st["s"] + (1 - self.beta2) * r * r
            st["s"] = st["s"] + self.eps
            # 6
            denom = torch.sqrt(st["s"]) / math.sqrt(c2) + self.eps
            # 7
            new = theta.clone()
            if self.wd_type != "L2" and self.wd != 0:
                lam = self.wd / denom.mean().item() if self.wd_type == "stable" else self.wd
                new = new * (1 - lr * lam)
            # 8
            new = new - (lr / c1) * st["m"] / denom
            theta.copy_(new)
