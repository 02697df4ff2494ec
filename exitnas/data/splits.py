"""Containers for image splits, stratified carving and per-channel statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from exitnas.data.errors import DataError

__all__ = ["DataSplits", "ImageArrays", "ImageSplit", "channel_stats", "stratified_carve"]


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split of labelled images, held in memory.

    Equality and hashing are by identity (tensors have no value equality).

    Args:
        images: uint8 tensor of shape (N, C, H, W), already at the requested square size.
        labels: int64 tensor of shape (N,), class indices into ``DataSplits.class_names``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} "
                f"with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise DataError(
                f"labels must be an int64 (N,) tensor, got {self.labels.dtype} "
                f"with shape {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train, validation and test splits of one data set, plus what a model needs to know.

    Args:
        train: training images (the validation images are not in it).
        val: validation images, a stratified part carved from the training data.
        test: test images, never used for training or selection.
        class_names: class names, index ``i`` names label ``i``.
        in_chans: number of image channels.
        mean: per-channel mean of ``train`` in [0, 1] units, for normalisation.
        std: per-channel standard deviation of ``train`` in [0, 1] units.
    """

    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    class_names: tuple[str, ...]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            chans = getattr(self, name).images.shape[1]
            if chans != self.in_chans:
                raise DataError(f"{name} images have {chans} channels, expected {self.in_chans}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise DataError(f"mean and std need {self.in_chans} entries, one per channel")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """Decoded images of one source before splitting (internal to ``exitnas.data``).

    Args:
        images: uint8 array of shape (N, C, H, W).
        labels: int64 array of shape (N,).
        class_names: class names, index ``i`` names label ``i``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def take(self, indices: np.ndarray) -> ImageArrays:
        """Returns the images at ``indices`` (a copy) with the same class names."""
        return ImageArrays(self.images[indices], self.labels[indices], self.class_names)

    def to_split(self) -> ImageSplit:
        """Returns these arrays as an :class:`ImageSplit` of torch tensors."""
        images = torch.from_numpy(np.ascontiguousarray(self.images, dtype=np.uint8))
        labels = torch.from_numpy(np.ascontiguousarray(self.labels, dtype=np.int64))
        return ImageSplit(images=images, labels=labels)


def stratified_carve(
    labels: np.ndarray, fraction: float, rng: np.random.Generator, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Carves about ``fraction`` of every class out of a labelled set.

    Each class with ``n >= 2`` members gives ``round(fraction * n)`` of them, at least one and
    at most ``n - 1``, so every class keeps a member; single-member classes give none.

    Args:
        labels: class index of each item, shape (N,).
        fraction: share of each class to carve, in (0, 1).
        rng: generator that picks the carved members.
        what: name of the carved split, for the error message.

    Returns:
        ``(kept, carved)``: sorted index arrays that partition ``range(N)``.
    """
    carved = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = len(members)
        take = min(max(int(np.floor(fraction * count + 0.5)), 1), count - 1)
        carved.append(rng.permutation(members)[:take])
    carved_idx = np.sort(np.concatenate(carved)) if carved else np.zeros(0, np.int64)
    if len(carved_idx) == 0:
        raise DataError(
            f"too few images to carve a {what} split: every class needs at least 2 images, "
            f"got {len(labels)} images"
        )
    kept_idx = np.setdiff1d(np.arange(len(labels)), carved_idx)
    return kept_idx, carved_idx


def channel_stats(
    images: np.ndarray, chunk: int = 1024
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units.

    Args:
        images: uint8 array of shape (N, C, H, W), N >= 1.
        chunk: images summed at a time, to bound memory.

    Returns:
        ``(mean, std)``, each a tuple of C floats.
    """
    total = np.zeros(images.shape[1], np.float64)
    total_sq = np.zeros(images.shape[1], np.float64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64) / 255.0  # (B, C, H, W)
        total += block.sum(axis=(0, 2, 3))
        total_sq += np.square(block).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
