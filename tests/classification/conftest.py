"""Tiny data sets in the real on-disk layouts (CIFAR's python pickles, an ImageFolder), and a
tiny run of a real table row on them (:func:`train_tiny`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classification.data import CIFAR

ROOT = Path(__file__).resolve().parents[2]
CIFAR10 = str(ROOT / "configs" / "cifar10.yaml")
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
# A tiny run of a real row: the table's optimizer and schedule, a 1-block-per-stage ResNet.
TINY = [
    "--workers",
    "0",
    "--device",
    "cpu",
    "model=cifar_resnet8",
    "batch_size=8",
    "eval_batch_size=10",
    "augmentation.crop=16",
]


def train_tiny(
    out: Path,
    data: Path,
    row: str,
    *extra: str,
    schedule: str = "milestone",
    epochs: int = 2,
    config: str = CIFAR10,
) -> dict:
    """``classification.train.main`` for ``epochs`` epochs of 2 updates of :data:`TINY`."""
    from classification import train

    argv = [
        "--config",
        config,
        "--row",
        row,
        "--schedule",
        schedule,
        "--data-dir",
        str(data),
        "--out-dir",
        str(out),
        "--epochs",
        str(epochs),
        "--max-steps-per-epoch",
        "2",
        *TINY,
        *extra,
    ]
    return train.main(argv)


def write_cifar(
    root: Path,
    dataset: str = "cifar10",
    n_train: int = 48,
    n_test: int = 20,
    num_classes: int = 10,
    seed: int = 0,
) -> Path:
    """Pickles like the real ones (bytes keys, (N, 3072) uint8 rows) with a few images each."""
    folder, train_files, test_files, label_key = CIFAR[dataset]
    out = root / folder
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    per_file = max(1, n_train // len(train_files))
    for name, n in [(f, per_file) for f in train_files] + [(f, n_test) for f in test_files]:
        labels = rng.integers(0, num_classes, size=n)
        # class-dependent brightness, so a few steps of training can learn something
        data = rng.integers(0, 64, size=(n, 3072)) + (labels[:, None] * 19)
        batch = {b"data": data.clip(0, 255).astype(np.uint8), label_key.encode(): labels.tolist()}
        with open(out / name, "wb") as f:
            pickle.dump(batch, f)
    return root


def write_imagefolder(root: Path, classes: int = 3, per_class: int = 4, size: int = 20) -> Path:
    """``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` with tiny random images."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, size=(size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"img_{i}.JPEG", quality=80)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture
def sync_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Synchronizing CUDA calls of each classification training epoch, one entry per epoch."""
    from classification import train
    from tests.helpers import cuda_syncs_per_call

    return cuda_syncs_per_call(monkeypatch, train, "train_one_epoch")
