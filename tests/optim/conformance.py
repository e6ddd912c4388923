"""Behaviour every registered optimizer must have, as plain functions of its
:class:`~tests.optim.optimizer_infos.OptimizerInfo`.

Two kinds of checks:

* ``IMPLEMENTATION_CHECKS(info, impl, dtype)`` run for every implementation of an optimizer
  (the CPU default, the per-tensor loop, a step traced by ``torch.compile``, the fused
  kernels) in every dtype it runs in: the trajectory equals the float64 default's, an exact
  ``state_dict`` round trip, per-group learning rates and a group at lr 0, parameters
  without gradients, ``p.grad`` left alone, ``step(closure)`` under ``no_grad``,
  ``add_param_group`` after the first step;
* ``RULE_CHECKS(info)`` once per optimizer: the bad-argument table, rejected groups, sparse
  gradients, the registry entry, loss falling on a quadratic and on Rosenbrock.

``test_conformance.py`` runs them over ``optim.names()`` (the fused implementation in
``tests/optim/fused/test_fused_conformance.py``), so an optimizer joins the suite by being
registered; ``test_docs_example.py`` runs them on the optimizer that docs/optimizers.md
teaches users to add.
"""

from __future__ import annotations

import copy
import io
import re

import torch

import apollo_optim as optim
from tests.optim.optimizer_infos import DEFAULT, Implementation, OptimizerInfo

# Optimizers differ in their useful learning rates, so the "loss falls" checks try a grid and
# keep the best run. The grid reaches 1e-5 because Apollo's constant rebound bounds its step by
# lr/σ·|m|: with σ = 0.01 and Rosenbrock's gradients of ~100, only lr <= 1e-4 is stable there
# (the spec's reference loop diverges too), while a quadratic takes lr up to 1.
LR_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
SHAPES = [(), (3,), (3, 4), (2, 3, 4), (2, 3, 2, 2), (2, 1, 2, 2, 2)]
# max|θ - θ_float64 default| / max(|θ|, 1) after the trajectory check's steps; float32:
# rounding that Apollo's feedback (1/‖d‖₄⁴) amplifies, 1e-6 measured
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def make(info: OptimizerInfo, impl: Implementation, params, **kwargs) -> torch.optim.Optimizer:
    """``info``'s optimizer over ``params`` as ``impl`` builds it (its step compiled with
    Dynamo's eager backend for a compiled implementation: the traced path, without
    Inductor's code generation)."""
    opt = optim.create(info.name, params, **{**impl.flags, **kwargs})
    if impl.compiled:
        opt.step = torch.compile(opt.step, backend="eager", fullgraph=False)
    return opt


def backward(name: str, loss: torch.Tensor) -> None:
    loss.backward(create_graph=optim.get(name).needs_create_graph)


def make_params(
    shapes=SHAPES, seed: int = 0, dtype=torch.float64, device="cpu"
) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype))
        for s in shapes
    ]


def separable_loss(params) -> torch.Tensor:
    """Sum of per-coordinate quartics: a diagonal Hessian, so Hutchinson's estimate is exact
    and second-order methods are deterministic whatever probe they draw."""
    total = 0.0
    for i, p in enumerate(params):
        a = 1.0 + 0.5 * i
        total = total + (a * p**2 + 0.1 * p**4 - 0.3 * p).sum()
    return total


def quadratic(theta: torch.Tensor) -> torch.Tensor:
    curvature = torch.logspace(-1, 1, theta.numel(), dtype=theta.dtype)
    return 0.5 * (curvature * theta**2).sum()


