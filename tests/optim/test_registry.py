"""The registry: names, specs, errors, and adding an optimizer with one call."""

import inspect
import pathlib
import re

import pytest
import torch

import apollo_optim as optim

PAPER_NAMES = ["adabelief", "adahessian", "adam", "apollo", "apollow", "radam", "sgd"]


def params():
    return [torch.nn.Parameter(torch.randn(3))]


def test_the_papers_optimizers_are_registered():
    assert set(PAPER_NAMES) <= set(optim.names())
    assert optim.names() == sorted(optim.names())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamw'.*apollo.*sgd"):
        optim.create("adamw", params(), lr=0.1)


def test_only_adahessian_needs_create_graph():
    second_order = [n for n in PAPER_NAMES if optim.get(n).needs_create_graph]
    assert second_order == ["adahessian"]


def test_apollow_is_apollo_with_decoupled_weight_decay():
    opt = optim.create("apollow", params(), lr=0.01, weight_decay=2.5e-2)
    assert type(opt) is optim.Apollo
    assert opt.param_groups[0]["weight_decay_type"] == "decoupled"
    assert optim.create("apollo", params(), lr=0.01).param_groups[0]["weight_decay_type"] == "L2"


@pytest.mark.parametrize(
    "name, kwargs, cls, flags",
    [
        ("sgd", {"lr": 0.1, "weight_decay": 5e-4}, torch.optim.SGD, {"nesterov": True}),
        ("adam", {"weight_decay": 0.25}, torch.optim.AdamW, {}),
        ("adam", {"weight_decay_type": "L2"}, torch.optim.Adam, {}),
        ("radam", {"weight_decay": 0.25}, torch.optim.RAdam, {"decoupled_weight_decay": True}),
    ],
)
def test_baselines_are_torch_optim_with_the_papers_flags(name, kwargs, cls, flags):
    opt = optim.create(name, params(), **kwargs)
    assert type(opt) is cls
    group = opt.param_groups[0]
    for key, value in {**kwargs, **flags}.items():
        if key != "weight_decay_type":
            assert group[key] == value
    if name == "sgd":
        assert group["momentum"] == 0.9


def test_register_decorator_defaults_and_unregister():
    @optim.register("scaled-sgd", defaults={"lr": 0.5}, summary="test only")
    def scaled_sgd(ps, lr):
        return torch.optim.SGD(ps, lr=lr)

    try:
        spec = optim.get("scaled-sgd")
        assert spec.summary == "test only" and not spec.needs_create_graph
        assert optim.create("scaled-sgd", params()).param_groups[0]["lr"] == 0.5
        assert optim.create("scaled-sgd", params(), lr=0.2).param_groups[0]["lr"] == 0.2
        with pytest.raises(ValueError, match="already registered"):
            optim.register("scaled-sgd", scaled_sgd)
    finally:
        optim.unregister("scaled-sgd")
    assert "scaled-sgd" not in optim.names()


def test_needs_create_graph_is_read_from_the_class():
    class SecondOrder(torch.optim.SGD):
        needs_create_graph = True

    optim.register("second-order-test", SecondOrder)
    try:
        assert optim.get("second-order-test").needs_create_graph
    finally:
        optim.unregister("second-order-test")


@pytest.mark.parametrize("bad", ["", "Apollo", " sgd", None])
def test_bad_names_are_rejected(bad):
    with pytest.raises(ValueError, match="name"):
        optim.register(bad, torch.optim.SGD)


def test_no_module_shadows_optim_with_torchs():
    root = pathlib.Path(__file__).resolve().parents[2]
    pattern = re.compile(r"^\s*from\s+torch\s+import\s+.*\boptim\b", re.M)
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if ".venv" not in path.parts and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_public_api_is_documented():
    for name in optim.__all__:
        obj = getattr(optim, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"optim.{name} has no docstring"


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_baselines_are_not_fused_on_the_cpu(name):
    cpu = [torch.nn.Parameter(torch.zeros(3))]
    opt = optim.create(name, cpu, lr=0.1)
    assert not opt.param_groups[0]["fused"]  # CPU: the per-tensor/multi-tensor paths
    if name == "sgd":
        assert opt.param_groups[0]["foreach"] is False
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]  # param groups pass through
    assert len(optim.create(name, groups, lr=0.1).param_groups[0]["params"]) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_baselines_fused_on_cuda_unless_a_path_was_chosen(name):
    gpu = [torch.nn.Parameter(torch.zeros(3, device="cuda"))]
    assert optim.create(name, gpu, lr=0.1).param_groups[0]["fused"] is True
    chosen = optim.create(name, gpu, lr=0.1, foreach=True).param_groups[0]
    assert chosen["foreach"] is True and not chosen["fused"]
