"""Behaviour every registered optimizer must have, as plain functions of its registry name.

``test_conformance.py`` runs each check over ``optim.names()``, so an optimizer
joins the suite by being registered; ``test_docs_example.py`` runs the same
checks on the optimizer that docs/optimizers.md teaches users to add.
"""

from __future__ import annotations

import copy
import io

import torch

import apollo_optim as optim

# Optimizers differ in their useful learning rates, so the "loss falls" checks try a grid and
# keep the best run. The grid reaches 1e-5 because Apollo's constant rebound bounds its step by
# lr/σ·|m|: with σ = 0.01 and Rosenbrock's gradients of ~100, only lr <= 1e-4 is stable there
# (the spec's reference loop diverges too), while a quadratic takes lr up to 1.
LR_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
SHAPES = [(), (3,), (3, 4), (2, 3, 4), (2, 3, 2, 2), (2, 1, 2, 2, 2)]


def backward(name: str, loss: torch.Tensor) -> None:
    loss.backward(create_graph=optim.get(name).needs_create_graph)


def make_params(shapes=SHAPES, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]


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


def train(name: str, params, loss_fn, steps: int, opt=None, **kwargs):
    opt = opt or optim.create(name, params, **kwargs)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        backward(name, loss_fn(params))
        opt.step()
    return opt


def best_final_loss(name: str, start: torch.Tensor, loss_fn, steps: int) -> float:
    finals = []
    for lr in LR_GRID:
        theta = torch.nn.Parameter(start.clone())
        train(name, [theta], lambda ps: loss_fn(ps[0]), steps, lr=lr)
        final = loss_fn(theta).item()
        finals.append(final if final == final else float("inf"))  # NaN -> inf
    return min(finals)


# ---------------------------------------------------------------- the checks


def check_constructs(name: str) -> None:
    params = make_params()
    opt = optim.create(name, params, lr=1e-2)
    assert isinstance(opt, torch.optim.Optimizer)
    train(name, params, separable_loss, 2, opt=opt)
    assert all(torch.isfinite(p).all() for p in params)


def check_negative_lr_is_value_error(name: str) -> None:
    try:
        optim.create(name, make_params(), lr=-1.0)
    except ValueError as e:
        assert "lr" in str(e) or "learning rate" in str(e), str(e)
    else:
        raise AssertionError(f"{name}: lr=-1.0 was accepted")


def check_quadratic_loss_falls(name: str) -> None:
    start = torch.linspace(-2.0, 2.0, 10, dtype=torch.float64)
    initial = quadratic(start).item()
    assert best_final_loss(name, start, quadratic, steps=300) < 0.05 * initial


def check_rosenbrock_loss_falls(name: str) -> None:
    start = torch.tensor([-1.5, 2.0], dtype=torch.float64)
    initial = rosenbrock(start).item()
    assert best_final_loss(name, start, rosenbrock, steps=1000) < 0.1 * initial


def check_state_dict_round_trip_is_bit_exact(name: str) -> None:
    params = make_params()
    opt = train(name, params, separable_loss, 5, lr=1e-2)
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    torch.manual_seed(1)
    train(name, params, separable_loss, 5, opt=opt)

    restored = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt2 = optim.create(name, restored, lr=1e-2)
    opt2.load_state_dict(ckpt["optimizer"])
    torch.manual_seed(1)
    train(name, restored, separable_loss, 5, opt=opt2)
    for a, b in zip(params, restored, strict=True):
        assert torch.equal(a, b), f"{name}: resumed run differs from the uninterrupted one"


def check_per_group_lr(name: str) -> None:
    """Two groups in one optimizer move exactly as each group alone; an lr-0 group stays put."""
    base = make_params(seed=1)
    a, b, c = (copy.deepcopy(base) for _ in range(3))
    groups = [{"params": a[:3]}, {"params": a[3:], "lr": 3e-3}]
    train(name, a, separable_loss, 6, opt=optim.create(name, groups, lr=2e-2))
    # the same groups, each in its own optimizer built with the same constructor defaults
    opt_b1 = optim.create(name, [{"params": b[:3]}], lr=2e-2)
    opt_b2 = optim.create(name, [{"params": b[3:], "lr": 3e-3}], lr=2e-2)
    for _ in range(6):
        for p in b:
            p.grad = None
        backward(name, separable_loss(b))
        opt_b1.step()
        opt_b2.step()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=0)
    frozen = [{"params": c[:3]}, {"params": c[3:], "lr": 0.0}]
    train(name, c, separable_loss, 6, opt=optim.create(name, frozen, lr=2e-2))
    assert not torch.equal(c[0], base[0]), f"{name}: the lr>0 group did not move"
    for x, y in zip(c[3:], base[3:], strict=True):
        assert torch.equal(x, y), f"{name}: a group with lr 0 moved"


def check_params_without_grad_untouched(name: str) -> None:
    used, unused = make_params(shapes=[(4,), (3,)])
    before = unused.detach().clone()
    opt = optim.create(name, [used, unused], lr=1e-2)
    train(name, [used, unused], lambda ps: separable_loss(ps[:1]), 3, opt=opt)
    assert unused.grad is None
    assert torch.equal(unused, before)


def check_grad_not_modified(name: str) -> None:
    params = make_params()
    opt = optim.create(name, params, lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        backward(name, separable_loss(params))
        grads = [p.grad.detach().clone() for p in params]
        opt.step()
        for p, g in zip(params, grads, strict=True):
            assert torch.equal(p.grad.detach(), g), f"{name}: step() modified p.grad"


def check_closure(name: str) -> None:
    """step(closure) returns its loss and equals closure() + step(), even under no_grad."""
    a, b = make_params(seed=2), make_params(seed=2)
    opt_a, opt_b = optim.create(name, a, lr=1e-2), optim.create(name, b, lr=1e-2)

    def closure():
        opt_a.zero_grad(set_to_none=True)
        loss = separable_loss(a)
        backward(name, loss)
        return loss

    for _ in range(3):
        with torch.no_grad():
            loss = opt_a.step(closure)
        opt_b.zero_grad(set_to_none=True)
        expected = separable_loss(b)
        backward(name, expected)
        opt_b.step()
        assert loss.item() == expected.item()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def check_add_param_group_after_first_step(name: str) -> None:
    first, second = make_params(shapes=[(3,), (2, 2)])
    opt = train(name, [first], separable_loss, 2, lr=1e-2)
    before = second.detach().clone()
    opt.add_param_group({"params": [second]})
    train(name, [first, second], separable_loss, 2, opt=opt)
    assert not torch.equal(second, before)
    assert torch.isfinite(second).all()


CHECKS = [
    check_constructs,
    check_negative_lr_is_value_error,
    check_quadratic_loss_falls,
    check_rosenbrock_loss_falls,
    check_state_dict_round_trip_is_bit_exact,
    check_per_group_lr,
    check_params_without_grad_untouched,
    check_grad_not_modified,
    check_closure,
    check_add_param_group_after_first_step,
]