def rosenbrock(xy: torch.Tensor) -> torch.Tensor:
    x, y = xy[0], xy[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def train(name: str, params, loss_fn, steps: int, opt) -> torch.optim.Optimizer:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        backward(name, loss_fn(params))
        opt.step()
    return opt


def best_final_loss(info: OptimizerInfo, start: torch.Tensor, loss_fn, steps: int) -> float:
    finals = []
    for lr in LR_GRID:
        theta = torch.nn.Parameter(start.clone())
        opt = make(info, DEFAULT, [theta], lr=lr)
        train(info.name, [theta], lambda ps: loss_fn(ps[0]), steps, opt)
        final = loss_fn(theta).item()
        finals.append(final if final == final else float("inf"))  # NaN -> inf
    return min(finals)


def relative_error(params, refs) -> float:
    worst = 0.0
    for p, r in zip(params, refs, strict=True):
        p, r = p.detach().double().cpu(), r.detach().double().cpu()
        worst = max(worst, ((p - r).abs().max() / r.abs().max().clamp_min(1.0)).item())
    return worst


# ---------------------------------------------------------------- implementation checks


def check_trajectory_matches_the_float64_default(info, impl, dtype) -> None:
    """Six steps with the info's options (weight decay on, warmup crossing its end): the
    same parameters as the default implementation in float64, up to ``dtype``'s rounding."""
    kwargs = {"lr": 1e-2, **info.kwargs}
    ref = make_params()
    train(info.name, ref, separable_loss, 6, make(info, DEFAULT, ref, **kwargs))
    params = make_params(dtype=dtype, device=impl.device)
    train(info.name, params, separable_loss, 6, make(info, impl, params, **kwargs))
    assert all(p.dtype == dtype for p in params)
    err = relative_error(params, ref)
    assert err <= TOLERANCE[dtype], f"{info}/{impl.name}/{dtype}: off by {err:.2e}"
    start = make_params(dtype=dtype, device=impl.device)
    assert not any(torch.equal(p, q) for p, q in zip(params, start, strict=True))


def check_state_dict_round_trip_is_bit_exact(info, impl, dtype) -> None:
    params = make_params(dtype=dtype, device=impl.device)
    opt = train(info.name, params, separable_loss, 5, make(info, impl, params, lr=1e-2))
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # only tensors and plain values

    torch.manual_seed(1)
    train(info.name, params, separable_loss, 5, opt)

    restored = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt2 = make(info, impl, restored, lr=1e-2)
    opt2.load_state_dict(ckpt["optimizer"])
    torch.manual_seed(1)
    train(info.name, restored, separable_loss, 5, opt2)
    for a, b in zip(params, restored, strict=True):
        assert torch.equal(a, b), f"{info}/{impl.name}: resumed run differs from the uninterrupted"


def check_per_group_lr(info, impl, dtype) -> None:
    """Two groups in one optimizer move exactly as each group alone; an lr-0 group stays put."""
    base = make_params(seed=1, dtype=dtype, device=impl.device)
    a, b, c = (copy.deepcopy(base) for _ in range(3))
    groups = [{"params": a[:3]}, {"params": a[3:], "lr": 3e-3}]
    train(info.name, a, separable_loss, 6, make(info, impl, groups, lr=2e-2))
    # the same groups, each in its own optimizer built with the same constructor defaults
    opt_b1 = make(info, impl, [{"params": b[:3]}], lr=2e-2)
    opt_b2 = make(info, impl, [{"params": b[3:], "lr": 3e-3}], lr=2e-2)
    for _ in range(6):
        for p in b:
            p.grad = None
        backward(info.name, separable_loss(b))
        opt_b1.step()
        opt_b2.step()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=TOLERANCE[dtype] / 10, atol=0)
    frozen = [{"params": c[:3]}, {"params": c[3:], "lr": 0.0}]
    train(info.name, c, separable_loss, 6, make(info, impl, frozen, lr=2e-2))
    assert not torch.equal(c[0], base[0]), f"{info}: the lr>0 group did not move"
    for x, y in zip(c[3:], base[3:], strict=True):
        assert torch.equal(x, y), f"{info}/{impl.name}: a group with lr 0 moved"


def check_params_without_grad_untouched(info, impl, dtype) -> None:
    used, unused = make_params(shapes=[(4,), (3,)], dtype=dtype, device=impl.device)
    before = unused.detach().clone()
    opt = make(info, impl, [used, unused], **{"lr": 1e-2, **info.kwargs})
    train(info.name, [used, unused], lambda ps: separable_loss(ps[:1]), 3, opt)
    assert unused.grad is None
    assert torch.equal(unused, before)
    assert not opt.state.get(unused), f"{info}/{impl.name}: state for a parameter without grad"


