"""CIFAR-10/100 from their python pickles, ImageNet from class folders, the paper's augmentation.

On-disk layouts (the standard ones; ``--data-dir`` points at the folder named first)::

    D/cifar-10-batches-py/{data_batch_1..5, test_batch}   (or D itself holds those files)
    D/cifar-100-python/{train, test}
    D/train/<class>/*.JPEG  and  D/val/<class>/*.JPEG      (ImageNet, as torchvision's ImageFolder)

Where to get each data set and how to lay it out: ``docs/data.md``. CIFAR is read by this
module, not by ``torchvision.datasets.CIFAR10``, so checksums are checked only when downloading
(``python -m classification.data cifar10 D``): a subset or a rebuilt copy still loads. Its
pickles are untrusted input, so they are read by :func:`load_cifar_batch`, which builds only
what the format holds and never runs code. Augmentation follows the paper (random crop with
padding and horizontal flips for CIFAR, random-resized crops for ImageNet); every number comes
from the config's ``augmentation`` section. ``data_pipeline`` picks where it runs
(:func:`pipeline`): in DataLoader workers (``loader``), or for CIFAR on the training device
itself (``device``, :mod:`classification.device_data`; ``auto`` does on CUDA).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

if TYPE_CHECKING:
    from torchvision import transforms

from engine.cli import ArgumentParser
from engine.distributed import Context, split_batch
from engine.lock import RunDirLock

from .device_data import DeviceImages

#: dataset -> (folder, train files, test files, label key)
CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}
DATASETS = (*CIFAR, "imagenet", "digits")
#: Values of ``data_pipeline`` (see :func:`pipeline`).
PIPELINES = ("auto", "device", "loader")


class DataError(ValueError):
    """Missing or malformed data; the message names the path."""


class ImageError(DataError):
    """An image file that cannot be decoded (truncated, not an image); names the file.

    Raised inside a DataLoader worker, it reaches the training process rebuilt from a message
    that holds the worker's whole traceback; only its last line, this error's own, is kept, so
    the user still reads one line.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rstrip().rsplit(marker, 1)[1]
        super().__init__(message)


