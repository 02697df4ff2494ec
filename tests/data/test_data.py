"""Tests of exitnas.data: digits, class-per-folder directories and tars, caching, errors."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exitnas.data import DataError, DataSplits, ImageSplit, load_splits
from exitnas.data import folders as folders_module
from exitnas.data.images import decode_image

CLASSES = ("cat", "dog", "emu")
PER_CLASS = 6
SIDE = 10


def _png(rng: np.random.Generator, mode: str = "RGB") -> bytes:
    shape = (SIDE, SIDE, 3) if mode == "RGB" else (SIDE, SIDE)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_tree(root: Path, seed: int, classes: tuple[str, ...] = CLASSES) -> Path:
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            (root / cls / f"{i:03d}.png").write_bytes(_png(rng, "L" if i == 0 else "RGB"))
    return root


def _make_tar(file: Path, seed: int, classes: tuple[str, ...] = CLASSES) -> Path:
    rng = np.random.default_rng(seed)
    with tarfile.open(file, "w") as tar:
        for cls in classes:
            for i in range(PER_CLASS):
                data = _png(rng)
                info = tarfile.TarInfo(f"{cls}/{i:03d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return file


def _make_grey_tree(root: Path, seed: int) -> Path:
    """Grey images: mode L, and one per class saved as RGB with three equal channels."""
    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 256, size=(SIDE, SIDE), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i == 0:
                image = image.convert("RGB")
            image.save(root / cls / f"{i:03d}.png")
    return root


def _load(path: Path | None, cache: Path, **overrides: object) -> DataSplits:
    arguments: dict[str, object] = {
        "dataset": "folder",
        "path": path,
        "image_size": SIDE,
        "val_fraction": 0.2,
        "seed": 0,
        "cache_dir": cache,
    }
    arguments.update(overrides)
    return load_splits(**arguments)  # type: ignore[arg-type]


def _check_splits(splits: DataSplits, image_size: int, in_chans: int) -> None:
    for split in (splits.train, splits.val, splits.test):
        assert isinstance(split, ImageSplit)
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert tuple(split.images.shape[1:]) == (in_chans, image_size, image_size)
        assert len(split) == len(split.labels) == len(split.images) > 0
        assert set(split.labels.tolist()) == set(range(splits.num_classes))
    assert splits.in_chans == in_chans == len(splits.mean) == len(splits.std)
    train = splits.train.images.double() / 255.0
    expected_mean = train.mean(dim=(0, 2, 3))
    expected_std = train.std(dim=(0, 2, 3), unbiased=False)
    assert np.allclose(splits.mean, expected_mean.numpy())
    assert np.allclose(splits.std, expected_std.numpy())


def _rows(split: ImageSplit) -> set[bytes]:
    return {image.numpy().tobytes() for image in split.images}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# digits


def test_digits_shapes_and_disjoint_splits(cache: Path) -> None:
    splits = load_splits("digits", None, 8, 0.1, seed=0, cache_dir=cache)
    _check_splits(splits, image_size=8, in_chans=1)
    assert splits.class_names == tuple(str(d) for d in range(10))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == pytest.approx(0.2 * 1797, abs=10)
    assert len(splits.val) == pytest.approx(0.1 * (1797 - len(splits.test)), abs=10)
    assert int(splits.train.images.max()) == 255
    train, val, test = _rows(splits.train), _rows(splits.val), _rows(splits.test)
    # Identical digit images exist, so compare mostly: overlaps are at most a handful.
    assert len(train & val) + len(train & test) + len(val & test) < 10


def test_digits_deterministic_per_seed(cache: Path) -> None:
    first = load_splits("digits", None, 8, 0.1, seed=3, cache_dir=cache)
    again = load_splits("digits", None, 8, 0.1, seed=3, cache_dir=cache)
    other = load_splits("digits", None, 8, 0.1, seed=4, cache_dir=cache)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(first, name).images, getattr(again, name).images)
        assert torch.equal(getattr(first, name).labels, getattr(again, name).labels)
    assert not torch.equal(first.val.labels, other.val.labels) or not torch.equal(
        first.val.images, other.val.images
    )
    assert not torch.equal(first.test.images, other.test.images)


def test_digits_resized(cache: Path) -> None:
    splits = load_splits("digits", None, 16, 0.25, seed=0, cache_dir=cache)
    _check_splits(splits, image_size=16, in_chans=1)


# folders and tars


def test_train_test_directories(tmp_path: Path, cache: Path) -> None:
    _make_tree(tmp_path / "data" / "train", seed=1)
    _make_tree(tmp_path / "data" / "test", seed=2)
    splits = _load(tmp_path / "data", cache)
    _check_splits(splits, image_size=SIDE, in_chans=3)
    assert splits.class_names == CLASSES
    assert splits.num_classes == 3
    assert len(splits.test) == 3 * PER_CLASS
    assert len(splits.val) == 3  # round(0.2 * 6) = 1 per class
    assert len(splits.train) == 3 * PER_CLASS - 3
    assert not _rows(splits.train) & _rows(splits.val)


def test_train_test_tars(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "data").mkdir()
    _make_tar(tmp_path / "data" / "train.tar", seed=1)
    _make_tar(tmp_path / "data" / "test.tar", seed=2)
    splits = _load(tmp_path / "data", cache, dataset="cifar10")
    _check_splits(splits, image_size=SIDE, in_chans=3)
    assert splits.class_names == CLASSES
    assert len(splits.test) == 3 * PER_CLASS


def test_tar_and_directory_decode_alike(tmp_path: Path, cache: Path) -> None:
    _make_tree(tmp_path / "tree" / "train", seed=1)
    _make_tree(tmp_path / "tree" / "test", seed=2)
    (tmp_path / "tars").mkdir()
    for part in ("train", "test"):
        with tarfile.open(tmp_path / "tars" / f"{part}.tar", "w") as tar:
            tar.add(tmp_path / "tree" / part, arcname=".")
    from_tree = _load(tmp_path / "tree", cache)
    from_tars = _load(tmp_path / "tars", cache)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(from_tree, name).images, getattr(from_tars, name).images)
        assert torch.equal(getattr(from_tree, name).labels, getattr(from_tars, name).labels)


@pytest.mark.parametrize("layout", ["directory", "tar"])
def test_single_source_carves_test(tmp_path: Path, cache: Path, layout: str) -> None:
    if layout == "directory":
        path = _make_tree(tmp_path / "flat", seed=1)
    else:
        path = _make_tar(tmp_path / "flat.tar", seed=1)
    splits = _load(path, cache)
    _check_splits(splits, image_size=SIDE, in_chans=3)
    assert len(splits.test) == 3  # round(0.2 * 6) = 1 per class
    assert len(splits.train) + len(splits.val) + len(splits.test) == 3 * PER_CLASS
    train, val, test = _rows(splits.train), _rows(splits.val), _rows(splits.test)
    assert not (train & val or train & test or val & test)
    again = _load(path, cache)
    assert torch.equal(splits.test.images, again.test.images)


def test_resizing(tmp_path: Path, cache: Path) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)
    splits = _load(path, cache, image_size=24)
    _check_splits(splits, image_size=24, in_chans=3)


def test_ignores_non_image_files(tmp_path: Path, cache: Path) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)
    (path / "cat" / "notes.txt").write_text("not an image")
    (path / ".hidden").mkdir()
    splits = _load(path, cache)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 3 * PER_CLASS


# channels


@pytest.mark.parametrize("layout", ["directory", "tar"])
def test_grey_folder_decodes_to_one_channel(tmp_path: Path, cache: Path, layout: str) -> None:
    path = _make_grey_tree(tmp_path / "grey", seed=1)
    if layout == "tar":
        with tarfile.open(tmp_path / "grey.tar", "w") as tar:
            tar.add(path, arcname=".")
        path = tmp_path / "grey.tar"
    grey = _load(path, cache, in_chans=1)
    _check_splits(grey, image_size=SIDE, in_chans=1)
    rgb = _load(path, cache, in_chans=3)  # the same images, as 3 equal channels
    _check_splits(rgb, image_size=SIDE, in_chans=3)
    for name in ("train", "val", "test"):
        images = getattr(rgb, name).images
        assert torch.equal(images, getattr(grey, name).images.expand_as(images))


def test_cache_key_includes_channels(tmp_path: Path, cache: Path) -> None:
    path = _make_grey_tree(tmp_path / "grey", seed=1)
    _load(path, cache, in_chans=3)
    splits = _load(path, cache, in_chans=1)  # not the 3-channel cache file
    assert splits.in_chans == 1
    assert len(list(cache.glob("*.npz"))) == 2


def test_colour_image_refused_with_one_channel(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)  # cat/000.png is grey, cat/001.png colour
    calls: list[str] = []

    def counting(data: bytes, name: str, image_size: int, in_chans: int) -> np.ndarray:
        calls.append(name)
        return decode_image(data, name, image_size, in_chans)

    monkeypatch.setattr(folders_module, "decode_image", counting)
    with pytest.raises(DataError) as info:
        _load(path, cache, in_chans=1)
    message = str(info.value)
    assert "\n" not in message
    assert f"image file {path / 'cat' / '001.png'} is in colour" in message
    assert "set space.in_chans: 3" in message
    assert len(calls) == 2  # refused at the first colour image, not after decoding them all
    assert not list(cache.glob("*.npz"))


def test_class_count_checked_before_decoding(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)

    def fail(*args: object) -> np.ndarray:
        raise AssertionError("decoded although the class count is wrong")

    monkeypatch.setattr(folders_module, "decode_image", fail)
    match = r"has 3 classes \(cat, dog, emu\) but the study says space.num_classes: 10"
    with pytest.raises(DataError, match=match):
        _load(path, cache, num_classes=10)


# cache


def test_cache_hit_skips_decoding(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)
    first = _load(path, cache)
    assert len(list(cache.glob("*.npz"))) == 1
    assert not list(cache.glob("*.tmp"))

    def fail(*args: object) -> np.ndarray:
        raise AssertionError("decoded although the cache should have been used")

    monkeypatch.setattr(folders_module, "decode_image", fail)
    second = _load(path, cache)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    with pytest.raises(AssertionError, match="decoded although"):
        _load(path, cache, image_size=12)  # another size is another cache entry


def test_cache_invalidated_by_changed_file(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)
    _load(path, cache)
    (path / "cat" / "extra.png").write_bytes(_png(np.random.default_rng(9)))
    calls: list[str] = []

    def counting(data: bytes, name: str, image_size: int, in_chans: int) -> np.ndarray:
        calls.append(name)
        return decode_image(data, name, image_size, in_chans)

    monkeypatch.setattr(folders_module, "decode_image", counting)
    splits = _load(path, cache)
    assert len(calls) == 3 * PER_CLASS + 1
    assert len(splits.train) + len(splits.val) + len(splits.test) == 3 * PER_CLASS + 1


@pytest.mark.parametrize("garbage", [b"not a zip file", b"PK\x03\x04truncated"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, cache: Path, garbage: bytes) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)
    first = _load(path, cache)
    (cache_file,) = cache.glob("*.npz")
    cache_file.write_bytes(garbage)
    second = _load(path, cache)
    assert torch.equal(first.train.images, second.train.images)
    with np.load(cache_file, allow_pickle=False) as archive:
        assert archive["images"].shape == (3 * PER_CLASS, 3, SIDE, SIDE)


# errors


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; allowed: digits, cifar10, folder"),
        ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\)"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\)"),
        ({"val_fraction": -0.5}, r"val_fraction must be in \(0, 1\)"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"path": None}, "dataset 'folder' needs a path"),
        ({"dataset": "cifar10", "path": None}, "pass --data .* or allow download"),
        ({"in_chans": 2}, "space.in_chans: 2 is not a channel count images decode to"),
        ({"dataset": "digits", "path": None, "in_chans": 3}, "'digits' is grey .* set it to 1"),
        ({"dataset": "digits", "path": None, "num_classes": 5}, "'digits' has 10 classes"),
        (
            {"dataset": "cifar10", "path": None, "download": True, "in_chans": 1},
            "'cifar10' is colour .* set it to 3",
        ),
    ],
)
def test_bad_arguments(cache: Path, overrides: dict[str, object], match: str) -> None:
    arguments = {"path": Path("."), **overrides}
    with pytest.raises(DataError, match=match):
        _load(cache=cache, **arguments)  # type: ignore[arg-type]


def test_digits_takes_no_path(cache: Path) -> None:
    with pytest.raises(DataError, match="takes no path"):
        load_splits("digits", "somewhere", 8, 0.1, 0, cache_dir=cache)


def test_missing_path(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"data path does not exist: {missing}"):
        _load(missing, cache)


def test_path_without_layout(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="neither train/test entries nor class folders"):
        _load(tmp_path / "empty", cache)
    with pytest.raises(DataError, match="is a file but not a tar archive"):
        _load(tmp_path / "empty" / "readme.txt", cache)


def test_train_without_test(tmp_path: Path, cache: Path) -> None:
    _make_tree(tmp_path / "data" / "train", seed=1)
    with pytest.raises(DataError, match="has a train entry but no test entry"):
        _load(tmp_path / "data", cache)


def test_empty_class_folder_set(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "data" / "train").mkdir(parents=True)
    _make_tree(tmp_path / "data" / "test", seed=2)
    with pytest.raises(DataError, match="no class folders in"):
        _load(tmp_path / "data", cache)


def test_class_folder_without_images(tmp_path: Path, cache: Path) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)
    (path / "zebra").mkdir()
    with pytest.raises(DataError, match="class folder .*zebra has no image files"):
        _load(path, cache)


def test_tar_without_class_members(tmp_path: Path, cache: Path) -> None:
    with tarfile.open(tmp_path / "flat.tar", "w") as tar:
        data = _png(np.random.default_rng(0))
        info = tarfile.TarInfo("loose.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="has no <class>/<image> members"):
        _load(tmp_path / "flat.tar", cache)


def test_unreadable_image_in_directory(tmp_path: Path, cache: Path) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)
    (path / "dog" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataError, match="cannot read image file .*dog/broken.jpg"):
        _load(path, cache)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("signature", "not an image PIL can identify"), ("truncate", "truncated")],
)
def test_corrupt_png_message_names_the_file_and_no_object(
    tmp_path: Path, cache: Path, damage: str, reason: str
) -> None:
    path = _make_tree(tmp_path / "flat", seed=1)
    data = _png(np.random.default_rng(0))
    broken = b"garbage!" + data[8:] if damage == "signature" else data[: len(data) // 2]
    (path / "dog" / "broken.png").write_bytes(broken)
    with pytest.raises(DataError) as info:
        _load(path, cache)
    message = str(info.value)
    assert message.startswith(f"cannot read image file {path / 'dog' / 'broken.png'}: ")
    assert reason in message
    assert "object at 0x" not in message and "<" not in message


def test_unreadable_image_in_tar(tmp_path: Path, cache: Path) -> None:
    with tarfile.open(tmp_path / "flat.tar", "w") as tar:
        data = b"definitely not a jpeg"
        info = tarfile.TarInfo("dog/broken.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="cannot read image member 'dog/broken.jpg'"):
        _load(tmp_path / "flat.tar", cache)


def test_train_test_class_mismatch(tmp_path: Path, cache: Path) -> None:
    _make_tree(tmp_path / "data" / "train", seed=1)
    _make_tree(tmp_path / "data" / "test", seed=2, classes=("cat", "dog"))
    with pytest.raises(DataError, match=r"train \['cat', 'dog', 'emu'\], test \['cat', 'dog'\]"):
        _load(tmp_path / "data", cache)


def test_too_few_images_to_carve(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "tiny"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        (root / cls / "only.png").write_bytes(_png(np.random.default_rng(0)))
    with pytest.raises(DataError, match="too few images to carve a test split"):
        _load(root, cache)


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)


# torchvision fallback


def test_cifar10_download_fallback(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download and Path(root) == cache
            rng = np.random.default_rng(int(train))
            count = 20 if train else 10
            self.data = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 2 for i in range(count)]
            self.classes = ["airplane", "automobile"]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    splits = _load(None, cache, dataset="cifar10", download=True, image_size=16)
    _check_splits(splits, image_size=16, in_chans=3)
    assert splits.class_names == ("airplane", "automobile")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 10)
