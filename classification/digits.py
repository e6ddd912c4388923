"""scikit-learn's handwritten digits and a small CNN: the quickstart's task, with no download.

Data (``dataset: digits``): ``sklearn.datasets.load_digits``, 1,797 real 8x8 grey-scale scans
(values 0..16) of the digits 0-9, bundled with scikit-learn. The split is fixed and unshuffled,
like ``train_test_split(X, y, test_size=0.2, shuffle=False)``: the first 1,437 images train,
the last 360 (33-37 per class) are the held-out test set. Pixels are divided by 16, then
standardised with the training split's mean and standard deviation (one scalar each, so the
test set never informs the model). No augmentation: ``augmentation.style`` must be ``none``.

Model (``model: digits_cnn``): three 3x3 convolutions with BatchNorm and ReLU (1 -> 16
channels at 8x8, 16 -> 32 with stride 2 to 4x4, 32 -> 32), global average pooling and a
linear classifier: 14,458 parameters in 11 tensors. BatchNorm, like ResNet-110's, makes the
weight-decay settings of the paper's rows act on it as they do on the real network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

#: Images in the held-out test split (the last ones of ``load_digits``).
TEST_SIZE = 360
MODEL = "digits_cnn"


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images, train_labels, test_images, test_labels)``; images (N, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits  # imported here: only the digits task needs it

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    cut = len(labels) - TEST_SIZE
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def build_datasets(config: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    """Train and test sets as tensors (N, 1, 8, 8), standardised with the training statistics."""
    style = config["augmentation"].get("style")
    if style != "none":
        raise ValueError(f"dataset digits takes no augmentation: set augmentation.style=none, "
                         f"got {style!r}")  # fmt: skip
    if config["num_classes"] != 10:
        raise ValueError(
            f"dataset digits has 10 classes, but num_classes is {config['num_classes']}"
        )
    train_x, train_y, test_x, test_y = digits_split()
    mean, std = float(train_x.mean()), float(train_x.std())
    sets = []
    for x, y in ((train_x, train_y), (test_x, test_y)):
        images = torch.from_numpy((x - mean) / std).unsqueeze(1)
        sets.append(TensorDataset(images, torch.from_numpy(y)))
    return sets[0], sets[1]


class DigitsCNN(nn.Module):
    """Three conv-BN-ReLU layers (16, 32, 32 channels), global average pooling, a linear layer."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 32)) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
            nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b),
            nn.ReLU(inplace=True),
            nn.Conv2d(b, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():  # the same initialisation as the CIFAR ResNet
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))
