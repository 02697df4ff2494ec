"""The front door: ``load_splits`` turns a data set name and path into train/val/test splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from exitnas.data import cache, folders
from exitnas.data.cifar import download_cifar10
from exitnas.data.digits import load_digit_arrays
from exitnas.data.errors import DataError
from exitnas.data.images import CHANNELS
from exitnas.data.splits import DataSplits, ImageArrays, channel_stats, stratified_carve
from exitnas.spaces.study import DATASETS  # the data set names load_splits accepts

__all__ = ["DATASETS", "TEST_FRACTION", "load_splits"]


TEST_FRACTION = 0.2
"""Share of each class carved as the test split when a source has no test part of its own."""

_TEST_STREAM, _VAL_STREAM = 1, 2  # independent random streams per seed for the two carvings
# (channels, classes) of the built-in data sets, checked before anything is loaded
_BUILT_IN = {"digits": (1, 10), "cifar10": (3, 10)}


def load_splits(
    dataset: str,
    path: str | os.PathLike[str] | None,
    image_size: int,
    val_fraction: float,
    seed: int,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    in_chans: int | None = None,
    num_classes: int | None = None,
    progress: bool = True,
) -> DataSplits:
    """Loads a data set as uint8 train, validation and test splits in memory.

    The validation split is a stratified ``val_fraction`` of the training data (the returned
    ``train`` excludes it); sources without a test part (digits, a single folder or tar) get a
    stratified 20% test split first. Both carvings depend only on ``seed``. Decoded folders and
    tars are cached under ``cache_dir``, keyed by path, file sizes, mtimes, ``image_size`` and
    channels. ``in_chans`` and ``num_classes`` (the study's) are checked before any image is
    decoded: a folder's class count, then each image as it is decoded.

    Args:
        dataset: ``"digits"`` (scikit-learn, 8x8 grey), ``"cifar10"`` or ``"folder"``.
        path: for ``cifar10`` and ``folder``: a directory with ``train`` and ``test`` entries
            (class-per-folder directories or ``.tar`` files of ``<class>/<file>``), a single
            class-per-folder directory or a single tar. None for ``digits``, and for
            ``cifar10`` with ``download``.
        image_size: side of the square images returned; sources are resized (bilinear).
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: non-negative seed of the stratified carvings.
        cache_dir: folder for decoded-image caches and downloads; ``~/.cache/exitnas`` if None.
        download: for ``cifar10`` without ``path``: download it with torchvision into
            ``cache_dir``. Ignored otherwise.
        in_chans: channels to decode folders and tars to: 1 (grey; a colour image is
            refused) or 3 (RGB; grey images get 3 equal channels). None: the source's own
            (1 for digits, 3 otherwise). Digits are grey and CIFAR-10 is colour: the other
            count is refused.
        num_classes: the class count the study expects, refused before decoding when the
            data has another; None checks nothing.
        progress: a progress bar while folders and tars are decoded (not on a cache hit).

    Returns:
        The splits, with class names, channel count and train mean/std in [0, 1] units.

    Example:
        >>> splits = load_splits("digits", None, image_size=8, val_fraction=0.1, seed=0)
        >>> splits.train.images.shape[1:], splits.num_classes
        (torch.Size([1, 8, 8]), 10)
    """
    _check_arguments(dataset, path, image_size, val_fraction, seed, in_chans)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    train, test = _load_source(
        dataset, path, image_size, seed, root, download, in_chans, num_classes, progress
    )
    kept, val_idx = stratified_carve(
        train.labels, val_fraction, np.random.default_rng((seed, _VAL_STREAM)), "validation"
    )
    train, val = train.take(kept), train.take(val_idx)
    mean, std = channel_stats(train.images)
    return DataSplits(
        train=train.to_split(),
        val=val.to_split(),
        test=test.to_split(),
        class_names=train.class_names,
        in_chans=int(train.images.shape[1]),
        mean=mean,
        std=std,
    )


def _load_source(
    dataset: str,
    path: str | os.PathLike[str] | None,
    image_size: int,
    seed: int,
    cache_dir: Path,
    download: bool,
    in_chans: int | None,
    num_classes: int | None,
    progress: bool,
) -> tuple[ImageArrays, ImageArrays]:
    """The source's train and test arrays (a test part carved when it has none)."""
    if dataset == "digits" or (dataset == "cifar10" and path is None and download):
        _check_built_in(dataset, in_chans, num_classes)
    if dataset == "digits":
        return _carve_test(load_digit_arrays(image_size), seed)
    if path is not None:
        chans = 3 if in_chans is None else in_chans
        return _load_folder(path, image_size, seed, cache_dir, chans, num_classes, progress)
    if dataset == "cifar10" and download:
        return download_cifar10(cache_dir, image_size)
    if dataset == "cifar10":
        raise DataError(
            "cifar10 needs a path: pass --data pointing at a class-per-folder copy "
            "(train/ and test/ folders or train.tar and test.tar), or allow download"
        )
    raise DataError("dataset 'folder' needs a path to a class-per-folder directory or tar")


def _check_arguments(
    dataset: str,
    path: str | os.PathLike[str] | None,
    image_size: int,
    val_fraction: float,
    seed: int,
    in_chans: int | None,
) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    if dataset == "digits" and path is not None:
        raise DataError(f"dataset 'digits' is built in and takes no path, got {str(path)!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if isinstance(val_fraction, bool) or not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if in_chans is not None and in_chans not in CHANNELS:
        raise DataError(
            f"space.in_chans: {in_chans} is not a channel count images decode to; "
            "allowed: 1 (grey) or 3 (RGB)"
        )


def _check_built_in(dataset: str, in_chans: int | None, num_classes: int | None) -> None:
    chans, classes = _BUILT_IN[dataset]
    if in_chans is not None and in_chans != chans:
        kind = "grey" if chans == 1 else "colour"
        raise DataError(
            f"dataset {dataset!r} is {kind} ({chans} channel{'s' * (chans > 1)}) but the study "
            f"says space.in_chans: {in_chans}; set it to {chans}"
        )
    if num_classes is not None and num_classes != classes:
        raise DataError(
            f"dataset {dataset!r} has {classes} classes but the study says space.num_classes: "
            f"{num_classes}; set it to {classes}"
        )


def _load_folder(
    path: str | os.PathLike[str],
    image_size: int,
    seed: int,
    cache_dir: Path,
    in_chans: int,
    num_classes: int | None,
    progress: bool = True,
) -> tuple[ImageArrays, ImageArrays]:
    train_source, test_source = folders.find_sources(path)
    train = _decode_cached(train_source, image_size, cache_dir, in_chans, num_classes, progress)
    if test_source is None:
        return _carve_test(train, seed)
    # no class count for test: its classes are compared with train's below
    test = _decode_cached(test_source, image_size, cache_dir, in_chans, None, progress)
    if test.class_names != train.class_names:
        raise DataError(
            f"train and test have different classes: train {list(train.class_names)}, "
            f"test {list(test.class_names)}"
        )
    return train, test


def _decode_cached(
    source: folders.Source,
    image_size: int,
    cache_dir: Path,
    in_chans: int,
    num_classes: int | None,
    progress: bool = True,
) -> ImageArrays:
    arrays = cache.cached_arrays(
        cache_dir,
        label=source.path.name,
        key=folders.fingerprint(source, image_size, in_chans),
        image_size=image_size,
        in_chans=in_chans,
        build=lambda: folders.decode_source(source, image_size, in_chans, num_classes, progress),
    )
    folders.check_classes(arrays.class_names, num_classes, source.path)  # a cache hit too
    return arrays


def _carve_test(arrays: ImageArrays, seed: int) -> tuple[ImageArrays, ImageArrays]:
    rng = np.random.default_rng((seed, _TEST_STREAM))
    kept, test_idx = stratified_carve(arrays.labels, TEST_FRACTION, rng, "test")
    return arrays.take(kept), arrays.take(test_idx)
