"""sync_bn: BatchNorm statistics over all ranks (torch's SyncBatchNorm) instead of per rank."""

from __future__ import annotations

import pytest
import torch

from classification.models import build_model
from classification.train import sync_batchnorm
from engine import distributed
from engine.run import config_diffs


def _ctx(device: str, world_size: int) -> distributed.Context:
    return distributed.Context(
        rank=0, world_size=world_size, local_rank=0, device=torch.device(device)
    )


def _batchnorms(model: torch.nn.Module) -> list[type]:
    return [
        type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]


def test_sync_bn_converts_the_layers_in_place_under_ddp_on_cuda() -> None:
    model = build_model("cifar_resnet8", 10)
    params = list(model.parameters())
    keys = list(model.state_dict())
    config = {"sync_bn": True, "config": "t.yaml"}
    # the conversion itself needs no GPU: the layers are swapped, parameters kept
    assert sync_batchnorm(model, config, _ctx("cuda", 2)) == "SyncBatchNorm over all ranks"
    assert set(_batchnorms(model)) == {torch.nn.SyncBatchNorm}
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))  # optimizer's
    assert list(model.state_dict()) == keys  # checkpoints load either way


@pytest.mark.parametrize(
    ("sync_bn", "device", "world_size", "said"),
    [
        (False, "cuda", 2, "BatchNorm statistics per rank"),
        (True, "cpu", 1, "BatchNorm"),  # one process: nothing to synchronise
        (False, "cpu", 1, "BatchNorm"),
    ],
)
def test_per_rank_statistics_unless_asked(sync_bn, device, world_size, said) -> None:
    model = build_model("cifar_resnet8", 10)
    assert (
        sync_batchnorm(model, {"sync_bn": sync_bn, "config": "t"}, _ctx(device, world_size)) == said
    )
    assert set(_batchnorms(model)) == {torch.nn.BatchNorm2d}


def test_sync_bn_on_cpu_ranks_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"^t\.yaml: sync_bn=true needs --device cuda \("):
        sync_batchnorm(
            build_model("cifar_resnet8", 10), {"sync_bn": True, "config": "t.yaml"}, _ctx("cpu", 2)
        )


def test_a_run_written_before_sync_bn_existed_resumes() -> None:
    old = {"row": "SGD", "lr": 0.1}
    assert config_diffs(old, {**old, "sync_bn": False}, ()) == []
    assert config_diffs(old, {**old, "sync_bn": True}, ()) == ["sync_bn: False -> True"]
