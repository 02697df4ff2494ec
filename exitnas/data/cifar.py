"""CIFAR-10 through torchvision's downloader, for when no local copy is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exitnas.data.errors import DataError
from exitnas.data.images import resize_batch
from exitnas.data.splits import ImageArrays

__all__ = ["download_cifar10"]


def download_cifar10(root: Path, image_size: int) -> tuple[ImageArrays, ImageArrays]:
    """Downloads CIFAR-10 with torchvision (if not yet under ``root``) and loads it.

    Args:
        root: folder torchvision downloads into and reads from.
        image_size: side of the square output images; resized (bilinear) if not 32.

    Returns:
        ``(train, test)`` arrays of 50,000 and 10,000 RGB images.
    """
    from torchvision.datasets import CIFAR10  # heavy import, only when asked for

    parts = []
    for train in (True, False):
        try:
            dataset = CIFAR10(root=str(root), train=train, download=True)
        except (OSError, RuntimeError) as err:
            raise DataError(
                f"could not download CIFAR-10 into {root} ({err}); pass --data pointing at a "
                "class-per-folder copy instead"
            ) from err
        images = np.asarray(dataset.data, dtype=np.uint8).transpose(0, 3, 1, 2)  # (N, 3, H, W)
        images = resize_batch(np.ascontiguousarray(images), image_size)
        labels = np.asarray(dataset.targets, dtype=np.int64)
        parts.append(ImageArrays(images, labels, tuple(dataset.classes)))
    return parts[0], parts[1]
