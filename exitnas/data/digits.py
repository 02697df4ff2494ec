"""scikit-learn's 8x8 handwritten digits as uint8 image arrays."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from exitnas.data.images import resize_batch
from exitnas.data.splits import ImageArrays

__all__ = ["load_digit_arrays"]


def load_digit_arrays(image_size: int) -> ImageArrays:
    """Loads all 1,797 digits as one-channel uint8 images.

    Pixel values 0..16 are scaled to 0..255; images are resized (bilinear) if ``image_size``
    is not 8.

    Args:
        image_size: side of the square output images.

    Returns:
        Arrays of shape (1797, 1, image_size, image_size) with class names "0" to "9".
    """
    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8), values 0..16
    images = np.rint(pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    class_names = tuple(str(name) for name in bunch.target_names)
    return ImageArrays(resize_batch(images, image_size), labels, class_names)
