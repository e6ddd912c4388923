"""scikit-learn's handwritten digits and a small CNN: the quickstart's task, with no download.

Data (``dataset: digits``): ``sklearn.datasets.load_digits``, 1,797 real 8x8 grey-scale scans
(values 0..16) of the digits 0-9, bundled with scikit-learn. The first process that needs them
copies them, unchanged and in order, into ``digits.npz`` (``images`` uint8 (1797, 8, 8),
``labels`` uint8 (1797,)) in ``data_dir``, or when that is null in ``~/.cache/apollo-optim``
(``$XDG_CACHE_HOME`` respected); every process reads that file, so a training process never
imports scikit-learn and SciPy (~1.3 s of start-up each). The split is fixed and unshuffled,
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

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from engine.checkpoint import atomic_write

#: Images in the held-out test split (the last ones of ``load_digits``).
TEST_SIZE = 360
MODEL = "digits_cnn"


#: The file the digits are cached in, inside ``data_dir`` or :func:`default_data_dir`.
CACHE_NAME = "digits.npz"
NUM_IMAGES = 1797


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/apollo-optim``, by default ``~/.cache/apollo-optim``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "apollo-optim"


def cache_digits(path: str | Path) -> Path:
    """Write scikit-learn's digits to ``path`` (an ``.npz``) atomically; returns the path.

    Concurrent first runs may both write it: each renames a complete file into place.
    """
    from sklearn.datasets import load_digits  # the only place scikit-learn is imported

    digits = load_digits()
    images, labels = digits.images.astype(np.uint8), digits.target.astype(np.uint8)
    assert np.array_equal(images, digits.images) and np.array_equal(labels, digits.target)
    atomic_write(path, lambda f: np.savez(f, images=images, labels=labels))
    return Path(path)


def load_digits(data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: uint8 (1797, 8, 8) in 0..16 and (1797,) in 0..9, from the cache
    (written first if missing). ``ValueError`` naming the file if it is not the digits."""
    folder = Path(data_dir or default_data_dir())
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"data directory {folder} is a file, not a folder (for {CACHE_NAME})")
    path = folder / CACHE_NAME
    if not path.is_file():
        cache_digits(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except Exception as exc:
        raise ValueError(
            f"unreadable digits file {path} ({type(exc).__name__}: {exc}); delete it and it "
            "is rebuilt from scikit-learn"
        ) from None
    if (
        (images.shape, labels.shape, images.dtype, labels.dtype)
        != ((NUM_IMAGES, 8, 8), (NUM_IMAGES,), np.uint8, np.uint8)
        or images.max() > 16
        or labels.max() > 9
    ):
        raise ValueError(
            f"{path} does not hold scikit-learn's digits (images {images.shape} "
            f"{images.dtype}, labels {labels.shape} {labels.dtype}); delete it and it is rebuilt"
        )
    return images, labels


def digits_split(
    data_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images, train_labels, test_images, test_labels)``; images (N, 8, 8) in [0, 1]."""
    images, labels = load_digits(data_dir)
    images = images.astype(np.float32) / 16.0
    labels = labels.astype(np.int64)
    cut = len(labels) - TEST_SIZE
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def build_datasets(config: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    """Train and test sets as tensors (N, 1, 8, 8), standardised with the training statistics."""
    style = config["augmentation"].get("style")
    if style != "none":
        raise ValueError(
            f"dataset digits takes no augmentation: set augmentation.style=none, got {style!r}"
        )
    if config["num_classes"] != 10:
        raise ValueError(
            f"dataset digits has 10 classes, but num_classes is {config['num_classes']}"
        )
    train_x, train_y, test_x, test_y = digits_split(config.get("data_dir"))
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
            nn.Conv2d(1, a, 3, padding=1, bias=False),
            nn.BatchNorm2d(a),
            nn.ReLU(inplace=True),
            nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(b),
            nn.ReLU(inplace=True),
            nn.Conv2d(b, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():  # the same initialisation as the CIFAR ResNet
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))
