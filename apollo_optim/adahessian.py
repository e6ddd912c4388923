"""AdaHessian (Yao et al., 2021): Adam whose second moment is a Hutchinson Hessian diagonal.

The update rule is ``docs/update_rules.md`` ("AdaHessian"), steps 1-7. The caller
must build the gradient's graph (``loss.backward(create_graph=True)``); the registry reads
``AdaHessian.needs_create_graph`` so training loops never compare names.

Beyond the reference code:

* ``torch.amp.GradScaler``: the Hessian-vector product taken through the scaled loss is
  ``S·Hz``; both ``g`` and ``Hz`` are divided by the loss scale ``S``, and a step whose
  gradients (or estimate) overflowed is skipped, so updates equal the unscaled run's.
* ``torch.distributed``: the Rademacher probe is broadcast from rank 0, and the estimate
  D̂ and the gradient are averaged over ranks. DDP cannot run a ``create_graph`` backward
  (it raises, pytorch#63812), so run that backward under ``ddp_model.no_sync()``; the
  optimizer does the averaging DDP would have done (into copies: ``p.grad`` stays local).
* The probe of a parameter at its step t is drawn from a generator seeded by (``seed``,
  t, the parameter's position), so it follows from the state dict alone (``seed`` is in
  every param group, t in the state): a resumed run draws the same probes as an
  uninterrupted one, also through torch.distributed.checkpoint, which keeps only
  ``state`` and ``param_groups``.
* Where the rule cannot hold, a clear error instead of a different update: DTensor
  (FSDP2) and FSDP1 parameters, and ZeroRedundancyOptimizer (each rank would hold a
  different part of the parameters, but the probe and Hz need them all).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

from . import _validation as v
from ._kernels import fused as _fused
from ._sharding import check_params, is_dtensor
from ._warmup import warmup_lr, warn_if_scheduled_in_warmup
from .registry import register

_CREATE_GRAPH_HELP = (
    "AdaHessian needs the gradient's graph: call loss.backward(create_graph=True) "
    "(optim.get(name).needs_create_graph tells a training loop)"
)


RULES = (
    v.LR,
    v.BETAS,
    v.EPS,
    v.WEIGHT_DECAY,
    v.WARMUP,
    v.INIT_LR,
    v.Rule("hessian_power", lambda k, _: 0 < k <= 1, "must be in (0, 1]"),
    v.Rule("update_each", lambda n, _: isinstance(n, int) and n >= 1, "must be an integer >= 1"),
    v.Rule(
        "seed",
        lambda s, _: s is None or (isinstance(s, int) and 0 <= s < 2**64),
        "must be an integer in [0, 2**64)",
    ),
    v.FUSED,
)


@register("adahessian", summary="AdaHessian (Yao et al., 2021): Hutchinson Hessian diagonal")
class AdaHessian(torch.optim.Optimizer):
    """AdaHessian with decoupled weight decay and AdaHessian's in-optimizer warmup.

    Per step (rule steps 1-7), for each parameter θ with gradient g::

        D̂ = z ⊙ Hz, z Rademacher          (every update_each steps, else the previous D̂)
        D̂ = mean(|D̂|) over the kernel     (4-D θ with average_conv_kernel)
        lr_t = η₀ + (η_base - η₀)·t/W if t < W else lr      (t before this step)
        θ = θ·(1 - lr_t·λ);  t += 1
        m = β1·m + (1 - β1)·g;  v = β2·v + (1 - β2)·D̂⊙D̂
        θ = θ - lr_t/(1 - β1^t) · m / ((v/(1 - β2^t))^(k/2) + ε)

    Args:
        params: parameters or parameter groups.
        lr: learning rate after warmup (the paper's tables: 0.15).
        betas: (β1, β2), each in [0, 1).
        eps: ε > 0 (the paper: 1e-2 vision, 1e-4 LSTM).
        weight_decay: λ, always decoupled.
        warmup: W, updates of linear warmup from ``init_lr`` to each group's own lr.
        init_lr: η₀, the first warmup learning rate (at most the lr of every group).
        hessian_power: k in (0, 1].
        update_each: draw a new probe every this many steps and reuse the estimate between.
        average_conv_kernel: average |D̂| over the spatial dims of 4-D (conv2d) weights.
        seed: seed of the Rademacher probes (kept in every param group, so in the state
            dict); default drawn from torch's global generator, so ``torch.manual_seed``
            before construction fixes it.
        fused: update with one fused Triton kernel per group (the Hutchinson product stays
            autograd). ``None`` (default): for CUDA float32/bfloat16/float16 parameters when
            Triton is importable; ``True``: required (an error says why it cannot run);
            ``False``: never.

    Mixed precision: :meth:`step` takes ``loss_scale``, the factor the loss was multiplied
    by before ``backward`` (``torch.amp.GradScaler.get_scale()``). With a GradScaler,
    ``scaler.step(opt, loss_scale=scaler.get_scale())`` is always right; it is required
    after ``scaler.unscale_(opt)`` (gradient clipping), when GradScaler no longer hands the
    scale over. A step skipped because the Hessian estimate overflowed (GradScaler checks
    only the gradients) sets :attr:`hessian_overflow`; back the scaler off then::

        scaler.update(scaler.get_scale() * scaler.get_backoff_factor()
                      if opt.hessian_overflow else None)

    ``engine.amp.step`` does both.
    """

    needs_create_graph = True
    # GradScaler.step() then hands over the scale (optimizer.grad_scale) and overflow flag
    # (optimizer.found_inf) instead of unscaling the gradients itself; see _loss_scale.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        warmup: int = 0,
        init_lr: float = 0.0,
        hessian_power: float = 1.0,
        update_each: int = 1,
        average_conv_kernel: bool = False,
        *,
        seed: int | None = None,
        fused: bool | None = None,
    ) -> None:
        _refuse_zero_redundancy(sys._getframe(1))
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            warmup=warmup,
            init_lr=init_lr,
            hessian_power=hessian_power,
            update_each=update_each,
            average_conv_kernel=average_conv_kernel,
            fused=fused,
        )
        v.validate("AdaHessian", {**defaults, "seed": seed}, RULES)  # before any group exists
        defaults["betas"] = tuple(betas)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        defaults["seed"] = seed
        self._generators: dict[str, torch.Generator] = {}
        self._warmup_checked = False
        self._ranks_checked = False
        self.hessian_overflow = False
        self._fused_plans = _fused.Cache()
        super().__init__(params, defaults)
        if fused:
            params = [p for g in self.param_groups for p in g["params"]]
            _fused.check_requested("AdaHessian", params)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its ``base_lr`` (the warmup's target) is its lr now."""
        v.validate("AdaHessian", {**self.defaults, **param_group}, RULES)  # before it joins
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_params("AdaHessian", group["params"], elementwise=False)
        if any(is_dtensor(p) for p in group["params"]):
            raise ValueError(
                "AdaHessian does not support DTensor (FSDP2) parameters: FSDP2 reduce-scatters "
                "the gradients outside autograd, so the Hessian-vector product through them "
                "cannot be taken; use DDP and run the create_graph backward under no_sync()"
            )
        group.setdefault("base_lr", float(group["lr"]))

    # ------------------------------------------------------------------ state dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # "rademacher": generator states of checkpoints from before the probes were derived
        # from (seed, step, position); they no longer matter.
        state_dict = {k: v for k, v in state_dict.items() if k != "rademacher"}
        seed = self.defaults["seed"]
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.setdefault("seed", seed)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.pop("_rng_states", None)  # pickles from before the derived probes
        seed = state.pop("_seed", 0)
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("seed", seed)
        self.defaults.setdefault("seed", seed)
        self._fused_plans = _fused.Cache()
        for group in self.param_groups:
            group.setdefault("fused", None)
        self._generators = {}
        self.__dict__.setdefault("_warmup_checked", False)
        self.__dict__.setdefault("_ranks_checked", False)
        self.__dict__.setdefault("hessian_overflow", False)

    def _probe(self, p: torch.Tensor, seed: int, t: int, index: int) -> torch.Tensor:
        """The Rademacher probe of the ``index``-th parameter at its step ``t``."""
        key = str(p.device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(p.device)
        gen = self._generators[key].manual_seed(_mix(seed, t, index))
        z = torch.randint(0, 2, p.shape, generator=gen, device=p.device)
        return z.to(p.dtype).mul_(2).sub_(1)

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        loss_scale: float | torch.Tensor | None = None,
    ) -> Any:
        """One AdaHessian update (rule steps 1-7); ``closure`` re-evaluates the loss.

        ``loss_scale``: the factor the loss was multiplied by before ``backward`` (see the
        class docstring); without a GradScaler the gradients are divided by it too.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.hessian_overflow = False
        scale = self._loss_scale(loss_scale)
        if scale is False:  # GradScaler found inf/nan in the gradients: skip, as it would
            return loss

        entries = []  # (group, p, gradient, state, probe now?)
        for group, p, g in self._gradients():
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_hessian_diag_sq"] = torch.zeros_like(
                    p, memory_format=torch.preserve_format
                )
            due = int(state["step"].item()) % group["update_each"] == 0
            entries.append((group, p, g, state, due))
        if not entries:
            return loss
        if not any(g.requires_grad for _, _, g, _, _ in entries) and any(
            bool(g.any()) for _, _, g, _, _ in entries
        ):  # (all-zero gradients without a graph have a zero Hessian: DCP's state init)
            raise RuntimeError(_CREATE_GRAPH_HELP)
        if not self._warmup_checked:
            self._warmup_checked = all(
                warn_if_scheduled_in_warmup("AdaHessian", group, int(state["step"]))
                for group, _, _, state, _ in entries[:1]
            )

        probed = [(group, p, g, state) for group, p, g, state, due in entries if due]
        estimates = self._hutchinson(probed, None if scale is None else scale["hessian"])
        if scale is not None and estimates and not _all_finite(estimates):
            # Hz overflowed though the gradients did not: GradScaler did not see it.
            self.hessian_overflow = True
            return loss
        fresh = {}
        for (group, p, _, state), d in zip(probed, estimates, strict=True):
            if group["average_conv_kernel"] and p.dim() == 4:  # rule step 2
                d = d.abs().mean(dim=[2, 3], keepdim=True).expand_as(d).clone()
            if group["update_each"] > 1:  # kept for the steps that reuse it
                state["hessian"] = d
            fresh[id(p)] = d
        grads = [g.detach() for _, _, g, _, _ in entries]
        if scale is not None and scale["grad"] is not None:
            grads = [g / scale["grad"] for g in grads]
        grads = self._average([p for _, p, _, _, _ in entries], grads)
        by_group: dict[int, list] = {}
        for (group, p, _, state, _), g in zip(entries, grads, strict=True):
            d = fresh[id(p)] if id(p) in fresh else state["hessian"]
            by_group.setdefault(id(group), [group]).append((p, g, d, state))
        for group, *items in by_group.values():
            if not self._fused_update(group, items):
                for p, g, d, state in items:
                    self._update(group, p, g, d, state)
        return loss

    def _fused_update(self, group, items) -> bool:
        """Spec steps 3-7 with the fused kernel, one launch per step count; False when the
        group takes the per-tensor path."""
        params = [p for p, _, _, _ in items]
        if not _fused.considered(group, params):
            return False
        ok = self._fused_plans.get(
            lambda: tuple(map(id, params)),
            lambda: _fused.resolve("AdaHessian", group["fused"], params),
        )
        if not ok:
            return False
        from ._kernels import triton_adahessian as kernels  # imports Triton

        buckets: dict[int, list] = {}
        for item in items:  # the counters live on the host (update_each is decided there)
            buckets.setdefault(int(item[3]["step"].item()), []).append(item)
        for t, bucket in buckets.items():
            params, grads, hessians, states = (list(x) for x in zip(*bucket, strict=True))
            plan = kernels.plan(self._fused_plans, params, states)
            plan.step(grads, hessians, t, warmup_lr(group, t), group)
            torch._foreach_add_([s["step"] for s in states], 1.0)
        return True

    def _gradients(self) -> list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]:
        """(group, p, g) for the parameters with a gradient; across ranks, their union (a
        parameter with a gradient only elsewhere gets zeros, as with DDP's
        find_unused_parameters), so every rank runs the same collectives."""
        pairs = [(group, p) for group in self.param_groups for p in group["params"]]
        has = [p.grad is not None for _, p in pairs]
        if _world_size() > 1 and pairs:
            device = pairs[0][1].device
            if not self._ranks_checked:  # before any collective whose size depends on it
                _check_same_parameters_on_all_ranks(pairs, device)
                self._ranks_checked = True
            flags = torch.tensor(has, dtype=torch.float32, device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            has = flags.bool().tolist()
        out = []
        for (group, p), h in zip(pairs, has, strict=True):
            if not h:
                continue
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError("AdaHessian does not support sparse gradients")
            out.append((group, p, torch.zeros_like(p) if p.grad is None else p.grad))
        return out

    def _update(self, group, p, g, d, state) -> None:
        beta1, beta2 = group["betas"]
        step = state["step"]
        t = step.item()  # before this step (rule step 3)
        lr = warmup_lr(group, t)
        if group["weight_decay"] != 0:
            p.mul_(1.0 - lr * group["weight_decay"])
        step += 1
        t += 1
        m, v = state["exp_avg"], state["exp_hessian_diag_sq"]
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(d, d, value=1.0 - beta2)
        denom = v / (1.0 - beta2**t)
        k = group["hessian_power"]
        denom = denom.sqrt_() if k == 1 else denom.pow_(k / 2)
        p.addcdiv_(m, denom.add_(group["eps"]), value=-lr / (1.0 - beta1**t))

    # ------------------------------------------------------------------ Hutchinson

    def _hutchinson(self, probed: list, scale: torch.Tensor | None) -> list:
        """D̂ = z ⊙ Hz for the ``(group, p, g, state)`` in ``probed`` (rule step 1), divided
        by the loss ``scale`` still in the graph of the gradients, averaged over ranks."""
        if not probed:
            return []
        index = {id(p): i for i, p in enumerate(q for g in self.param_groups for q in g["params"])}
        params = [p for _, p, _, _ in probed]
        grads = [g for _, _, g, _ in probed]
        zs = [
            self._probe(p, group["seed"], int(state["step"]), index[id(p)])
            for group, p, _, state in probed
        ]
        if _world_size() > 1:  # one probe for all ranks
            zs = _flat_collective(zs, lambda flat: dist.broadcast(flat, src=0))
        # A gradient without a graph is constant in θ: its Hessian rows are zero.
        outs = [(g, z) for g, z in zip(grads, zs, strict=True) if g.requires_grad]
        if not outs:
            return self._average(params, [torch.zeros_like(p) for p in params])
        with torch.enable_grad():
            hzs = torch.autograd.grad(
                [g for g, _ in outs],
                params,
                grad_outputs=[z for _, z in outs],
                retain_graph=True,
                allow_unused=True,
                materialize_grads=True,
            )
        estimates = [hz.detach().mul_(z) for hz, z in zip(hzs, zs, strict=True)]
        if scale is not None:
            estimates = [d.div_(scale) for d in estimates]
        return self._average(params, estimates)

    @staticmethod
    def _average(params: list[torch.Tensor], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mean over ranks (a no-op outside torch.distributed), into new tensors."""
        world = _world_size()
        if world == 1 or not tensors:
            return tensors

        def mean(flat: torch.Tensor) -> None:
            dist.all_reduce(flat)
            flat.div_(world)

        return _flat_collective(tensors, mean)

    # ------------------------------------------------------------------ loss scale

    def _loss_scale(self, loss_scale) -> dict[str, Any] | bool | None:
        """The factors still in the gradients (``"grad"``) and in Hz (``"hessian"``): None
        without loss scaling, False if GradScaler found inf/nan in the gradients.

        ``torch.amp.GradScaler.step`` (the contract of ``_step_supports_amp_scaling``)
        sets ``self.found_inf`` and ``self.grad_scale``: its scale while it has not
        unscaled the gradients, None after ``scaler.unscale_(optimizer)``. The graph of
        the gradients carries the loss scale in both cases, so Hz needs ``loss_scale``
        in the second one.
        """
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:  # no GradScaler: a loop that scaled the loss itself, or none
            return None if loss_scale is None else {"grad": loss_scale, "hessian": loss_scale}
        overflow = found_inf.clone()
        if _world_size() > 1:  # gradients are per rank here: all ranks must skip together
            dist.all_reduce(overflow, op=dist.ReduceOp.MAX)
        if overflow.item() != 0:
            # only another rank overflowed: this rank's scaler must back off all the same
            self.hessian_overflow = found_inf.item() == 0
            return False
        grad_scale = getattr(self, "grad_scale", None)
        hessian = grad_scale if loss_scale is None else loss_scale
        if hessian is None:
            raise RuntimeError(
                "AdaHessian: the gradients were unscaled (scaler.unscale_) and the loss scale "
                "is unknown; pass it: scaler.step(optimizer, loss_scale=scaler.get_scale())"
            )
        return {"grad": grad_scale, "hessian": hessian}


def _mix(seed: int, t: int, index: int) -> int:
    """A 63-bit generator seed from (seed, step, position): splitmix64's finaliser, so
    nearby inputs give unrelated streams."""
    x = (seed + 0x9E3779B97F4A7C15 * (index + 1) + 0xD1B54A32D192ED03 * t) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 31)) >> 1


