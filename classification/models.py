"""The paper's image models: CIFAR-style ResNet-110 and torchvision's ResNeXt-50 32x4d.

ResNet-110 (He et al., 2016, section 4.2) as in the code the authors used
(bearpaw/pytorch-classification): a 3x3 conv to 16 channels, three stages of n = 18 basic
blocks with widths 16/32/64 (stride 2 at the start of stages 2 and 3, where the shortcut is a
1x1 conv + BatchNorm), global average pooling and a linear classifier. ``resnet<6n+2>``
builds any depth of this family (``resnet8`` is the tiny one tests use); ResNet-110 has
1,730,714 parameters in 335 tensors for 10 classes.
"""

from __future__ import annotations

import re

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet for 32x32 images with ``depth = 6n + 2`` (110 in the paper)."""

    def __init__(self, depth: int = 110, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 20, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = layers
        # Adaptive pooling: the same model also runs on the larger crops of a smoke test.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(name: str, num_classes: int) -> nn.Module:
    """``cifar_resnet<6n+2>`` (e.g. ``cifar_resnet110``) or a torchvision classification model
    by name (``resnext50_32x4d``), always randomly initialised (``weights=None``)."""
    if name == "digits_cnn":  # the quickstart's small CNN: see classification/digits.py
        from .digits import DigitsCNN

        return DigitsCNN(num_classes)
    match = re.fullmatch(r"cifar_resnet(\d+)", name)
    if match:
        return CifarResNet(int(match.group(1)), num_classes)
    import torchvision  # here, not at the top: the digits task's workers start ~2 s sooner

    if name not in torchvision.models.list_models(torchvision.models):
        raise ValueError(
            f"unknown model {name!r}; models: cifar_resnet<6n+2> (cifar_resnet20, ..., "
            "cifar_resnet110) or a torchvision classification model (resnext50_32x4d, ...)"
        )
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