def load_image(path: str) -> Image.Image:
    """An RGB image, as torchvision's default loader reads it; :class:`ImageError` naming the
    file when it is not a readable image."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except UnidentifiedImageError:
        raise ImageError(f"unreadable image {path} (not an image format PIL reads)") from None
    except OSError as exc:  # "image file is truncated", an unreadable file
        raise ImageError(f"unreadable image {path} ({exc.strerror or exc})") from None


def cifar_dir(root: str | Path, dataset: str) -> Path:
    """The folder holding the pickles: ``root/<standard folder>`` or ``root`` itself."""
    folder, train_files, _, _ = CIFAR[dataset]
    root = Path(root)
    for candidate in (root / folder, root):
        if (candidate / train_files[0]).is_file():
            return candidate
    raise DataError(
        f"no {dataset} data in {root}: expected {root / folder / train_files[0]} "
        "(the python version of the data set; where to get it and the layout: docs/data.md)"
    )


_ARRAY = np.zeros(1, np.uint8)
#: What a CIFAR pickle may name: NumPy's array reconstructors (NumPy 1 and 2 module names).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _ARRAY.__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): _ARRAY.__reduce__()[0],
    ("numpy.core.numeric", "_frombuffer"): _ARRAY.__reduce_ex__(5)[0],
    ("numpy._core.numeric", "_frombuffer"): _ARRAY.__reduce_ex__(5)[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, bytes, str, numbers and NumPy arrays, nothing else.

    The CIFAR batches are Python 2 cPickle files: a dict whose ``data`` is a uint8 array
    (pickled as ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``)
    and whose labels, file names and batch label are lists of ints, lists of strings and a
    string. Those three globals (under NumPy 1's and 2's module names) and ``_frombuffer``
    (NumPy's protocol-5 form, for copies rebuilt with Python 3) are the only ones admitted,
    so a pickle that names anything else, such as ``os.system``, fails before it runs.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a CIFAR batch never holds (only dicts, "
                "lists, bytes, str, ints and NumPy arrays); not loaded"
            ) from None


def load_cifar_batch(path: str | Path) -> dict[str, Any]:
    """One CIFAR batch file as a dict with str keys; untrusted bytes never run code.

    Raises ``pickle.UnpicklingError`` when the pickle names anything the format does not hold,
    ``ValueError`` when it is not a dict (:func:`read_cifar` turns both into a DataError).
    """
    path = Path(path)
    with open(path, "rb") as f:
        batch = _CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"expected a dict, got {type(batch).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def read_cifar(root: str | Path, dataset: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 from the python pickles."""
    folder = cifar_dir(root, dataset)
    _, train_files, test_files, label_key = CIFAR[dataset]
    images, labels = [], []
    for name in train_files if train else test_files:
        path = folder / name
        try:
            batch = load_cifar_batch(path)
            data, target = batch["data"], np.asarray(batch[label_key], dtype=np.int64)
        except FileNotFoundError:
            raise DataError(f"missing {dataset} file {path}") from None
        except Exception as exc:
            raise DataError(
                f"malformed {dataset} file {path}: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise DataError(f"malformed {dataset} file {path}: data is not a uint8 array")
        if data.ndim != 2 or data.shape[1] != 3072 or len(target) != len(data):
            raise DataError(
                f"malformed {dataset} file {path}: data {data.shape} and {len(target)} labels, "
                "expected (N, 3072) and N"
            )
        if not len(data):  # an empty test split would make every accuracy 0/0
            raise DataError(f"malformed {dataset} file {path}: it holds no images")
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
    # torchvision is imported here, not at the top: it costs a quickstart worker ~2 s of
    # start-up, and the digits task never uses it.
    from torchvision import transforms

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
    if name == "digits":  # scikit-learn's, cached on first use: see classification/digits.py
        from .digits import build_datasets as build_digits

        return build_digits(config)
    if root is None:
        raise DataError(f"no data directory for {name}: pass --data-dir")
    if not Path(root).is_dir():
        raise DataError(_missing_dir(root))
    if name in CIFAR:
        sets = []
        for train in (True, False):
            images, labels = read_cifar(root, name, train)
            _check_labels(labels, config["num_classes"], Path(root))
            sets.append(ArrayImages(images, labels, build_transforms(aug, train)))
        return sets[0], sets[1]
    from torchvision import datasets

    sets = []
    for split, train in (("train", True), ("val", False)):
        path = Path(root) / split
        try:
            ds = datasets.ImageFolder(
                str(path), transform=build_transforms(aug, train), loader=load_image
            )
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"bad ImageNet folder {path}: {exc}") from None
        if len(ds.classes) != config["num_classes"]:
            raise DataError(
                f"{path} has {len(ds.classes)} class folders but num_classes is "
                f"{config['num_classes']} (override with num_classes={len(ds.classes)})"
            )
        sets.append(ds)
    train_set, val_set = sets
    if val_set.classes != train_set.classes:  # an index would name another class in val
        only = sorted(set(train_set.classes) ^ set(val_set.classes))
        raise DataError(
            f"{Path(root) / 'val'} and {Path(root) / 'train'} hold different class folders "
            f"({', '.join(only[:5])}{' ...' if len(only) > 5 else ''} in only one of them); "
            "labels follow the sorted folder names, so both need the same ones"
        )
    return train_set, val_set


def _missing_dir(root: str | Path) -> str:
    if Path(root).exists():
        return f"data directory {root} is a file, not a folder"
    return f"data directory {root} does not exist"


def _check_labels(labels: np.ndarray, num_classes: int, root: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels in {root} span {labels.min()}..{labels.max()}, outside num_classes "
            f"{num_classes}"
        )