def check_grad_not_modified(info, impl, dtype) -> None:
    """With the info's weight decay (L2 decay works on a copy of the gradient)."""
    params = make_params(dtype=dtype, device=impl.device)
    opt = make(info, impl, params, **{"lr": 1e-2, **info.kwargs})
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        backward(info.name, separable_loss(params))
        grads = [p.grad.detach().clone() for p in params]
        opt.step()
        for p, g in zip(params, grads, strict=True):
            assert torch.equal(p.grad.detach(), g), f"{info}/{impl.name}: step() modified p.grad"


def check_closure(info, impl, dtype) -> None:
    """step(closure) returns its loss and equals closure() + step(), even under no_grad."""
    a = make_params(seed=2, dtype=dtype, device=impl.device)
    b = make_params(seed=2, dtype=dtype, device=impl.device)
    opt_a, opt_b = make(info, impl, a, lr=1e-2), make(info, impl, b, lr=1e-2)

    def closure():
        opt_a.zero_grad(set_to_none=True)
        loss = separable_loss(a)
        backward(info.name, loss)
        return loss

    for _ in range(3):
        with torch.no_grad():
            loss = opt_a.step(closure)
        opt_b.zero_grad(set_to_none=True)
        expected = separable_loss(b)
        backward(info.name, expected)
        opt_b.step()
        assert loss.item() == expected.item()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def check_add_param_group_after_first_step(info, impl, dtype) -> None:
    first, second = make_params(shapes=[(3,), (2, 2)], dtype=dtype, device=impl.device)
    opt = train(info.name, [first], separable_loss, 2, make(info, impl, [first], lr=1e-2))
    before = second.detach().clone()
    opt.add_param_group({"params": [second], "lr": 2e-2})
    train(info.name, [first, second], separable_loss, 2, opt)
    assert not torch.equal(second, before)
    assert torch.isfinite(second).all()
    counts = [opt.state[p].get("step") for p in (first, second)]
    if all(isinstance(c, torch.Tensor) for c in counts):  # per-parameter step counters
        assert [c.item() for c in counts] == [4, 2]


