"""The schedules against sequences computed by hand, and their resumption."""

import io
import math

import pytest
import torch

import apollo_optim as optim


def seq(kind, n, base_lr=1.0, **kw):
    return [optim.lr_at(t, base_lr, kind, **kw) for t in range(n)]


def test_milestone_matches_hand_computed():
    assert seq("milestone", 6, 0.1, milestones=[2, 4]) == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_cosine_matches_hand_computed_and_holds_last_lr():
    c = math.cos(math.pi / 4)
    expected = [1.0, (1 + c) / 2, 0.5, (1 - c) / 2, 0.0, 0.0]
    assert seq("cosine", 6, total_steps=4) == pytest.approx(expected)
    # with a floor: last + (base - last) * (1 + cos) / 2
    assert seq("cosine", 3, total_steps=2, last_lr=0.1) == pytest.approx([1.0, 0.55, 0.1])


def test_cosine_equals_torch_cosine_annealing():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-4)
    got = []
    for _ in range(10):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert got == pytest.approx(seq("cosine", 10, 0.1, total_steps=10, last_lr=1e-4), rel=1e-12)


def test_inverse_sqrt_with_warmup_matches_hand_computed():
    expected = [0.0, 0.25, 0.5, 0.75, 1.0, math.sqrt(4 / 5), math.sqrt(4 / 6)]
    assert seq("inverse_sqrt", 7, warmup=4) == pytest.approx(expected)
    # the paper's NMT Adam: lr 5e-4 * sqrt(4000 / step), from init_lr 1e-7
    assert optim.lr_at(0, 5e-4, "inverse_sqrt", warmup=4000, init_lr=1e-7) == 1e-7
    assert optim.lr_at(16000, 5e-4, "inverse_sqrt", warmup=4000, init_lr=1e-7) == pytest.approx(
        2.5e-4
    )


def test_exponential_after_warmup():
    assert seq("exponential", 5, warmup=2, gamma=0.5) == pytest.approx([0, 0.5, 1, 0.5, 0.25])


def test_warmup_then_milestone_counts_absolute_steps():
    got = seq("milestone", 6, 0.1, warmup=2, init_lr=0.02, milestones=[4])
    assert got == pytest.approx([0.02, 0.06, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize(
    "kind, kw, match",
    [
        ("linear", {}, "kind="),
        ("constant", {"warmup": -1}, "warmup"),
        ("constant", {"init_lr": -1.0}, "init_lr"),
        ("milestone", {"milestones": [4, 2]}, "milestones"),
        ("milestone", {"decay_rate": 0.0}, "decay_rate"),
        ("cosine", {}, "total_steps"),
        ("cosine", {"total_steps": 10, "last_lr": -1.0}, "last_lr"),
        ("inverse_sqrt", {}, "warmup"),
        ("exponential", {"gamma": 1.5}, "gamma"),
    ],
)
def test_bad_arguments_name_the_argument(kind, kw, match):
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match=match):
        optim.Schedule(torch.optim.SGD([p], lr=0.1), kind, **kw)


def _lrs(opt):
    return [g["lr"] for g in opt.param_groups]


def _make(lrs=(0.1, 0.01)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    opt = torch.optim.SGD(groups, lr=lrs[0])
    return opt, optim.Schedule(opt, "milestone", warmup=2, init_lr=0.0, milestones=[3, 5])


def test_schedule_sets_each_groups_lr_from_its_own_base():
    opt, schedule = _make()
    history = []
    for _ in range(6):
        history.append(_lrs(opt))
        opt.step()
        schedule.step()
    expected = [
        [optim.lr_at(t, b, "milestone", warmup=2, milestones=[3, 5]) for b in (0.1, 0.01)]
        for t in range(6)
    ]
    assert history == expected
    assert [h[0] for h in history] == pytest.approx([0.0, 0.05, 0.1, 0.01, 0.01, 0.001])


def test_schedule_resumes_from_state_dict_through_weights_only_load():
    opt, schedule = _make()
    straight = []
    for _ in range(7):
        straight.append(_lrs(opt))
        opt.step()
        schedule.step()

    opt, schedule = _make()
    resumed = []
    for _ in range(3):
        resumed.append(_lrs(opt))
        opt.step()
        schedule.step()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "schedule": schedule.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    opt, schedule = _make()
    opt.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    for _ in range(4):
        resumed.append(_lrs(opt))
        opt.step()
        schedule.step()
    assert resumed == straight
