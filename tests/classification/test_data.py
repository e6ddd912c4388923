"""CIFAR pickles and ImageFolder read from the real layouts; bad data is one clear error."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from classification import data
from tests.classification.conftest import write_cifar

AUG = {"style": "cifar", "crop": 32, "padding": 4, "hflip": True, "mean": [0.5] * 3,
       "std": [0.25] * 3}  # fmt: skip


def config(root: Path, dataset: str = "cifar10", num_classes: int = 10, **aug) -> dict:
    return {"dataset": dataset, "data_dir": str(root), "num_classes": num_classes,
            "augmentation": {**AUG, **aug}}  # fmt: skip


def test_cifar_pickles_round_trip(cifar_dir: Path) -> None:
    images, labels = data.read_cifar(cifar_dir, "cifar10", train=True)
    assert images.shape == (45, 32, 32, 3) and images.dtype == np.uint8  # 5 files x 9
    with open(cifar_dir / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")
    # row-major (3, 32, 32) planes -> HWC: pixel (0, 1) of the green plane is element 1024 + 1
    assert images[0, 0, 1, 1] == first[b"data"][0][1024 + 1]
    assert labels[:9].tolist() == first[b"labels"]
    # the folder itself works too, and no checksum is asked of a subset
    same, _ = data.read_cifar(cifar_dir / "cifar-10-batches-py", "cifar10", train=True)
    assert np.array_equal(same, images)


def test_cifar100_layout(tmp_path: Path) -> None:
    root = write_cifar(tmp_path, "cifar100", n_train=12, n_test=6, num_classes=100)
    train_set, test_set = data.build_datasets(config(root, "cifar100", 100))
    assert (len(train_set), len(test_set)) == (12, 6)
    x, y = train_set[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 100


def test_eval_transform_is_normalize_only(cifar_dir: Path) -> None:
    _, test_set = data.build_datasets(config(cifar_dir))
    x, _ = test_set[0]
    raw = torch.from_numpy(test_set.images[0]).permute(2, 0, 1).float() / 255
    assert torch.allclose(x, (raw - 0.5) / 0.25)


def test_imagefolder(imagenet_dir: Path) -> None:
    cfg = config(imagenet_dir, "imagenet", 3, style="imagenet", crop=16, resize=18)
    train_set, val_set = data.build_datasets(cfg)
    assert (len(train_set), len(val_set)) == (12, 12)
    assert train_set[0][0].shape == val_set[0][0].shape == (3, 16, 16)
    with pytest.raises(data.DataError, match=r"has 3 class folders but num_classes is 1000"):
        data.build_datasets({**cfg, "num_classes": 1000})


def test_bad_data_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match=r"data directory .*nowhere does not exist"):
        data.build_datasets(config(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match=r"no cifar10 data in .*expected .*data_batch_1"):
        data.build_datasets(config(tmp_path))
    root = write_cifar(tmp_path / "short")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match=r"missing cifar10 file .*data_batch_3"):
        data.build_datasets(config(root))
    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(data.DataError, match=r"malformed cifar10 file .*data_batch_3.*3072"):
        data.build_datasets(config(root))
    with pytest.raises(data.DataError, match=r"labels in .* outside num_classes 5"):
        data.build_datasets(config(write_cifar(tmp_path / "labels"), num_classes=5))
    with pytest.raises(data.DataError, match=r"bad ImageNet folder .*train"):
        data.build_datasets(config(tmp_path / "labels", "imagenet", style="imagenet", resize=36))
