"""Class-per-folder image sources: directories and tar archives of ``<class>/<file>``."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm import tqdm

from exitnas.data.errors import DataError
from exitnas.data.images import IMAGE_SUFFIXES, decode_image
from exitnas.data.splits import ImageArrays

__all__ = ["Source", "check_classes", "decode_source", "find_sources", "fingerprint"]

_LAYOUTS = (
    "a directory with train and test entries (class-per-folder directories or .tar files), "
    "a class-per-folder directory, or a .tar of <class>/<file> images"
)


@dataclass(frozen=True)
class Source:
    """One class-per-folder directory or tar archive of ``<class>/<file>`` members.

    Args:
        path: resolved path of the directory or archive.
        is_tar: whether ``path`` is a tar archive.
    """

    path: Path
    is_tar: bool


def find_sources(path: str | os.PathLike[str]) -> tuple[Source, Source | None]:
    """Finds the train and test sources under a data path.

    Args:
        path: a directory holding ``train`` and ``test`` (each a class-per-folder directory or
            a ``.tar``), a single class-per-folder directory, or a single tar archive.

    Returns:
        ``(train, test)``; ``test`` is None when the path is a single source.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data path does not exist: {root}")
    if root.is_file():
        if tarfile.is_tarfile(root):
            return Source(root.resolve(), True), None
        raise DataError(f"data path {root} is a file but not a tar archive; expected {_LAYOUTS}")
    train, test = _entry(root, "train"), _entry(root, "test")
    if train is not None and test is not None:
        return train, test
    if train is not None or test is not None:
        found, missing = ("train", "test") if train is not None else ("test", "train")
        raise DataError(
            f"data path {root} has a {found} entry but no {missing} entry "
            f"({missing}/ or {missing}.tar); expected {_LAYOUTS}"
        )
    if any(child.is_dir() and not child.name.startswith(".") for child in root.iterdir()):
        return Source(root.resolve(), False), None
    raise DataError(f"data path {root} has neither train/test entries nor class folders")


def fingerprint(source: Source, image_size: int, in_chans: int) -> dict[str, Any]:
    """Describes everything the decoded arrays of a source depend on, as a cache key.

    Args:
        source: the directory or archive.
        image_size: side of the decoded square images.
        in_chans: channels the images are decoded to (1 or 3).

    Returns:
        JSON-serialisable dict: resolved path, image size, channels, and size and mtime of the
        archive or of every image file.
    """
    key: dict[str, Any] = {
        "path": str(source.path),
        "image_size": image_size,
        "in_chans": in_chans,
    }
    if source.is_tar:
        stat = source.path.stat()
        key["files"] = [[source.path.name, stat.st_size, stat.st_mtime_ns]]
    else:
        key["files"] = [
            [f"{cls}/{file.name}", stat.st_size, stat.st_mtime_ns]
            for cls, file in _dir_files(source.path)
            for stat in (file.stat(),)
        ]
    return key


def decode_source(
    source: Source,
    image_size: int,
    in_chans: int = 3,
    num_classes: int | None = None,
    progress: bool = True,
) -> ImageArrays:
    """Decodes every image of a source to grey or RGB, with a progress bar.

    The class folders are counted before any image is decoded, and images are decoded in
    sorted order, so a wrong class count or a colour image in a grey data set is refused
    at once.

    Args:
        source: the directory or archive.
        image_size: side of the square output images.
        in_chans: 1 (grey; a colour image is refused) or 3 (RGB; grey images are repeated).
        num_classes: the class count the study expects, checked first; None checks nothing.
        progress: show the progress bar.

    Returns:
        Arrays with class names sorted by folder name and labels indexing them.
    """
    if not source.is_tar:
        files = _dir_files(source.path)
        check_classes({cls for cls, _ in files}, num_classes, source.path)
        blobs = ((f"file {path}", _read_file(path)) for _, path in files)
        classes = [cls for cls, _ in files]
        return _decode_all(classes, blobs, image_size, in_chans, source.path.name, progress)
    try:
        with tarfile.open(source.path) as tar:
            members = _tar_members(tar, source.path)
            classes = [str(_class_of(member.name)) for member in members]
            check_classes(set(classes), num_classes, source.path)
            blobs = (
                (f"member {m.name!r} of {source.path}", _read_member(tar, m, source.path))
                for m in members
            )
            return _decode_all(classes, blobs, image_size, in_chans, source.path.name, progress)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot read tar archive {source.path}: {err}") from err


def check_classes(class_names: Collection[str], num_classes: int | None, path: Path) -> None:
    """Refuses a source whose class count is not the study's.

    Args:
        class_names: the source's class folder names.
        num_classes: the class count the study expects; None checks nothing.
        path: the source, for the message.
    """
    if num_classes is None or len(class_names) == num_classes:
        return
    names = sorted(class_names)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise DataError(
        f"{path} has {len(names)} classes ({shown}) but the study says space.num_classes: "
        f"{num_classes}; set it to {len(names)} or point the data at the right folder"
    )


def _decode_all(
    classes: list[str],
    blobs: Iterator[tuple[str, bytes]],
    image_size: int,
    in_chans: int,
    label: str,
    progress: bool = True,
) -> ImageArrays:
    class_names = tuple(sorted(set(classes)))
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[name] for name in classes], dtype=np.int64)
    images = np.empty((len(classes), in_chans, image_size, image_size), np.uint8)
    bar = tqdm(
        blobs,
        total=len(classes),
        desc=f"decoding {label}",
        unit="img",
        leave=False,
        disable=not progress,
    )
    with bar:
        for i, (name, data) in enumerate(bar):
            images[i] = decode_image(data, name, image_size, in_chans)  # (C, H, W)
    return ImageArrays(images, labels, class_names)


def _entry(root: Path, name: str) -> Source | None:
    if (root / name).is_dir():
        return Source((root / name).resolve(), False)
    if (root / f"{name}.tar").is_file():
        return Source((root / f"{name}.tar").resolve(), True)
    return None


def _is_image(name: str) -> bool:
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _dir_files(root: Path) -> list[tuple[str, Path]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"no class folders in {root}; expected <class>/<image> files")
    files: list[tuple[str, Path]] = []
    for class_dir in class_dirs:
        images = sorted(p for p in class_dir.iterdir() if p.is_file() and _is_image(p.name))
        if not images:
            raise DataError(
                f"class folder {class_dir} has no image files "
                f"(allowed endings: {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        files.extend((class_dir.name, image) for image in images)
    return files


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read image file {path}: {err}") from err


def _tar_members(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    members = [m for m in tar.getmembers() if m.isfile() and _class_of(m.name) is not None]
    if not members:
        raise DataError(f"tar archive {path} has no <class>/<image> members")
    return sorted(members, key=lambda member: member.name)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    try:
        handle = tar.extractfile(member)
        if handle is None:
            raise OSError("not a regular file")
        return handle.read()
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot read member {member.name!r} of {path}: {err}") from err


def _class_of(member_name: str) -> str | None:
    parts = PurePosixPath(member_name.removeprefix("./")).parts
    if len(parts) == 2 and not parts[0].startswith(".") and _is_image(parts[1]):
        return parts[0]
    return None