def pipeline(config: Mapping[str, Any], device: torch.device) -> str:
    """``data_pipeline`` resolved: ``device`` (CIFAR on the training device, see
    :mod:`classification.device_data`) or ``loader`` (DataLoader workers). ``auto`` is
    ``device`` for CIFAR on CUDA and ``loader`` otherwise (ImageNet and digits always)."""
    choice, name = config["data_pipeline"], config["dataset"]
    if choice not in PIPELINES:
        raise ValueError(
            f"{config.get('config', '<config>')}: data_pipeline must be one of "
            f"{', '.join(PIPELINES)}, got {choice!r}"
        )
    if choice == "auto":
        return "device" if name in CIFAR and device.type == "cuda" else "loader"
    if choice == "device" and name not in CIFAR:
        raise ValueError(
            f"{config.get('config', '<config>')}: data_pipeline=device holds CIFAR-10/100 "
            f"only; dataset {name} needs data_pipeline=loader"
        )
    return choice


def build_loaders(
    config: Mapping[str, Any],
    ctx: Context,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[Iterable, Iterable, DistributedSampler]:
    """Train loader (the global batch split over ranks, order seeded by ``seed`` and the epoch,
    so a resumed run sees the same batches) and an eval loader (each rank a disjoint slice).

    Over N ranks, torch's ``DistributedSampler`` pads each epoch's shuffled indices with its
    first ones to a multiple of N, so up to N - 1 images are seen twice per epoch (ImageNet's
    1,281,167 on 8 ranks: 1; CIFAR's 50,000: none): as the paper's ``DistributedSampler``
    did. The eval slices are not padded: every image counted once.

    With :func:`pipeline` ``device`` both yield batches already on ``ctx.device`` (in
    ``memory_format``); the sampler's ``set_epoch`` then also picks the augmentation draws."""
    if pipeline(config, ctx.device) == "device":
        return _device_loaders(config, ctx, memory_format)
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


def _device_loaders(
    config: Mapping[str, Any], ctx: Context, memory_format: torch.memory_format
) -> tuple[DeviceImages, DeviceImages, DistributedSampler]:
    name, root, aug = config["dataset"], config["data_dir"], config["augmentation"]
    if root is None:
        raise DataError(f"no data directory for {name}: pass --data-dir")
    if not Path(root).is_dir():
        raise DataError(_missing_dir(root))
    if aug["style"] != "cifar":
        raise ValueError(
            f"data_pipeline=device applies augmentation.style cifar, got {aug['style']!r}"
        )
    (train_x, train_y), (test_x, test_y) = (read_cifar(root, name, t) for t in (True, False))
    for labels in (train_y, test_y):
        _check_labels(labels, config["num_classes"], Path(root))
    sampler = DistributedSampler(
        range(len(train_y)),
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=config["seed"],
    )
    common = {"device": ctx.device, "aug": aug, "memory_format": memory_format}
    batch = split_batch(config["batch_size"], ctx)
    train = DeviceImages(
        train_x,
        train_y,
        sampler,
        batch_size=batch,
        train=True,
        seed=config["seed"],
        rank=ctx.rank,
        **common,
    )
    shard = range(ctx.rank, len(test_y), ctx.world_size)
    eval_batch = max(1, config["eval_batch_size"] // ctx.world_size)
    return (
        train,
        DeviceImages(test_x, test_y, shard, batch_size=eval_batch, train=False, **common),
        sampler,
    )


def download(dataset: str, root: str | Path) -> Path:
    """Fetch CIFAR-10/100 into ``root``: the archive torchvision names, its MD5 checked, unpacked.

    Everything happens in a hidden folder beside ``root`` (``.<dataset>-download``, locked
    against a second download); only the complete ``cifar-10-batches-py/`` (or
    ``cifar-100-python/``) is moved into ``root``, created then, and the archive is deleted. On
    any failure (no network, a wrong checksum, a full disk, Ctrl-C or SIGTERM) ``root`` is as it
    was and one line (a :class:`DataError`) says what failed, the URL, and how to get the data
    by hand. An existing folder whose files have the published MD5s is kept as it is.
    """
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import check_integrity

    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[dataset]
    root = Path(root)
    target = root / cls.base_folder
    base = next(p for p in (root, *root.parents) if p.exists())  # root itself, if it exists
    if not base.is_dir():
        raise DataError(f"{base} is a file, not a folder: name a folder to put {dataset} in")
    if target.exists():
        files = cls.train_list + cls.test_list
        bad = [n for n, md5 in files if not check_integrity(str(target / n), md5)]
        if bad:
            raise DataError(
                f"{target} already exists, but {', '.join(bad)} in it are missing or not the "
                f"published files (MD5); move it away and run this again"
            )
        return target
    by_hand = (
        f"to get it by hand (docs/data.md, CIFAR-10 and CIFAR-100): download {cls.url}, check "
        f"that its MD5 is {cls.tgz_md5}, and unpack it in {root}"
    )
    staging = base / f".{dataset}-download"
    lock = RunDirLock(staging)
    try:
        lock.acquire()
    except ValueError as exc:  # another download holds it, or base is not writable
        raise DataError(f"cannot download {dataset} into {root}: {exc}") from None
    try:
        for p in staging.iterdir():  # a killed download's partial archive or unpacked files
            if p.is_dir():
                shutil.rmtree(p)
            elif p != lock.path:
                p.unlink()
        _fetch(cls, staging, by_hand)
        _move_into(staging / cls.base_folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()
    return target


def _fetch(cls: Any, staging: Path, by_hand: str) -> None:
    """Download and unpack ``cls``'s archive in ``staging``, the archive then deleted."""
    import tarfile
    import urllib.error
    import zlib

    from torchvision.datasets.utils import download_url, extract_archive

    try:
        download_url(cls.url, str(staging), cls.filename, cls.tgz_md5)
    except RuntimeError:  # torchvision's "File not found or corrupted.": the MD5 differs
        raise DataError(
            f"the archive downloaded from {cls.url} does not have the MD5 {cls.tgz_md5} "
            f"(damaged in transit, or changed at the source); {by_hand}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:  # no network, refused, a full disk
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DataError(f"could not download {cls.url} ({reason}); {by_hand}") from None
    try:
        extract_archive(str(staging / cls.filename), str(staging), remove_finished=True)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise DataError(
            f"could not unpack {cls.filename} from {cls.url} ({reason}; a full disk?); {by_hand}"
        ) from None
    if not (staging / cls.base_folder).is_dir():
        raise DataError(f"{cls.filename} from {cls.url} holds no {cls.base_folder}/; {by_hand}")


def _move_into(folder: Path, target: Path) -> None:
    """Rename the complete ``folder`` to ``target``, creating ``target``'s parents; on failure
    the folders made for it are removed again."""
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(folder, target)  # staging lies in target's nearest existing ancestor: one fs
    except OSError as exc:
        for p in created:  # innermost first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise DataError(f"could not create {target}: {exc.strerror or exc}") from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised so that it cleans up as Ctrl-C does."""


def _interrupt(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> None:
    p = ArgumentParser(
        prog="python -m classification.data",
        description=download.__doc__,
        epilog="Example:\n\n    python -m classification.data cifar10 data/cifar10\n\n"
        "By hand, and the layout: docs/data.md.",
    )
    p.add_argument("dataset", choices=sorted(CIFAR), help="which data set to download")
    p.add_argument("root", help="the folder to put it in (created when missing)")
    args = p.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # cleaned up as Ctrl-C is
    try:
        path = download(args.dataset, args.root)
    except KeyboardInterrupt as exc:
        print(f"interrupted: {args.root} is as it was", file=sys.stderr)
        sys.exit(143 if isinstance(exc, _Terminated) else 130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(path)


if __name__ == "__main__":
    from engine.cli import main as run_main

    run_main(main)
