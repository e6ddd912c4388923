"""The optimizers inside the stacks people train with (one process): LR schedulers and the
in-optimizer warmup, OneCycleLR, tensor learning rates, torch.distributed.checkpoint, and
AdaHessian's loss-scale mechanism under torch.amp (torch.compile under a scheduler: the
compiled implementation's checks in conformance.py).
FSDP2, FSDP1 and ZeRO are in test_sharded.py."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import apollo_optim as optim
from apollo_optim import AdaBelief, AdaHessian, Apollo
from apollo_optim._warmup import WarmupLRWarning
from tests.optim.reference_apollo import ReferenceApollo, RefGroup

pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")

WARMUP_OPTIMIZERS = {
    "apollo": (Apollo, dict(lr=0.1, warmup=5, weight_decay=0.1)),
    "adahessian": (AdaHessian, dict(lr=0.1, warmup=5, init_lr=0.01, weight_decay=0.1)),
}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def _backward(model, opt, step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    loss = model(torch.randn(5, 4, generator=gen)).pow(2).mean()
    loss.backward(create_graph=getattr(opt, "needs_create_graph", False))


def _train(model, opt, steps: int, sched=None, start: int = 0) -> None:
    for step in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        _backward(model, opt, step)
        opt.step()
        if sched is not None:
            sched.step()


def _warmup_warnings(fn) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if issubclass(w.category, WarmupLRWarning)]


# ---------------------------------------------------------------- schedulers


@pytest.mark.parametrize("name", list(WARMUP_OPTIMIZERS))
def test_scheduler_during_the_internal_warmup_warns_once_naming_the_fix(name):
    cls, kwargs = WARMUP_OPTIMIZERS[name]
    model = _model()
    opt = cls(model.parameters(), **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9**s)
    caught = _warmup_warnings(lambda: _train(model, opt, 8, sched))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "warmup=0" in message and "leave the lr alone for the first 5 steps" in message
    # no overlap, no warning: no internal warmup, or a schedule that starts after it
    for warmup, factor in [(0, lambda s: 0.9**s), (5, lambda s: 1.0 if s < 5 else 0.5)]:
        model = _model()
        opt = cls(model.parameters(), **{**kwargs, "warmup": warmup})
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        assert not _warmup_warnings(lambda opt=opt, sched=sched, m=model: _train(m, opt, 8, sched))


@pytest.mark.parametrize("name", list(WARMUP_OPTIMIZERS))
def test_a_group_at_lr_zero_does_not_move_during_warmup(name):
    """LambdaLR(0) (and DCP's state initialisation, a step at lr 0) must not move a group,
    even through weight decay while the warmup would otherwise use init_lr."""
    cls, kwargs = WARMUP_OPTIMIZERS[name]
    model = _model()
    start = [p.detach().clone() for p in model.parameters()]
    opt = cls(model.parameters(), **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WarmupLRWarning)
        _train(model, opt, 3, sched)
    for p, s in zip(model.parameters(), start, strict=True):
        assert torch.equal(p.detach(), s)


def test_one_cycle_lr():
    """OneCycleLR does its own warmup: with Apollo's default warmup the overlap is reported;
    with warmup=0 and cycle_momentum=False (Apollo has one β, no betas) every step uses the
    schedule's lr, as the spec's reference loop does. AdaBelief's betas cycle as Adam's."""
    model = _model()
    opt = Apollo(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=12, cycle_momentum=False)
    assert len(_warmup_warnings(lambda: _train(model, opt, 3, sched))) == 1

    model = _model().double()
    ref_params = [p.detach().clone() for p in model.parameters()]
    ref_group = RefGroup(ref_params, lr=0.1, rebound="belief", warmup=0)
    ref = ReferenceApollo([ref_group])
    opt = Apollo(model.parameters(), lr=0.1, rebound="belief", warmup=0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=12, cycle_momentum=False)
    lrs = []
    for step in range(12):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(5, 4, generator=torch.Generator().manual_seed(step)).double()).pow(
            2
        ).mean().backward()
        ref_group.lr = opt.param_groups[0]["lr"]
        lrs.append(ref_group.lr)
        ref.step([p.grad.clone() for p in model.parameters()])
        opt.step()
        sched.step()
    assert len(set(lrs)) == 12  # the cycle really moved the lr
    for p, r in zip(model.parameters(), ref.groups[0].params, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12)

    model = _model()
    opt = AdaBelief(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.01, total_steps=10)  # cycle_momentum
    seen = set()
    for step in range(5):
        _train(model, opt, 1, sched, start=step)
        seen.add(opt.param_groups[0]["betas"][0])
    assert len(seen) == 5 and all(0.85 <= b <= 0.95 for b in seen)


# ---------------------------------------------------------------- tensor lr and compile

TENSOR_LR = {
    "apollo": (Apollo, dict(rebound="belief", warmup=3, weight_decay=0.01)),
    "adabelief": (AdaBelief, dict(weight_decay=0.1, weight_decay_type="stable")),
}


@pytest.mark.filterwarnings("ignore::apollo_optim._warmup.WarmupLRWarning")
@pytest.mark.parametrize("name", list(TENSOR_LR))
def test_tensor_lr_gives_the_float_lr_updates(name):
    cls, kwargs = TENSOR_LR[name]
    runs = []
    for lr in (float(torch.tensor(0.05)), torch.tensor(0.05)):  # the same float32 value
        model = _model()
        opt = cls(model.parameters(), lr=lr, **kwargs)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        _train(model, opt, 6, sched)
        runs.append([p.detach() for p in model.parameters()])
        assert isinstance(opt.param_groups[0]["lr"], type(lr))  # the scheduler kept the type
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- torch.distributed.checkpoint

DCP_CASES = {
    "apollo": dict(lr=0.05, warmup=4, weight_decay=0.01),
    "apollow": dict(lr=0.05, warmup=4, weight_decay=0.1),
    "adabelief": dict(lr=0.01, weight_decay=0.1, weight_decay_type="stable"),
    "adahessian": dict(lr=0.05, warmup=4, init_lr=0.01, weight_decay=0.1, update_each=2),
    # controls: torch.optim's classes, and AdaBelief, whose zero-gradient step at lr 0 never
    # moved anything, round-tripped before
    "sgd": dict(lr=0.05, weight_decay=0.01),
    "adam": dict(lr=0.01, weight_decay=0.01),
    "radam": dict(lr=0.01, weight_decay=0.01),
}


@pytest.mark.parametrize("name", list(DCP_CASES))
def test_dcp_round_trip_continues_bit_for_bit(name, tmp_path):
    """get_*_state_dict, dcp.save, then a fresh model and optimizer (AdaHessian with another
    seed), dcp.load and set_*_state_dict: the resumed run equals the uninterrupted one. The
    loss is not separable, so AdaHessian matches only if it draws the same probes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    def build(seed):
        model = _model()
        extra = {"seed": seed} if name == "adahessian" else {}
        return model, optim.create(name, model.parameters(), **DCP_CASES[name], **extra)

    model, opt = build(1)
    _train(model, opt, 3)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "running in non-distributed mode"
        dcp.save(state, checkpoint_id=str(tmp_path))
    state3 = copy.deepcopy(state)  # get_* returns the live tensors
    _train(model, opt, 4, start=3)

    model2, opt2 = build(2)
    state2 = {
        "model": get_model_state_dict(model2),
        "optim": get_optimizer_state_dict(model2, opt2),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state2, checkpoint_id=str(tmp_path))
    set_model_state_dict(model2, state2["model"])
    set_optimizer_state_dict(model2, opt2, state2["optim"])
    _train(model2, opt2, 4, start=3)
    # the same, into an optimizer with no state yet: set_optimizer_state_dict then first
    # initialises it with a step at lr 0 and zero gradients, after the model was loaded
    model3, opt3 = build(3)
    set_model_state_dict(model3, state3["model"])
    set_optimizer_state_dict(model3, opt3, state3["optim"])
    _train(model3, opt3, 4, start=3)
    for a, b, c in zip(model.parameters(), model2.parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


# ---------------------------------------------------------------- AdaHessian and torch.amp


def _quadratic_run(scale: float | None, steps: int = 4):
    torch.manual_seed(0)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([w], lr=0.05, weight_decay=0.01, seed=3)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = w.sum() ** 2 + (w**3).sum()  # not separable: the probe matters
        (loss if scale is None else loss * scale).backward(create_graph=True)
        opt.step() if scale is None else opt.step(loss_scale=scale)
    return w.detach()


def test_loss_scale_keyword_in_a_loop_that_scales_the_loss_itself():
    assert torch.equal(_quadratic_run(None), _quadratic_run(2.0**12))


def test_unscaled_gradients_without_the_loss_scale_is_a_clear_error():
    """After scaler.unscale_ (clipping) GradScaler no longer hands over its scale; the loop
    must pass it (optim.scaler_step does), rather than the optimizer guessing it."""
    w = torch.ones(3, requires_grad=True)
    opt = AdaHessian([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    scaler.scale((w**3).sum()).backward(create_graph=True)
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"loss_scale=scaler.get_scale\(\)"):
        scaler.step(opt)


def test_fp16_autocast_with_batchnorm_learns_with_batchnorm_in_float32():
    """Under float16 autocast, Hz through BatchNorm's backward overflows to NaN: AdaHessian
    skips every step. optim.batchnorm_in_float32 (which classification.train applies for
    fp16 + a second-order optimizer) makes every step count."""
    device = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 16, 16, generator=gen)  # BatchNorm sums over 32·14·14 values
    y = torch.randint(0, 4, (32,), generator=gen)

    def run(float32_bn: bool) -> tuple[int, float, float]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, bias=False),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 4),
        )
        if float32_bn:
            assert optim.batchnorm_in_float32(model) == 1
        opt = AdaHessian(model.parameters(), lr=0.05, eps=1e-2, seed=0)
        scaler = torch.amp.GradScaler(device.type)
        losses, taken = [], 0
        for _ in range(8):
            with torch.autocast(device.type, dtype=torch.float16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            losses.append(loss.item())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward(create_graph=True)
            optim.scaler_step(opt, scaler)
            taken += not opt.hessian_overflow
        return taken, losses[0], losses[-1]

    taken, first, last = run(False)
    assert taken == 0 and first == last  # nothing moved; the scaler backed off each time
    taken, first, last = run(True)
    assert taken >= 7 and last < first
