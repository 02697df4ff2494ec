"""On-disk cache of decoded image arrays, one ``.npz`` file per source, written atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from exitnas.data.splits import ImageArrays

__all__ = ["CACHE_FORMAT", "cache_file", "cached_arrays", "default_cache_dir"]

CACHE_FORMAT = 1
"""Bumped whenever the decoding or the file layout changes, so old cache files are not used."""

_LOAD_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Returns the default cache folder, ``~/.cache/exitnas``."""
    return Path.home() / ".cache" / "exitnas"


def cache_file(cache_dir: Path, label: str, key: Mapping[str, Any]) -> Path:
    """Returns the cache file for a source.

    Args:
        cache_dir: folder holding cache files.
        label: readable name of the source (e.g. ``train.tar``), used as the file name prefix.
        key: JSON-serialisable description of everything the decoded arrays depend on
            (resolved path, file sizes and mtimes, image size, channels).

    Returns:
        ``cache_dir / "<label>-<hash of key>.npz"``.
    """
    text = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    safe_label = re.sub(r"[^A-Za-z0-9._-]+", "_", label) or "source"
    return cache_dir / f"{safe_label}-{digest}.npz"


def cached_arrays(
    cache_dir: Path,
    label: str,
    key: Mapping[str, Any],
    image_size: int,
    in_chans: int,
    build: Callable[[], ImageArrays],
) -> ImageArrays:
    """Loads decoded arrays from the cache, or builds and caches them.

    A cache file that cannot be read or fails its checks is logged, rebuilt and overwritten.
    A cache that cannot be written is logged and skipped.

    Args:
        cache_dir: folder holding cache files (created if missing).
        label: readable name of the source.
        key: everything the arrays depend on, see :func:`cache_file`.
        image_size: expected side of the cached images, checked on load.
        in_chans: expected channels of the cached images, checked on load.
        build: decodes the source; called only on a cache miss.

    Returns:
        The decoded arrays.
    """
    file = cache_file(cache_dir, label, key)
    if file.exists():
        arrays = _load(file, (in_chans, image_size, image_size))
        if arrays is not None:
            return arrays
    arrays = build()
    _save(file, arrays)
    return arrays


def _load(file: Path, image_shape: tuple[int, int, int]) -> ImageArrays | None:
    try:
        with np.load(file, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
            class_names = tuple(str(name) for name in archive["class_names"])
    except _LOAD_ERRORS as err:
        logger.warning("ignoring unreadable cache file %s (%s); rebuilding it", file, err)
        return None
    valid = (
        images.dtype == np.uint8
        and images.ndim == 4
        and images.shape[1:] == image_shape  # (C, H, W)
        and labels.dtype == np.int64
        and labels.shape == (len(images),)
        and len(labels) > 0
        and 0 <= labels.min()
        and labels.max() < len(class_names)
    )
    if not valid:
        logger.warning("ignoring inconsistent cache file %s; rebuilding it", file)
        return None
    return ImageArrays(images, labels, class_names)


def _save(file: Path, arrays: ImageArrays) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(
                    handle,
                    images=arrays.images,
                    labels=arrays.labels,
                    class_names=np.array(arrays.class_names, dtype=str),
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        logger.warning("could not write cache file %s (%s); continuing without it", file, err)