def _refuse_zero_redundancy(caller) -> None:
    # ZeroRedundancyOptimizer builds its per-rank optimizer itself, from inside its own
    # method, with that rank's part of the parameters; the probe z and Hz need all of them.
    owner = caller.f_locals.get("self") if caller is not None else None
    if type(owner).__name__ == "ZeroRedundancyOptimizer":
        raise ValueError(
            "AdaHessian cannot run under ZeroRedundancyOptimizer: each rank would hold a "
            "different part of the parameters, but the Hutchinson probe and the Hessian-vector "
            "product need all of them on every rank; use AdaHessian directly under DDP"
        )


def _check_same_parameters_on_all_ranks(pairs, device: torch.device) -> None:
    n = torch.tensor([len(pairs), -len(pairs)], dtype=torch.float64, device=device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    if n[0] != -n[1]:
        raise RuntimeError(
            f"AdaHessian: the ranks hold different numbers of parameters ({int(-n[1])} to "
            f"{int(n[0])}); it needs every rank to hold every parameter, as under DDP "
            "(ZeroRedundancyOptimizer and FSDP split them)"
        )


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _flat_collective(tensors: list[torch.Tensor], op) -> list[torch.Tensor]:
    """Apply the in-place collective ``op`` once per (device, dtype) to the concatenation of
    ``tensors`` (one call instead of one per tensor); the results, shaped like the inputs."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    buckets: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.device, t.dtype), []).append(i)
    for idx in buckets.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in idx])
        op(flat)
        for i, f in zip(idx, flat.split([tensors[i].numel() for i in idx]), strict=True):
            out[i] = f.view_as(tensors[i])
    return out


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
