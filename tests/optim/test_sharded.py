"""The optimizers under FSDP2, FSDP1 and ZeroRedundancyOptimizer, two gloo processes on CPU.

FSDP2 (``fully_shard``) gives the optimizer DTensor parameters sharded on dim 0, unevenly
here (7 and 3 rows over 2 ranks). Apollo's reductions (Σ, ‖·‖∞, ‖·‖₄, the stable decay's
mean) must be over the whole tensor, so the ranks' parameters must equal one process
minimising the mean of the two ranks' losses. What cannot be exact is refused with a
clear error. Every scenario, and docs/integrations.md's DDP, FSDP2 and ZeRO snippets, run
in one spawned pair of processes (each spawn costs seconds).

FSDP1 cannot be built on a CPU (it needs an accelerator), so its refusal is tested on
parameters carrying the mark FSDP1 puts on its flat parameters and on the original
parameters it flattens (``torch.distributed.fsdp._common_utils._set_fsdp_flattened``).
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.distributed.fsdp

from apollo_optim import AdaBelief, AdaHessian, Apollo
from tests.optim.docs_snippets import run_snippet
from tests.optim.two_ranks import spawn

# FSDP2's public entry point (torch 2.4 has it only under a private module)
HAS_FSDP2 = hasattr(torch.distributed.fsdp, "fully_shard")
needs_fsdp2 = pytest.mark.skipif(
    not HAS_FSDP2, reason=f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard"
)

STEPS = 4
CASES = {  # name -> (class, kwargs); rebound='belief' so the ‖Δ‖∞ reduction matters
    "apollo_belief": (Apollo, dict(lr=0.05, rebound="belief", warmup=2, weight_decay=1e-2)),
    "apollo_stable": (
        Apollo,
        dict(lr=0.05, rebound="belief", warmup=0, weight_decay=0.1, weight_decay_type="stable"),
    ),
    "apollo_constant": (Apollo, dict(lr=0.05, warmup=2, weight_decay=1e-3)),
    "apollow": (Apollo, dict(lr=0.05, warmup=2, weight_decay=0.1, weight_decay_type="decoupled")),
    "adabelief_stable": (
        AdaBelief,
        dict(lr=0.01, weight_decay=0.1, weight_decay_type="stable"),
    ),
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)
    ).double()


def _loss(model, rank: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    return model(x).pow(2).mean()


def _train(model, opt, rank: int | None) -> None:
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        if rank is None:  # one process: the mean of both ranks' losses
            (0.5 * (_loss(model, 0) + _loss(model, 1))).backward()
        else:
            _loss(model, rank).backward()
        opt.step()


def _refusals(rank: int) -> dict[str, str]:
    """The error line each unsupported setup gives (empty if it gave none)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    out = {}

    def attempt(name, fn):
        try:
            fn()
            out[name] = ""
        except (ValueError, RuntimeError) as e:
            out[name] = str(e)

    if HAS_FSDP2:
        fsdp2 = _model()
        torch.distributed.fsdp.fully_shard(fsdp2)
        attempt("adahessian_fsdp2", lambda: AdaHessian(fsdp2.parameters()))
    attempt(
        "adahessian_zero",
        lambda: ZeroRedundancyOptimizer(_model().parameters(), optimizer_class=AdaHessian),
    )
    # a partition ZeRO's check cannot see: ranks with different parameter lists
    w = [torch.ones(2, requires_grad=True) for _ in range(rank + 1)]
    opt = AdaHessian(w, lr=0.1)
    sum((x**2).sum() for x in w).backward(create_graph=True)
    attempt("adahessian_uneven_ranks", opt.step)
    return out


def _worker(rank: int, out_dir: str) -> None:
    results = {"snippets": []}
    for name in ("ddp", "fsdp2", "zero") if HAS_FSDP2 else ("ddp", "zero"):
        run_snippet(name)  # docs/integrations.md, as written
        results["snippets"].append(name)
    if HAS_FSDP2:
        from torch.distributed.fsdp import fully_shard

        torch.distributed.device_mesh.init_device_mesh("cpu", (2,))
        for name, (cls, kwargs) in CASES.items():
            model = _model()
            for layer in (model[0], model[2]):
                fully_shard(layer)
            fully_shard(model)
            opt = cls(model.parameters(), **kwargs)
            _train(model, opt, rank)
            results[name] = [p.full_tensor().detach().clone() for p in model.parameters()]
    results["refusals"] = _refusals(rank)
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    spawn(_worker, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_docs_distributed_snippets_run_on_two_ranks(ranks):
    for rank in ranks:
        assert rank["snippets"] == (["ddp", "fsdp2", "zero"] if HAS_FSDP2 else ["ddp", "zero"])


@needs_fsdp2
def test_docs_fsdp2_snippet_ran(ranks):
    assert all("fsdp2" in rank["snippets"] for rank in ranks)


@needs_fsdp2
@pytest.mark.parametrize("name", list(CASES))
def test_fsdp2_step_equals_one_process(ranks, name):
    cls, kwargs = CASES[name]
    model = _model()
    _train(model, cls(model.parameters(), **kwargs), None)
    start = _model()
    for r0, r1, p, s in zip(
        ranks[0][name], ranks[1][name], model.parameters(), start.parameters(), strict=True
    ):
        assert torch.equal(r0, r1)
        assert not torch.equal(r0, s.detach())
        # reductions summed shard by shard: equal up to float64 rounding
        torch.testing.assert_close(r0, p.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        ("adahessian_fsdp2", "AdaHessian does not support DTensor"),
        ("adahessian_zero", "cannot run under ZeroRedundancyOptimizer"),
        ("adahessian_uneven_ranks", "ranks hold different numbers of parameters"),
    ],
)
def test_unsupported_sharding_is_a_clear_error(ranks, setup, pattern):
    if setup not in ranks[0]["refusals"]:
        pytest.skip(f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard")
    for rank in ranks:
        assert re.search(pattern, rank["refusals"][setup]), rank["refusals"][setup]


def _fsdp1_marked(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    from torch.distributed.fsdp._common_utils import _set_fsdp_flattened

    params = list(model.parameters())
    for p in params:
        _set_fsdp_flattened(p)
    return params


def test_fsdp1_flat_parameters_are_refused_unless_the_rule_is_elementwise():
    params = _fsdp1_marked(_model())
    for make in (
        lambda: Apollo(params, lr=0.01),
        lambda: AdaHessian(params),
        lambda: AdaBelief(params, weight_decay=0.1, weight_decay_type="stable"),
    ):
        with pytest.raises(ValueError, match="does not support FSDP1"):
            make()
    AdaBelief(params, weight_decay=0.1, weight_decay_type="decoupled")  # elementwise: exact
