"""A plain per-tensor Apollo, written line by line from docs/update_rules.md (float64).

Deliberately unoptimised: no in-place tricks, ``norm(p=4)``, fresh tensors everywhere,
Python numbers for every scalar. The tests compare ``optim.Apollo`` against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RefGroup:
    params: list[torch.Tensor]
    lr: float
    beta: float = 0.9
    eps: float = 1e-4
    rebound: str = "constant"
    sigma: float = 0.01
    warmup: int = 500
    init_lr: float | None = None
    weight_decay: float = 0.0
    weight_decay_type: str | None = None
    maximize: bool = False
    base_lr: float = field(init=False)

    def __post_init__(self) -> None:
        self.base_lr = self.lr  # the group's lr at construction (spec step 1)
        if self.init_lr is None:
            self.init_lr = self.lr / 1000
        if self.weight_decay_type is None:
            self.weight_decay_type = "L2" if self.rebound == "constant" else "decoupled"


class ReferenceApollo:
    """``step(grads)`` takes one gradient (or None) per parameter, in group order."""

    def __init__(self, groups: list[RefGroup]) -> None:
        self.groups = list(groups)
        self.state: dict[tuple[int, int], dict] = {}  # (group, param) -> state

    def add_group(self, group: RefGroup) -> None:
        self.groups.append(group)

    def step(self, grads: list[torch.Tensor | None]) -> None:
        it = iter(grads)
        for k, group in enumerate(self.groups):
            for i, theta in enumerate(group.params):
                g = next(it)
                if g is None:
                    continue
                zero = torch.zeros_like(theta)
                st = self.state.setdefault((k, i), dict(t=0, m=zero, B=zero, d=zero))
                group.params[i] = self._update(group, theta, g, st)

    @staticmethod
    def _update(grp: RefGroup, theta: torch.Tensor, g: torch.Tensor, st: dict) -> torch.Tensor:
        t = st["t"]
        # 1. learning rate, t counted before this step
        if t < grp.warmup:
            lr_t = grp.init_lr + (grp.base_lr - grp.init_lr) * t / grp.warmup
        else:
            lr_t = grp.lr
        if grp.maximize:
            g = -g
        lam, wdt = grp.weight_decay, grp.weight_decay_type
        # 2. L2 weight decay
        if lam != 0 and wdt == "L2":
            g = g + lam * theta
        # 3.
        t = t + 1
        alpha = (1 - grp.beta) / (1 - grp.beta**t)
        # 4.
        delta = g - st["m"]
        # 5.
        if grp.rebound == "belief":
            r = delta.abs().max()
            eps_p = grp.eps
        else:
            r = grp.sigma
            eps_p = grp.eps / grp.sigma
        # 6.
        m = st["m"] + alpha * delta
        # 7.
        d = st["d"]
        s = d.norm(p=4) + eps_p
        # 8.
        d = d / s
        v = d * d
        # 9.
        delta_b = -alpha * ((delta / s) * d).sum() - (st["B"] * v).sum()
        # 10.
        B = st["B"] + delta_b * v
        # 11.
        if grp.rebound == "belief":
            D = torch.maximum(B.abs(), r) + eps_p / alpha
        else:
            D = torch.clamp(B.abs(), min=grp.sigma)
        # 12.
        d = m / D
        # 13.
        if lam != 0 and wdt != "L2":
            lam_p = lam / D.mean() if wdt == "stable" else lam
            d = d + lam_p * theta
        # 14.
        theta = theta - lr_t * d
        st.update(t=t, m=m, B=B, d=d)
        return theta


def noisy_quadratic_grad(theta: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The gradient the Apollo tests feed both sides: a noisy quadratic, so the trajectory
    depends on the parameters and stays bounded."""
    return 0.5 * theta + 0.1 * noise
