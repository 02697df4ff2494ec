"""Decoding and resizing single images with PIL."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from exitnas.data.errors import DataError

__all__ = ["CHANNELS", "IMAGE_SUFFIXES", "decode_image", "resize_batch"]

IMAGE_SUFFIXES = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)
"""File name endings (lower case) read as images; other files are skipped."""

CHANNELS = (1, 3)
"""Channel counts images decode to: 1 (grey, PIL mode ``L``) or 3 (RGB)."""

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # e.g. <_io.BytesIO object at 0x..>


def decode_image(data: bytes, name: str, image_size: int, in_chans: int = 3) -> np.ndarray:
    """Decodes one encoded image to a uint8 array of the requested channels and square size.

    With 3 channels every image is converted to RGB (a grey image gives 3 equal channels).
    With 1 channel grey images are read as they are and colour images whose three channels
    are equal (grey saved as RGB or with a palette) as one of them; a colour image is refused.

    Args:
        data: the encoded file (JPEG, PNG, ...).
        name: what the image is (a file or archive member), for the error message.
        image_size: side of the square output; resized with bilinear filtering if it differs.
        in_chans: 1 (grey) or 3 (RGB).

    Returns:
        uint8 array of shape (in_chans, image_size, image_size).

    Example:
        >>> decode_image(png_bytes, "file a/0.png", image_size=16, in_chans=1).shape
        (1, 16, 16)
    """
    if in_chans not in CHANNELS:
        raise DataError(f"in_chans: {in_chans} cannot be decoded; allowed: 1 (grey) or 3 (RGB)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if in_chans == 1 and image.mode in _GREY_MODES:
                decoded = image.convert("L")
            else:
                decoded = image.convert("RGB")
    except Image.UnidentifiedImageError as err:
        raise DataError(f"cannot read image {name}: not an image PIL can identify") from err
    except _DECODE_ERRORS as err:
        reason = _OBJECT_REPR.sub("", str(err)).strip() or type(err).__name__
        raise DataError(f"cannot read image {name}: {reason}") from err
    if in_chans == 1 and decoded.mode == "RGB":
        decoded = _grey_of(decoded, name)
    if decoded.size != (image_size, image_size):
        decoded = decoded.resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = np.asarray(decoded, dtype=np.uint8)  # (H, W) or (H, W, 3)
    return pixels.reshape(image_size, image_size, in_chans).transpose(2, 0, 1)  # (C, H, W)


def _grey_of(rgb: Image.Image, name: str) -> Image.Image:
    """The one channel of an RGB image whose three channels are equal; refuses colour."""
    pixels = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    if not ((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()):
        raise DataError(
            f"image {name} is in colour but the study asks for grey images (space.in_chans: 1); "
            "set space.in_chans: 3 to train on colour images"
        )
    return rgb.getchannel(0)


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
