"""Image data sets as in-memory uint8 train / validation / test splits.

``load_splits`` is the one front door: scikit-learn's digits, CIFAR-10 (a local class-per-folder
copy, or torchvision's download) and any class-per-folder directory or tar. Names are imported
on first use (:mod:`exitnas._lazy`), so the package costs no torch or scikit-learn import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.data.errors import DataError
    from exitnas.data.load import load_splits
    from exitnas.data.splits import DataSplits, ImageSplit

__all__ = ["DataError", "DataSplits", "ImageSplit", "load_splits"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.data.errors": ("DataError",),
        "exitnas.data.load": ("load_splits",),
        "exitnas.data.splits": ("DataSplits", "ImageSplit"),
    },
)