def check_compiles_at_most_twice(info, impl, dtype) -> None:
    """torch.optim's recipe for compiled steps: a tensor lr, which an LR scheduler updates in
    place. Across the end of the warmup and every lr change the step is traced at most twice
    (the first call creates the state)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    params = make_params(dtype=dtype, device=impl.device)
    lr = torch.tensor(info.kwargs.get("lr", 1e-2))
    opt = optim.create(info.name, params, **{**info.kwargs, **impl.flags, "lr": lr})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 3 else 0.9**s)

    @torch.compile(backend=counter)
    def step() -> None:
        opt.step()

    start = [p.detach().clone() for p in params]
    for _ in range(6):
        opt.zero_grad(set_to_none=True)
        backward(info.name, separable_loss(params))
        step()
        sched.step()
    assert 1 <= counter.frame_count <= 2, counter.frame_count
    assert not any(torch.equal(p, s) for p, s in zip(params, start, strict=True))


IMPLEMENTATION_CHECKS = [
    check_trajectory_matches_the_float64_default,
    check_state_dict_round_trip_is_bit_exact,
    check_per_group_lr,
    check_params_without_grad_untouched,
    check_grad_not_modified,
    check_closure,
    check_add_param_group_after_first_step,
]
# Tracing a step costs seconds per optimizer built: a compiled implementation gets the checks
# that tell its traced update apart from the eager ones.
COMPILED_CHECKS = [
    check_trajectory_matches_the_float64_default,
    check_state_dict_round_trip_is_bit_exact,
    check_compiles_at_most_twice,
]


# ---------------------------------------------------------------- rule checks


def check_bad_arguments_are_value_errors_naming_them(info: OptimizerInfo) -> None:
    for kwargs, pattern in info.bad_arguments:
        try:
            optim.create(info.name, make_params(shapes=[(2,)]), **{"lr": 0.01, **kwargs})
        except ValueError as e:
            assert re.search(pattern, str(e)), f"{info} {kwargs}: {e}"
        else:
            raise AssertionError(f"{info}: {kwargs} was accepted")


def check_rejected_group_is_not_added(info: OptimizerInfo) -> None:
    if not info.ours:
        return  # torch.optim's classes validate only their constructor's arguments
    kwargs, pattern = next((k, p) for k, p in info.bad_arguments if "lr" not in k)
    opt = optim.create(info.name, make_params(shapes=[(2,)]), lr=0.01)
    group = {"params": make_params(shapes=[(3,)], seed=1), **kwargs}
    try:
        opt.add_param_group(group)
    except ValueError as e:
        assert re.search(pattern, str(e)), str(e)
    else:
        raise AssertionError(f"{info}: the group {kwargs} was accepted")
    assert len(opt.param_groups) == 1


def check_sparse_gradient_is_a_clear_error(info: OptimizerInfo) -> None:
    if not info.ours:
        return  # torch.optim's: SGD takes them, Adam raises its own RuntimeError
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = optim.create(info.name, emb.parameters(), lr=0.01)
    emb(torch.tensor([1, 2])).sum().backward()
    try:
        opt.step()
    except ValueError as e:
        assert "sparse" in str(e), str(e)
    else:
        raise AssertionError(f"{info}: a sparse gradient was accepted")


def check_registry_entry(info: OptimizerInfo) -> None:
    spec = optim.get(info.name)
    opt = spec.create(make_params(shapes=[(2,)]), lr=0.01)
    assert isinstance(opt, torch.optim.Optimizer)
    assert spec.needs_create_graph == bool(getattr(opt, "needs_create_graph", False))
    for key, value in spec.defaults.items():  # e.g. ApolloW's decoupled weight decay
        assert opt.param_groups[0][key] == value


def check_fused_true_where_it_cannot_run_is_one_clear_error(info: OptimizerInfo) -> None:
    """Without CUDA (or a usable Triton): ``fused=True`` refuses at construction, naming why."""
    from apollo_optim._kernels.fused import interpreting, triton_unusable

    runs = triton_unusable() is None and (torch.cuda.is_available() or interpreting())
    if runs or not any(impl.fused for impl in info.implementations):
        return  # (the fused implementation's checks run then)
    try:
        optim.create(info.name, make_params(shapes=[(2,)]), lr=0.01, fused=True)
    except RuntimeError as e:
        assert re.fullmatch(r"\w+\(fused=True\) cannot run: [^\n]+", str(e)), str(e)
    else:
        raise AssertionError(f"{info}: fused=True was accepted where it cannot run")


def check_quadratic_loss_falls(info: OptimizerInfo) -> None:
    start = torch.linspace(-2.0, 2.0, 10, dtype=torch.float64)
    initial = quadratic(start).item()
    assert best_final_loss(info, start, quadratic, steps=300) < 0.05 * initial


def check_rosenbrock_loss_falls(info: OptimizerInfo) -> None:
    start = torch.tensor([-1.5, 2.0], dtype=torch.float64)
    initial = rosenbrock(start).item()
    assert best_final_loss(info, start, rosenbrock, steps=1000) < 0.1 * initial


RULE_CHECKS = [
    check_bad_arguments_are_value_errors_naming_them,
    check_rejected_group_is_not_added,
    check_sparse_gradient_is_a_clear_error,
    check_registry_entry,
    check_fused_true_where_it_cannot_run_is_one_clear_error,
    check_quadratic_loss_falls,
    check_rosenbrock_loss_falls,
]


def cases(infos, fused: bool) -> list[tuple]:
    """(check, info, implementation, dtype) for every implementation (the fused ones, or the
    others) in each of its dtypes, with the checks that apply to it."""
    return [
        (check, info, impl, dtype)
        for info in infos
        for impl in info.implementations
        if impl.fused == fused
        for dtype in impl.dtypes
        for check in (COMPILED_CHECKS if impl.compiled else IMPLEMENTATION_CHECKS)
    ]


def case_id(case) -> str:
    check, info, impl, dtype = case
    dtype = str(dtype).removeprefix("torch.")
    return f"{info}-{impl.name}-{dtype}-{check.__name__.removeprefix('check_')}"
