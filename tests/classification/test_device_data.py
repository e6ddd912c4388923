"""CIFAR on the device: the same transforms as torchvision's pipeline, drawn from the same
distribution, in the loader pipeline's sample order."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from classification import data, device_data
from engine.distributed import Context

AUG = {
    "style": "cifar",
    "crop": 32,
    "padding": 4,
    "hflip": True,
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.2023, 0.1994, 0.2010],
}
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]
# p-value below which a draw's distribution counts as wrong (fixed seeds: no flakiness)
ALPHA = 1e-4


def torchvision_reference(
    image: np.ndarray,
    offset: tuple[int, int],
    flip: bool,
    aug: dict,
) -> torch.Tensor:
    """What torchvision's train transforms give for these draws (RandomCrop pads with 0)."""
    img = TF.pad(Image.fromarray(image), aug["padding"])
    img = TF.crop(img, offset[0], offset[1], aug["crop"], aug["crop"])
    if flip:
        img = TF.hflip(img)
    return TF.normalize(TF.to_tensor(img), aug["mean"], aug["std"])


@pytest.mark.parametrize("crop", [32, 16])
def test_given_the_draws_the_device_transform_is_torchvisions_bit_for_bit(crop: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    hi = 32 + 8 - crop
    offsets = torch.tensor([[0, 0], [hi, hi], [0, hi], [hi, 0], [3, 5], [hi // 2, 1]])
    flips = torch.tensor([False, True, True, False, True, False])
    aug = {**AUG, "crop": crop}
    x = device_data.crop_flip(torch.from_numpy(images), offsets, flips, crop, 4)
    mean = torch.tensor(aug["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(aug["std"]).view(1, -1, 1, 1)
    for fmt in (torch.contiguous_format, torch.channels_last):
        out = device_data.normalize(x, mean, std, fmt)
        assert out.is_contiguous(memory_format=fmt) and out.dtype == torch.float32
        for k in range(6):
            ref = torchvision_reference(images[k], tuple(offsets[k].tolist()), bool(flips[k]), aug)
            assert torch.equal(out[k], ref), k


def coordinate_images(n: int) -> np.ndarray:
    """Red = row + 1, green = column + 1: an augmented copy tells its crop offset and flip."""
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[..., 0] = np.arange(1, 33)[:, None]
    img[..., 1] = np.arange(1, 33)[None, :]
    img[..., 2] = 100
    return np.broadcast_to(img, (n, 32, 32, 3)).copy()


def decode(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n, 2) and flips (n,) of augmented coordinate images (mean 0, std 1)."""
    v = (batch[:, :2, 16, 15:17].float().cpu() * 255).round().long()  # (n, 2, 2)
    row = v[:, 0, 1] - 13  # output row 16 <- padded row i + 16, image row i + 12
    left, right = v[:, 1, 0], v[:, 1, 1]
    flips = right < left
    cols = torch.maximum(left, right) - 13
    return torch.stack([row, cols], 1).numpy(), flips.numpy()


def chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's chi-square test (no scipy on the GPU machines): P(chi2_dof >= statistic)."""
    statistic = float(((observed - expected) ** 2 / expected).sum())
    if observed.ndim == 1:
        dof = observed.size - 1
    else:
        dof = (observed.shape[0] - 1) * (observed.shape[1] - 1)
    half = torch.tensor([dof / 2, statistic / 2], dtype=torch.float64)
    return float(torch.special.gammaincc(half[0], half[1]))


def check_uniform(offsets: np.ndarray, flips: np.ndarray) -> None:
    cells = np.bincount(offsets[:, 0] * 9 + offsets[:, 1], minlength=81)
    assert len(cells) == 81, "an offset outside 0..8"
    assert chi2_pvalue(cells, np.full(81, cells.sum() / 81)) > ALPHA, cells.reshape(9, 9)
    heads = np.array([flips.sum(), len(flips) - flips.sum()])
    assert chi2_pvalue(heads, np.full(2, len(flips) / 2)) > ALPHA, heads


def same_distribution(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of the chi-square test of homogeneity of two samples of small integers."""
    table = np.array([np.bincount(x.astype(int), minlength=9) for x in (a, b)], dtype=float)
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return chi2_pvalue(table, expected)


def device_batches(images: np.ndarray, device: str, aug: dict, seed: int = 0) -> torch.Tensor:
    loader = device_data.DeviceImages(
        images,
        np.zeros(len(images)),
        range(len(images)),
        batch_size=1024,
        device=torch.device(device),
        aug=aug,
        train=True,
        seed=seed,
    )
    return torch.cat([x.cpu() for x, _ in loader])


@pytest.mark.parametrize("device", DEVICES)
def test_crop_offsets_and_flips_have_torchvisions_distribution(device: str) -> None:
    """Uniform on 0..8 x 0..8 and a fair flip, as the CPU pipeline's draws (a fifth as many:
    torchvision takes ~1 ms per image on a busy CPU), decoded the same way."""
    aug = {**AUG, "mean": [0.0] * 3, "std": [1.0] * 3}
    images = coordinate_images(8100)  # 100 per (row, column) offset
    offsets, flips = decode(device_batches(images, device, aug))
    check_uniform(offsets, flips)
    transform = data.build_transforms(aug, train=True)
    torch.manual_seed(0)
    reference = torch.stack([transform(Image.fromarray(images[0])) for _ in range(1620)])
    ref_offsets, ref_flips = decode(reference)
    check_uniform(ref_offsets, ref_flips)
    assert ref_offsets.min() == 0 and ref_offsets.max() == 8  # the decoder reads what it should
    # the two samples come from one distribution (row offset, column offset, flip)
    for mine, ref in (
        (offsets[:, 0], ref_offsets[:, 0]),
        (offsets[:, 1], ref_offsets[:, 1]),
        (flips, ref_flips),
    ):
        assert same_distribution(mine, ref) > ALPHA


@pytest.mark.parametrize("device", DEVICES)
def test_per_channel_statistics_of_augmented_batches_match_the_cpu_pipeline(device: str) -> None:
    """The same 1,024 images through both pipelines: per image and channel, the mean of the
    augmented copies differs only by the random crop (paired test); so does the pixel std."""
    rng = np.random.default_rng(1)
    n = 1024
    base = rng.integers(0, 160, size=(n, 1, 1, 3))  # per image and channel brightness
    images = (base + rng.integers(0, 96, size=(n, 32, 32, 3))).astype(np.uint8)
    mine = device_batches(images, device, AUG, seed=3)
    transform = data.build_transforms(AUG, train=True)
    torch.manual_seed(3)
    ref = torch.stack([transform(Image.fromarray(im)) for im in images])
    diff = (mine.double().mean(dim=(2, 3)) - ref.double().mean(dim=(2, 3))).numpy()  # (n, 3)
    z = diff.mean(0) / (diff.std(0, ddof=1) / math.sqrt(n))
    assert np.all(np.abs(z) < 4.5), z
    ratio = mine.double().std(dim=(0, 2, 3)) / ref.double().std(dim=(0, 2, 3))
    assert torch.allclose(ratio, torch.ones(3, dtype=torch.float64), atol=0.01), ratio


def test_device_loaders_follow_the_loader_pipelines_order(cifar_dir: Path) -> None:
    """Labels of every batch (not augmented) are the loader pipeline's, in the same order;
    evaluation batches are equal outright; an epoch's draws do not depend on the one before."""
    config = {
        "dataset": "cifar10",
        "data_dir": str(cifar_dir),
        "num_classes": 10,
        "augmentation": AUG,
        "seed": 5,
        "batch_size": 8,
        "eval_batch_size": 6,
        "workers": 0,
        "data_pipeline": "device",
    }
    ctx = Context(rank=1, world_size=2, local_rank=0, device=torch.device("cpu"))
    dev_train, dev_eval, dev_sampler = data.build_loaders(config, ctx)
    cpu_train, cpu_eval, cpu_sampler = data.build_loaders(
        {**config, "data_pipeline": "loader"}, ctx
    )
    assert len(dev_train) == len(cpu_train) and len(dev_eval) == len(cpu_eval)
    for epoch in (0, 1):
        dev_sampler.set_epoch(epoch)
        cpu_sampler.set_epoch(epoch)
        assert [y.tolist() for _, y in dev_train] == [y.tolist() for _, y in cpu_train]
    for (a, ya), (b, yb) in zip(dev_eval, cpu_eval, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    dev_sampler.set_epoch(1)
    again = [x for x, _ in dev_train]
    dev_sampler.set_epoch(0)
    first = [x for x, _ in dev_train]
    dev_sampler.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(again, [x for x, _ in dev_train], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(again, first, strict=True))


def test_pipeline_choice() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    c = {"dataset": "cifar100", "data_pipeline": "auto", "config": "t.yaml"}
    assert (data.pipeline(c, cuda), data.pipeline(c, cpu)) == ("device", "loader")
    assert data.pipeline({**c, "data_pipeline": "device"}, cpu) == "device"
    assert data.pipeline({**c, "dataset": "imagenet"}, cuda) == "loader"
    with pytest.raises(ValueError, match="data_pipeline=device holds CIFAR-10/100 only"):
        data.pipeline({**c, "dataset": "imagenet", "data_pipeline": "device"}, cuda)
    with pytest.raises(ValueError, match=r"t\.yaml: data_pipeline must be one of"):
        data.pipeline({**c, "data_pipeline": "gpu"}, cuda)
