"""CIFAR-10/100 from their python pickles, ImageNet from class folders, the paper's augmentation.

On-disk layouts (the standard ones; ``--data-dir`` points at the folder named first)::

    D/cifar-10-batches-py/{data_batch_1..5, test_batch}   (or D itself holds those files)
    D/cifar-100-python/{train, test}
    D/train/<class>/*.JPEG  and  D/val/<class>/*.JPEG      (ImageNet, as torchvision's ImageFolder)

CIFAR is read by this module, not by ``torchvision.datasets.CIFAR10``, so checksums are
checked only when downloading (``python -m classification.data cifar10 D``): a subset or a
rebuilt copy still loads. Augmentation follows the paper (``../shared/spec/experiments.md``);
every number comes from the config's ``augmentation`` section.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets, transforms

from engine.distributed import Context, split_batch

#: dataset -> (folder, train files, test files, label key)
CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}  # fmt: skip
DATASETS = (*CIFAR, "imagenet", "digits")


class DataError(ValueError):
    """Missing or malformed data; the message names the path."""


def cifar_dir(root: str | Path, dataset: str) -> Path:
    """The folder holding the pickles: ``root/<standard folder>`` or ``root`` itself."""
    folder, train_files, _, _ = CIFAR[dataset]
    root = Path(root)
    for candidate in (root / folder, root):
        if (candidate / train_files[0]).is_file():
            return candidate
    raise DataError(
        f"no {dataset} data in {root}: expected {root / folder / train_files[0]} "
        f"(the standard python layout; download with: python -m classification.data {dataset} "
        f"{root})"
    )


def read_cifar(root: str | Path, dataset: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 from the python pickles."""
    folder = cifar_dir(root, dataset)
    _, train_files, test_files, label_key = CIFAR[dataset]
    images, labels = [], []
    for name in train_files if train else test_files:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
            data = np.asarray(batch["data"], dtype=np.uint8)
            target = np.asarray(batch[label_key], dtype=np.int64)
        except FileNotFoundError:
            raise DataError(f"missing {dataset} file {path}") from None
        except Exception as exc:
            raise DataError(
                f"malformed {dataset} file {path}: {type(exc).__name__}: {exc}"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(target) != len(data):
            raise DataError(
                f"malformed {dataset} file {path}: data {data.shape} and {len(target)} labels, "
                "expected (N, 3072) and N"
            )
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(target)
    return np.concatenate(images), np.concatenate(labels)


class ArrayImages(Dataset):
    """Images held in memory as a uint8 array, transformed as PIL images (like torchvision's)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def build_transforms(aug: Mapping[str, Any], train: bool) -> transforms.Compose:
    """The paper's pipelines. ``style: cifar``: RandomCrop(crop, padding) + HFlip for training,
    Normalize only for eval. ``style: imagenet``: RandomResizedCrop(crop) + HFlip for training,
    Resize(resize) + CenterCrop(crop) for eval."""
    norm = [transforms.ToTensor(), transforms.Normalize(aug["mean"], aug["std"])]
    flip = [transforms.RandomHorizontalFlip()] if aug["hflip"] else []
    if aug["style"] == "cifar":
        if not train:
            return transforms.Compose(norm)
        return transforms.Compose(
            [transforms.RandomCrop(aug["crop"], padding=aug["padding"]), *flip, *norm]
        )
    if aug["style"] == "imagenet":
        if not train:
            return transforms.Compose(
                [transforms.Resize(aug["resize"]), transforms.CenterCrop(aug["crop"]), *norm]
            )
        return transforms.Compose([transforms.RandomResizedCrop(aug["crop"]), *flip, *norm])
    raise ValueError(f"augmentation.style must be cifar or imagenet, got {aug['style']!r}")


def build_datasets(config: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    """Train and eval datasets for ``config['dataset']`` from ``config['data_dir']``."""
    name, root, aug = config["dataset"], config["data_dir"], config["augmentation"]
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; datasets: {', '.join(DATASETS)}")
    if name == "digits":  # bundled with scikit-learn, no data_dir: see classification/digits.py
        from .digits import build_datasets as build_digits

        return build_digits(config)
    if root is None:
        raise DataError(f"no data directory for {name}: pass --data-dir")
    if not Path(root).is_dir():
        raise DataError(f"data directory {root} does not exist")
    if name in CIFAR:
        sets = []
        for train in (True, False):
            images, labels = read_cifar(root, name, train)
            _check_labels(labels, config["num_classes"], Path(root))
            sets.append(ArrayImages(images, labels, build_transforms(aug, train)))
        return sets[0], sets[1]
    sets = []
    for split, train in (("train", True), ("val", False)):
        path = Path(root) / split
        try:
            ds = datasets.ImageFolder(str(path), transform=build_transforms(aug, train))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"bad ImageNet folder {path}: {exc}") from None
        if len(ds.classes) != config["num_classes"]:
            raise DataError(
                f"{path} has {len(ds.classes)} class folders but num_classes is "
                f"{config['num_classes']} (override with num_classes={len(ds.classes)})"
            )
        sets.append(ds)
    return sets[0], sets[1]


def _check_labels(labels: np.ndarray, num_classes: int, root: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels in {root} span {labels.min()}..{labels.max()}, outside num_classes "
            f"{num_classes}"
        )


def build_loaders(
    config: Mapping[str, Any], ctx: Context
) -> tuple[DataLoader, DataLoader, DistributedSampler]:
    """Train loader (the global batch split over ranks, order seeded by ``seed`` and the epoch,
    so a resumed run sees the same batches) and an eval loader (each rank a disjoint slice)."""
    train_set, eval_set = build_datasets(config)
    sampler = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config["seed"]
    )
    common = {
        "num_workers": config["workers"],
        "pin_memory": ctx.device.type == "cuda",
        "persistent_workers": False,  # workers re-seed from the (checkpointed) RNG every epoch
    }
    train = DataLoader(
        train_set, batch_size=split_batch(config["batch_size"], ctx), sampler=sampler, **common
    )
    shard = Subset(eval_set, range(ctx.rank, len(eval_set), ctx.world_size))
    eval_batch = max(1, config["eval_batch_size"] // ctx.world_size)
    return train, DataLoader(shard, batch_size=eval_batch, shuffle=False, **common), sampler


def download(dataset: str, root: str | Path) -> Path:
    """Fetch CIFAR-10/100 with torchvision (which verifies the archive's checksum)."""
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[dataset]
    cls(str(root), train=True, download=True)
    return cifar_dir(root, dataset)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m classification.data", description=download.__doc__)
    p.add_argument("dataset", choices=sorted(CIFAR))
    p.add_argument("root")
    args = p.parse_args(argv)
    print(download(args.dataset, args.root))


if __name__ == "__main__":
    from engine.cli import main as run_main

    run_main(main)
