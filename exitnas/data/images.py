"""Decoding and resizing single images with PIL."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from exitnas.data.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "decode_image", "resize_batch"]

IMAGE_SUFFIXES = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)
"""File name endings (lower case) read as images; other files are skipped."""

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_image(data: bytes, name: str, image_size: int) -> np.ndarray:
    """Decodes one encoded image to an RGB uint8 array of the requested square size.

    Args:
        data: the encoded file (JPEG, PNG, ...).
        name: what the image is (a file or archive member), for the error message.
        image_size: side of the square output; resized with bilinear filtering if it differs.

    Returns:
        uint8 array of shape (3, image_size, image_size).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except _DECODE_ERRORS as err:
        raise DataError(f"cannot read image {name}: {err}") from err
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)  # (3, H, W)


def resize_batch(images: np.ndarray, image_size: int) -> np.ndarray:
    """Resizes uint8 images to a square size with bilinear filtering (PIL), if needed.

    Args:
        images: uint8 array of shape (N, C, H, W) with C of 1 or 3.
        image_size: side of the square output.

    Returns:
        uint8 array of shape (N, C, image_size, image_size); ``images`` itself if no resize
        is needed.
    """
    if images.shape[2:] == (image_size, image_size):
        return images
    out = np.empty((*images.shape[:2], image_size, image_size), np.uint8)
    for i, image in enumerate(images):
        hwc = image.transpose(1, 2, 0)  # (H, W, C)
        pil = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
        resized = np.asarray(pil.resize((image_size, image_size), Image.Resampling.BILINEAR))
        out[i] = resized.reshape(image_size, image_size, -1).transpose(2, 0, 1)
    return out
