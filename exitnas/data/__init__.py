"""Image data sets as in-memory uint8 train / validation / test splits.

``load_splits`` is the one front door: scikit-learn's digits, CIFAR-10 (a local class-per-folder
copy, or torchvision's download) and any class-per-folder directory or tar.
"""

from exitnas.data.errors import DataError
from exitnas.data.load import load_splits
from exitnas.data.splits import DataSplits, ImageSplit

__all__ = ["DataError", "DataSplits", "ImageSplit", "load_splits"]
