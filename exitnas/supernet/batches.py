"""Turning stored uint8 images into normalised, augmented training batches.

Batches are cut and augmented on whole tensors with an explicit ``torch.Generator`` seeded from
``(seed, step)``: the same step always sees the same images and the same augmentation, which is
what lets an interrupted run resume to the same weights as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["augment", "epoch_order", "normalize", "step_seed"]


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for one training step (independent streams for different uses)."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(2, np.uint64)[0] >> 1)


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``size`` training images."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, c, H, W)`` in 0..255 to float, per-channel standardised."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def augment(
    images: torch.Tensor, generator: torch.Generator, crop_padding: int = 0, hflip: bool = False
) -> torch.Tensor:
    """Random crop (zero padding of ``crop_padding`` pixels) and random horizontal flips."""
    b, _, h, w = images.shape
    if crop_padding:
        p = crop_padding
        padded = F.pad(images, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (b, 2), generator=generator).tolist()
        crops = [padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(offsets)]
        images = torch.stack(crops)
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip.view(b, 1, 1, 1), images.flip(-1), images)
    return images
