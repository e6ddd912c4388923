"""CIFAR-10/100 held on the training device as uint8 and augmented there, a batch at a time.

The loader pipeline (:mod:`classification.data`) turns every 32x32 image into a PIL image in a
DataLoader worker, crops, flips, converts and normalises it there, and copies the batch to the
GPU: per image, that is far more host work than the GPU spends on it. Here the whole split
lives on the device (CIFAR's 50,000 training images are 154 MB as uint8) and each batch is
gathered, augmented and normalised by a handful of kernels, with the same distribution as
torchvision's ``RandomCrop(crop, padding) + RandomHorizontalFlip() + ToTensor() + Normalize``:

* crop offsets ``(i, j)`` uniform on ``{0, ..., size + 2 * padding - crop}`` each, drawn
  independently (``RandomCrop.get_params`` on the padded image); padded pixels are 0 before
  normalisation, like ``RandomCrop``'s ``fill=0``;
* then a horizontal flip with probability 1/2 (``hflip: true``);
* ``x / 255`` in float32, then ``(x - mean) / std`` per channel: for given offsets and flips,
  bit for bit what ``ToTensor`` and ``Normalize`` give (a test checks it).

The sample order is ``DistributedSampler``'s, the loader pipeline's permutation for the seed and
epoch. The crops and flips come from a generator seeded with ``(seed, rank, epoch)``, so an epoch
draws the same whether or not the run was resumed before it; they are not the loader
pipeline's draws (its workers have their own generators): the two pipelines share the
distribution of every draw, not the draws. ``train.py`` picks this pipeline with
``data_pipeline: device`` (``auto`` does on CUDA; see :func:`classification.data.pipeline`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def draw_params(
    n: int, size: int, crop: int, padding: int, hflip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` crop offsets (n, 2) (row, column) and flips (n,) bool, on the generator's device."""
    device = generator.device
    offsets = torch.randint(
        0, size + 2 * padding - crop + 1, (n, 2), generator=generator, device=device
    )
    if not hflip:
        return offsets, torch.zeros(n, dtype=torch.bool, device=device)
    return offsets, torch.rand(n, generator=generator, device=device) < 0.5


def crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, crop: int, padding: int
) -> torch.Tensor:
    """Zero-pad ``images`` (B, H, W, C) by ``padding``, crop ``crop`` x ``crop`` at ``offsets``
    and mirror the rows where ``flips``: (B, crop, crop, C), one gather."""
    if padding:
        images = F.pad(images, (0, 0, padding, padding, padding, padding))
    ar = torch.arange(crop, device=images.device)
    rows = offsets[:, :1] + ar
    cols = offsets[:, 1:] + ar
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(len(images), device=images.device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def normalize(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W): ``(x / 255 - mean) / std`` (``mean`` and
    ``std`` shaped (1, C, 1, 1)), in ``memory_format`` (channels_last costs no copy)."""
    x = images.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
    return x.float().div_(255).sub_(mean).div_(std)


class DeviceImages:
    """Batches ``(images, labels)`` on ``device`` for one rank, as its DataLoader would yield
    them: ``len()`` batches in the order of ``indices`` (a ``DistributedSampler``, whose
    ``set_epoch`` also picks the augmentation draws, or a fixed list for evaluation)."""

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        indices: torch.utils.data.Sampler | Sequence[int],
        *,
        batch_size: int,
        device: torch.device,
        aug: Mapping[str, Any],
        train: bool,
        seed: int = 0,
        rank: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.images = torch.as_tensor(images).to(device).contiguous()  # (N, H, W, C) uint8
        self.labels = torch.as_tensor(labels).to(device=device, dtype=torch.int64)
        self.indices, self.batch_size, self.device = indices, batch_size, device
        self.train, self.seed, self.rank, self.memory_format = train, seed, rank, memory_format
        self.crop, self.padding = int(aug.get("crop") or 0), int(aug.get("padding") or 0)
        self.hflip = bool(aug.get("hflip"))
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(aug["mean"], dtype=torch.float32, device=device).view(shape)
        self.std = torch.tensor(aug["std"], dtype=torch.float32, device=device).view(shape)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def generator(self, epoch: int) -> torch.Generator:
        """The augmentation draws of ``epoch`` on this rank."""
        seed = int(np.random.SeedSequence([self.seed, self.rank, epoch]).generate_state(1)[0])
        return torch.Generator(device=self.device).manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.indices), dtype=torch.int64).to(self.device)
        gen = self.generator(getattr(self.indices, "epoch", 0)) if self.train else None
        size = self.images.shape[1]
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            if gen is not None:
                offsets, flips = draw_params(
                    len(idx), size, self.crop, self.padding, self.hflip, gen
                )
                x = crop_flip(x, offsets, flips, self.crop, self.padding)
            yield normalize(x, self.mean, self.std, self.memory_format), self.labels[idx]
