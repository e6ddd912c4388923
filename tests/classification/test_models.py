"""The paper's models: ResNet-110's exact size, ResNeXt-50's, and a forward/backward pass."""

from __future__ import annotations

import pytest
import torch

from classification.models import build_model


def test_resnet110_has_the_papers_size() -> None:
    params = list(build_model("cifar_resnet110", 10).parameters())
    assert sum(p.numel() for p in params) == 1_730_714
    assert len(params) == 335


def test_resnet110_forward_backward_batch_of_two() -> None:
    torch.manual_seed(0)
    model = build_model("cifar_resnet110", 10)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnext50_is_torchvisions_untrained() -> None:
    model = build_model("resnext50_32x4d", 1000)
    assert sum(p.numel() for p in model.parameters()) == 25_028_904
    assert model.fc.out_features == 1000


def test_cifar100_head_and_unknown_models() -> None:
    assert build_model("cifar_resnet20", 100).fc.out_features == 100
    with pytest.raises(ValueError, match="depth must be 6n\\+2"):
        build_model("cifar_resnet21", 10)
    with pytest.raises(ValueError, match=r"unknown model 'resnet110'; models: cifar_resnet"):
        build_model("resnet110", 10)
