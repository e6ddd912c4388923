"""AdaHessian (Yao et al., 2021): Adam whose second moment is a Hutchinson Hessian diagonal.

The update rule is ``../shared/spec/optimizers.md`` ("AdaHessian"), steps 1-7. The caller
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
* The probe comes from the optimizer's own generator (``seed``), saved in the state dict,
  so a resumed run draws the same probes as an uninterrupted one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

from .registry import register

_CREATE_GRAPH_HELP = (
    "AdaHessian needs the gradient's graph: call loss.backward(create_graph=True) "
    "(optim.get(name).needs_create_graph tells a training loop)"
)


def _validate(g: dict[str, Any]) -> None:
    lr = g["lr"]
    rules = [
        ("lr", lambda v: isinstance(v, (int, float)) and v >= 0, "must be a number >= 0"),
        ("betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "each must be in [0, 1)"),
        ("eps", lambda v: v > 0, "must be > 0"),
        ("weight_decay", lambda v: v >= 0, "must be >= 0"),
        ("warmup", lambda v: v >= 0 and float(v).is_integer(), "must be an integer >= 0"),
        ("init_lr", lambda v: 0 <= v <= lr, f"must be in [0, lr={lr!r}]"),
        ("hessian_power", lambda v: 0 < v <= 1, "must be in (0, 1]"),
        ("update_each", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1"),
    ]
    for name, ok, why in rules:
        try:
            valid = bool(ok(g[name]))
        except (TypeError, ValueError):  # e.g. a string or None where a number belongs
            valid = False
        if not valid:
            raise ValueError(f"AdaHessian: invalid {name}={g[name]!r} ({why})")


@register("adahessian", summary="AdaHessian (Yao et al., 2021): Hutchinson Hessian diagonal")
class AdaHessian(torch.optim.Optimizer):
    """AdaHessian with decoupled weight decay and AdaHessian's in-optimizer warmup.

    Per step (spec steps 1-7), for each parameter θ with gradient g::

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
        seed: seed of the optimizer's Rademacher generator; default drawn from torch's
            global generator, so ``torch.manual_seed`` before construction fixes it.
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
    ) -> None:
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
        )
        _validate(defaults)  # before any group exists, so the message names the argument
        defaults["betas"] = tuple(betas)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        if not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(
                f"AdaHessian: invalid seed={seed!r} (must be an integer in [0, 2**64))"
            )
        self._seed = seed
        self._generators: dict[str, torch.Generator] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its ``base_lr`` (the warmup's target) is its lr now."""
        _validate({**self.defaults, **param_group})  # before the group joins
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("base_lr", group["lr"])

    # ------------------------------------------------------------------ state dict

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["rademacher"] = {d: g.get_state() for d, g in self._generators.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("rademacher", {})
        super().load_state_dict(state_dict)
        self._generators = {}
        for device, s in rng.items():
            self._generator(torch.device(device)).set_state(s)

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy / pickle keep the probe stream
        state = super().__getstate__()
        state["_seed"] = self._seed
        state["_rng_states"] = {d: g.get_state() for d, g in self._generators.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        rng = state.pop("_rng_states", {})
        super().__setstate__(state)
        self.__dict__.setdefault("_seed", 0)
        self._generators = {}
        for device, s in rng.items():
            self._generator(torch.device(device)).set_state(s)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device).manual_seed(self._seed)
        return self._generators[key]

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One AdaHessian update (spec steps 1-7); ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scale = self._loss_scale()
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
        if not any(g.requires_grad for _, _, g, _, _ in entries):
            raise RuntimeError(_CREATE_GRAPH_HELP)

        probed = [(group, p, g, state) for group, p, g, state, due in entries if due]
        estimates = self._hutchinson(
            [p for _, p, _, _ in probed],
            [g for _, _, g, _ in probed],
            None if scale is None else scale["hessian"],
        )
        if scale is not None and estimates and not _all_finite(estimates):
            # Hz overflowed though the gradients did not: skip, and make the scaler back off.
            _report_overflow(_calling_grad_scaler(self), self)
            return loss
        fresh = {}
        for (group, p, _, state), d in zip(probed, estimates, strict=True):
            if group["average_conv_kernel"] and p.dim() == 4:  # spec step 2
                d = d.abs().mean(dim=[2, 3], keepdim=True).expand_as(d).clone()
            if group["update_each"] > 1:  # kept for the steps that reuse it
                state["hessian"] = d
            fresh[id(p)] = d
        grads = [g.detach() for _, _, g, _, _ in entries]
        if scale is not None and scale["grad"] is not None:
            grads = [g / scale["grad"] for g in grads]
        grads = self._average([p for _, p, _, _, _ in entries], grads)
        for (group, p, _, state, _), g in zip(entries, grads, strict=True):
            d = fresh[id(p)] if id(p) in fresh else state["hessian"]
            self._update(group, p, g, d, state)
        return loss

    def _gradients(self) -> list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]:
        """(group, p, g) for the parameters with a gradient; across ranks, their union (a
        parameter with a gradient only elsewhere gets zeros, as with DDP's
        find_unused_parameters), so every rank runs the same collectives."""
        pairs = [(group, p) for group in self.param_groups for p in group["params"]]
        has = [p.grad is not None for _, p in pairs]
        if _world_size() > 1 and pairs:
            flags = torch.tensor(has, dtype=torch.float32, device=pairs[0][1].device)
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
        t = step.item()  # before this step (spec step 3)
        if t < group["warmup"]:
            lr = group["init_lr"] + (group["base_lr"] - group["init_lr"]) * t / group["warmup"]
        else:
            lr = group["lr"]
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

    def _hutchinson(self, params: list, grads: list, scale: torch.Tensor | None) -> list:
        """D̂ = z ⊙ Hz for ``params`` (spec step 1), divided by the loss ``scale`` still in
        the graph of ``grads``, averaged over ranks."""
        if not params:
            return []
        zs = []
        for p in params:
            z = torch.randint(0, 2, p.shape, generator=self._generator(p.device), device=p.device)
            zs.append(z.to(p.dtype).mul_(2).sub_(1))
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

    # ------------------------------------------------------------------ GradScaler

    def _loss_scale(self) -> dict[str, torch.Tensor] | bool | None:
        """What ``torch.amp.GradScaler.step`` handed over: None without a scaler, False if
        the gradients overflowed, else the factors still in the gradients and in Hz.

        GradScaler (torch 2.14) sets ``self.grad_scale`` to its scale when it has not
        unscaled the gradients, or to None after a user's ``scaler.unscale_(optimizer)``
        (gradient clipping). The graph of the gradients still carries the scale in both
        cases, so Hz always needs it; in the second case it is read from the scaler.
        """
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:
            return None
        overflow = found_inf.clone()
        if _world_size() > 1:  # gradients are per rank here: all ranks must skip together
            dist.all_reduce(overflow, op=dist.ReduceOp.MAX)
        if overflow.item() != 0:
            if found_inf.item() == 0:  # only another rank overflowed: keep the scales equal
                _report_overflow(_calling_grad_scaler(self), self)
            return False
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is not None:
            return {"grad": grad_scale, "hessian": grad_scale}
        scaler = _calling_grad_scaler(self)
        if scaler is None:
            raise RuntimeError(
                "AdaHessian: gradients were unscaled but the loss scale is unknown; "
                "call scaler.step(optimizer) directly after scaler.unscale_(optimizer)"
            )
        return {"grad": None, "hessian": scaler._scale}


def _calling_grad_scaler(optimizer: torch.optim.Optimizer) -> torch.amp.GradScaler | None:
    # After scaler.unscale_(optimizer) GradScaler no longer passes its scale, and the public
    # grad_scaler= keyword is deprecated, so find the GradScaler.step frame that called us.
    frame = inspect.currentframe()
    for _ in range(12):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.amp.GradScaler) and frame.f_locals.get("optimizer") is (
            optimizer
        ):
            return owner
    return None


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _report_overflow(scaler: torch.amp.GradScaler | None, optimizer) -> None:
    # GradScaler.update() backs off when a found_inf it recorded for this optimizer is set;
    # the found_inf handed to step() is a copy, so set the recorded ones.
    states = getattr(scaler, "_per_optimizer_states", None)
    if states is not None and id(optimizer) in states:
        for found_inf in states[id(optimizer)].get("found_inf_per_device", {}).values():
            found_inf.fill_(1.0)


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
