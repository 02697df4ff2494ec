"""Bad input across the CLI and the Python API: one clear line, exit code 2, nothing lost.

Every case builds its bad input in a fresh folder beside a copy of a searched tiny run, runs
one command, and checks: exit code 2, exactly one line on stderr naming what is wrong, no
traceback, and every file that existed before is byte-for-byte the same afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import sqlite3
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import exitnas
from exitnas.cli import main
from exitnas.deploy.bundle import BundleError
from exitnas.errors import ExitnasError
from exitnas.spaces import load_study

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"
PAYLOAD_MARKER = "exitnas-pickle-payload-ran"


@pytest.fixture(scope="module")
def searched(trained_run, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run dir, study file, exported bundle) of the tiny run after a 20-trial search."""
    study, trained = trained_run
    base = tmp_path_factory.mktemp("searched")
    run = base / "run"
    shutil.copytree(trained, run)
    path = base / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    common = ["--run", str(run), "--quiet"]
    assert main(["search", str(path), *common, "--trials", "20", "--sampler", "random"]) == 0
    bundle = base / "bundle"
    assert main(["export", "--study", str(run), "--out", str(bundle), "--pareto-index", "0"]) == 0
    return run, path, bundle


def snapshot(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots``; of its rows for a SQLite database (whose bytes
    change when a reader checkpoints the write-ahead log)."""
    files = {}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path.name.endswith(("-wal", "-shm")):
                continue
            if path.suffix == ".db":
                with sqlite3.connect(path) as conn:
                    data = "\n".join(conn.iterdump()).encode()
            else:
                data = path.read_bytes()
            files[str(path)] = hashlib.sha256(data).hexdigest()
    return files


def study_with(tmp: Path, change: Callable[[dict], None], name: str = "bad.yaml") -> Path:
    data = yaml.safe_load(QUICKSTART.read_text())
    change(data)
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return path


class Payload:
    """Unpickling this creates a marker file: a crafted pickle that would execute code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def crafted_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(path.parent / PAYLOAD_MARKER)))


def rehash(bundle: Path, name: str) -> None:
    """Update a bundle's manifest after replacing ``name`` (an attacker who knows the format)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (10, 20, 30, 40)[: len(mode)]).save(buffer, "PNG")
    return buffer.getvalue()


# Each case: (id, build(tmp, run, study_file, bundle) -> argv, message on stderr)
def _malformed_yaml(tmp, run, study, bundle):
    (tmp / "bad.yaml").write_text("name: x\nspace: [unclosed\n")
    return ["train", str(tmp / "bad.yaml"), "--out", str(tmp / "out")]


def _not_a_mapping(tmp, run, study, bundle):
    (tmp / "bad.yaml").write_text("- just\n- a list\n")
    return ["train", str(tmp / "bad.yaml"), "--out", str(tmp / "out")]


def _unknown_key(tmp, run, study, bundle):
    path = study_with(tmp, lambda d: d["space"].update(patch_size=[4]))
    return ["train", str(path), "--out", str(tmp / "out")]


def _wrong_type(tmp, run, study, bundle):
    path = study_with(tmp, lambda d: d["training"].update(epochs="ten"))
    return ["train", str(path), "--out", str(tmp / "out")]


def _impossible_patch(tmp, run, study, bundle):
    path = study_with(tmp, lambda d: d["space"].update(patch_sizes=[3]))
    return ["train", str(path), "--out", str(tmp / "out")]


def _heads_do_not_divide(tmp, run, study, bundle):
    path = study_with(tmp, lambda d: d["space"]["backbone"].update(num_heads=5))
    return ["train", str(path), "--out", str(tmp / "out")]


def _exit_beyond_depth(tmp, run, study, bundle):
    path = study_with(tmp, lambda d: d["space"].update(exit_layers=[1, 99]))
    return ["train", str(path), "--out", str(tmp / "out")]


def _unknown_head(tmp, run, study, bundle):
    path = study_with(tmp, lambda d: d["space"].update(head_types=["linear", "transformerxl"]))
    return ["train", str(path), "--out", str(tmp / "out")]


def _unknown_rule(tmp, run, study, bundle):
    path = study_with(tmp, lambda d: d.setdefault("search", {}).update(rules=["coin_flip"]))
    return ["train", str(path), "--out", str(tmp / "out")]


def _missing_study(tmp, run, study, bundle):
    return ["train", str(tmp / "nowhere.yaml")]


def _study_is_a_folder(tmp, run, study, bundle):
    (tmp / "folder.yaml").mkdir()
    return ["train", str(tmp / "folder.yaml")]


def _binary_study(tmp, run, study, bundle):
    (tmp / "bad.yaml").write_bytes(b"\xff\xfe\x00garbage")
    return ["train", str(tmp / "bad.yaml")]


def _missing_data(tmp, run, study, bundle):
    path = study_with(tmp, lambda d: d["data"].update(dataset="folder", path=str(tmp / "nope")))
    return ["train", str(path), "--out", str(tmp / "out")]


def _data_without_classes(tmp, run, study, bundle):
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("no images here")
    path = study_with(tmp, lambda d: d["data"].update(dataset="folder", path=str(tmp / "empty")))
    return ["train", str(path), "--out", str(tmp / "out")]


def image_folder(root: Path, mode: str = "L") -> Path:
    """train/ and test/ folders of two classes, a and b, of three 12x9 PNGs each."""
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{i}.png").write_bytes(png((12, 9), mode))
    return root


def folder_study(tmp: Path, data: Path, in_chans: int = 1, num_classes: int = 2) -> Path:
    """The quickstart study on an image folder, with the given channels and classes."""

    def change(d: dict) -> None:
        d["data"].update(dataset="folder", path=str(data))
        d["space"].update(in_chans=in_chans, num_classes=num_classes)

    return study_with(tmp, change)


def _corrupt_image(tmp, run, study, bundle):
    image_folder(tmp / "imgs")
    (tmp / "imgs" / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return ["train", str(folder_study(tmp, tmp / "imgs")), "--out", str(tmp / "out")]


def _corrupt_png(tmp, run, study, bundle):
    image_folder(tmp / "imgs")
    (tmp / "imgs" / "train" / "b" / "broken.png").write_bytes(b"not a PNG at all")
    return ["train", str(folder_study(tmp, tmp / "imgs")), "--out", str(tmp / "out")]


def _colour_folder_as_grey(tmp, run, study, bundle):
    image_folder(tmp / "imgs", mode="RGB")
    return ["train", str(folder_study(tmp, tmp / "imgs", in_chans=1)), "--out", str(tmp / "out")]


def _folder_of_other_classes(tmp, run, study, bundle):
    image_folder(tmp / "imgs")
    path = folder_study(tmp, tmp / "imgs", num_classes=10)
    return ["train", str(path), "--out", str(tmp / "out")]


def _out_is_a_file(tmp, run, study, bundle):
    (tmp / "taken").write_text("precious")
    return ["train", str(QUICKSTART), "--out", str(tmp / "taken")]


def _zero_epochs(tmp, run, study, bundle):
    return ["train", str(QUICKSTART), "--epochs", "0", "--out", str(tmp / "out")]


def _zero_trials(tmp, run, study, bundle):
    return ["search", str(study), "--run", str(run), "--trials", "0", "--quiet"]


def _unconnectable_storage(tmp, run, study, bundle):
    url = "postgresql+psycopg://nobody:x@127.0.0.1:9/none?connect_timeout=2"
    return ["search", str(study), "--run", str(run), "--storage", url, "--quiet"]


def _unknown_storage_scheme(tmp, run, study, bundle):
    return ["search", str(study), "--run", str(run), "--storage", "nosuch://", "--quiet"]


def _missing_run(tmp, run, study, bundle):
    return ["search", str(study), "--run", str(tmp / "no-run"), "--quiet"]


def _truncated_checkpoint(tmp, run, study, bundle):
    copy = tmp / "run"
    shutil.copytree(run, copy)
    weights = copy / "supernet.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return ["search", str(study), "--run", str(copy), "--quiet", "--trials", "1"]


def _pickle_as_checkpoint(tmp, run, study, bundle):
    copy = tmp / "run"
    shutil.copytree(run, copy)
    crafted_pickle(copy / "supernet.safetensors")
    return ["search", str(study), "--run", str(copy), "--quiet", "--trials", "1"]


def _mismatched_study(tmp, run, study, bundle):
    data = yaml.safe_load(study.read_text())
    data["space"]["backbone"]["embed_dim"] = 48
    other = tmp / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    return ["search", str(other), "--run", str(run), "--quiet", "--trials", "1"]


def _unknown_study_in_storage(tmp, run, study, bundle):
    return ["export", "--study", str(tmp / "no-run"), "--out", str(tmp / "out"), "--pareto"]


def _out_not_empty(tmp, run, study, bundle):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return ["export", "--study", str(run), "--out", str(tmp / "out"), "--pareto-index", "0"]


def _pareto_index_out_of_range(tmp, run, study, bundle):
    return ["export", "--study", str(run), "--out", str(tmp / "out"), "--pareto-index", "999"]


def _impossible_selection(tmp, run, study, bundle):
    return ["export", "--study", str(run), "--out", str(tmp / "out"), "--select", "mflops<0.0001"]


def _impossible_budget(tmp, run, study, bundle):
    return ["policy", "query", "--study", str(run), "--budget-mflops", "0.0001", "--no-policy"]


def _unknown_device(tmp, run, study, bundle):
    return ["policy", "query", "--study", str(run), "--device", "nope", "--budget-ms", "5"]


def _ms_budget_without_device(tmp, run, study, bundle):
    return ["policy", "query", "--study", str(run), "--budget-ms", "5", "--no-policy"]


def _report_of_missing_run(tmp, run, study, bundle):
    return ["report", str(tmp / "no-run"), "--out", str(tmp / "r.html")]


def _import_missing_profile(tmp, run, study, bundle):
    return ["profile", "--study", str(run), "--device", "x", "--import", str(tmp / "p.json")]


def _import_corrupt_profile(tmp, run, study, bundle):
    (tmp / "p.json").write_text("{not json")
    return ["profile", "--study", str(run), "--device", "x", "--import", str(tmp / "p.json")]


def _tiny_vit_file(path: Path, embed_dim: int) -> Path:
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(16, 2, 1, 10, embed_dim=embed_dim, depth=4, num_heads=2, mlp_ratio=2)
    torch.save(vit.state_dict(), path)
    return path


def _init_of_other_dims(tmp, run, study, bundle):
    vit = _tiny_vit_file(tmp / "wide.pt", 48)  # into the finished run: it stays as it is
    return ["train", str(study), "--out", str(run), "--init", str(vit)]


def _init_missing(tmp, run, study, bundle):
    return ["train", str(study), "--out", str(tmp / "out"), "--init", str(tmp / "vit.pt")]


def _init_corrupt(tmp, run, study, bundle):
    (tmp / "vit.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    return ["train", str(study), "--out", str(tmp / "out"), "--init", str(tmp / "vit.safetensors")]


def _init_crafted_pickle(tmp, run, study, bundle):
    crafted_pickle(tmp / "vit.pt")
    return ["train", str(study), "--out", str(tmp / "out"), "--init", str(tmp / "vit.pt")]


CASES = [
    ("malformed YAML", _malformed_yaml, "not valid YAML"),
    ("study is a list", _not_a_mapping, "expected a mapping with keys"),
    ("unknown key", _unknown_key, "unknown key 'patch_size'; allowed keys"),
    ("wrong type", _wrong_type, "epochs: expected an integer, got 'ten'"),
    ("patch divides no resolution", _impossible_patch, "patch_sizes: 3 divides none"),
    ("heads do not divide width", _heads_do_not_divide, "num_heads: 5 does not divide"),
    ("exit beyond depth", _exit_beyond_depth, "exit_layers: 99 is not allowed"),
    ("unknown head type", _unknown_head, "'transformerxl' is not allowed"),
    ("unknown exit rule", _unknown_rule, "rules: 'coin_flip' is not allowed"),
    ("missing study file", _missing_study, "study file not found"),
    ("study file is a folder", _study_is_a_folder, "folder.yaml"),
    ("binary study file", _binary_study, "cannot be read as a UTF-8 text file"),
    ("missing data path", _missing_data, "data path does not exist"),
    ("data without class folders", _data_without_classes, "neither train/test entries"),
    ("truncated image", _corrupt_image, "cannot read image"),
    ("corrupt PNG", _corrupt_png, "b/broken.png: not an image PIL can identify"),
    ("colour folder, in_chans 1", _colour_folder_as_grey, "a/0.png is in colour"),
    ("folder of other classes", _folder_of_other_classes, "space.num_classes: 10"),
    ("out is a file", _out_is_a_file, "exists and is not a folder"),
    ("zero epochs", _zero_epochs, "epochs: 0 must be at least 1"),
    ("zero trials", _zero_trials, "must be at least 1"),
    ("storage cannot connect", _unconnectable_storage, "cannot open storage"),
    ("unknown storage scheme", _unknown_storage_scheme, "cannot open storage 'nosuch://'"),
    ("missing run folder", _missing_run, "no-run"),
    ("truncated checkpoint", _truncated_checkpoint, "supernet.safetensors"),
    ("crafted pickle as checkpoint", _pickle_as_checkpoint, "supernet.safetensors"),
    ("study and supernet mismatch", _mismatched_study, "space.backbone.embed_dim: 32 here, 48"),
    ("unknown study to export", _unknown_study_in_storage, "no-run"),
    ("export into a non-empty folder", _out_not_empty, "not empty"),
    ("Pareto index out of range", _pareto_index_out_of_range, "999"),
    ("selection no point meets", _impossible_selection, "cheapest"),
    ("budget no configuration meets", _impossible_budget, "below the cheapest achievable cost"),
    ("unknown device", _unknown_device, "'nope'"),
    ("ms budget without a device", _ms_budget_without_device, "--budget-ms needs --device"),
    ("report of a missing run", _report_of_missing_run, "no-run"),
    ("missing profile to import", _import_missing_profile, "p.json"),
    ("corrupt profile to import", _import_corrupt_profile, "p.json"),
    ("init of other dims", _init_of_other_dims, "embed_dim 48 in the checkpoint, 32 in the study"),
    ("init missing", _init_missing, "vit.pt: no such file"),
    ("init corrupt", _init_corrupt, "vit.safetensors: unreadable or corrupt safetensors file"),
    ("init crafted pickle", _init_crafted_pickle, "vit.pt: holds objects other than tensors"),
]


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_loses_nothing(
    build, message, searched, tmp_path: Path, capsys
) -> None:
    run, study, bundle = searched
    work = tmp_path / "case"
    work.mkdir()
    argv = build(work, run, study, bundle)
    if argv[0] in ("train", "search", "run") and "--quiet" not in argv:
        argv.append("--quiet")  # progress bars on stderr are not messages
    before = snapshot(run, work, bundle)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # a usage error, from argparse
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and " object at 0x" not in err
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]  # progress bars cleared
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("exitnas") and ": error: " in lines[0] and message in lines[0], err
    after = snapshot(run, work, bundle)
    assert {k: v for k, v in after.items() if before.get(k) != v} == {}
    assert not any(work.rglob(PAYLOAD_MARKER))


def test_there_are_at_least_25_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 25


def test_odd_image_sizes_and_channels_are_read_as_rgb_of_the_study_size(tmp_path: Path) -> None:
    """Grayscale, RGBA and odd-sized images in a folder data set load; nothing to refuse."""
    from exitnas.data.load import load_splits

    for split in ("train", "test"):
        for label, (size, mode) in {"a": ((7, 30), "L"), "b": ((40, 40), "RGBA")}.items():
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(6):
                (folder / f"{i}.png").write_bytes(png(size, mode))
    splits = load_splits("folder", tmp_path, 16, 0.25, seed=0, cache_dir=tmp_path / "cache")
    assert splits.train.images.shape[1:] == (3, 16, 16)
    assert splits.test.images.dtype.is_floating_point is False


def test_grey_folder_trains_with_one_channel(tmp_path: Path, capsys) -> None:
    """A grey image folder with space.in_chans: 1 decodes to one channel and trains."""
    data = image_folder(tmp_path / "imgs")
    study = folder_study(tmp_path, data, in_chans=1)
    argv = ["train", str(study), "--out", str(tmp_path / "run"), "--quiet", "--stop-at-step", "1"]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    (cached,) = (tmp_path / "cache").glob("train-*.npz")
    with np.load(cached) as arrays:
        assert arrays["images"].shape == (6, 1, 16, 16)


# -- the Python API ----------------------------------------------------------------------------


def test_api_load_study_errors_are_exitnas_errors(tmp_path: Path) -> None:
    with pytest.raises(ExitnasError, match="study file not found"):
        load_study(tmp_path / "nothing.yaml")
    path = study_with(tmp_path, lambda d: d["space"].update(keep_rates=[0.0]))
    with pytest.raises(ExitnasError, match=r"keep_rates: 0\.0 is not allowed; allowed: \(0, 1\]"):
        load_study(path)


def test_api_bundle_with_a_changed_file_is_refused_before_use(searched, tmp_path: Path) -> None:
    _, _, bundle = searched
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    config = json.loads((copy / "config.json").read_text())
    config["rule"]["thresholds"] = [0.0] * len(config["rule"]["thresholds"])
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="config.json"):
        exitnas.load(copy)


def test_api_bundle_truncated_weights_are_refused(searched, tmp_path: Path) -> None:
    _, _, bundle = searched
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:500])
    rehash(copy, weights.name)  # hashes match: the file itself must be refused
    with pytest.raises(BundleError, match=weights.name):
        exitnas.load(copy)


def test_api_bundle_crafted_pickle_never_runs(searched, tmp_path: Path) -> None:
    """A pickle in place of the weights (hashes updated to match) is refused, not executed."""
    _, _, bundle = searched
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    weights = next(copy.glob("*.safetensors"))
    crafted_pickle(weights)
    rehash(copy, weights.name)
    with pytest.raises(BundleError, match=weights.name):
        exitnas.load(copy)
    assert not (copy / PAYLOAD_MARKER).exists()


def test_api_crafted_pickle_as_a_policy_is_refused(tmp_path: Path) -> None:
    from exitnas.exits.options import PolicyError
    from exitnas.exits.policy import policy_from_bytes

    crafted_pickle(tmp_path / "policy.skops")
    with pytest.raises(PolicyError, match="not a readable exit policy"):
        policy_from_bytes((tmp_path / "policy.skops").read_bytes(), "policy.skops")
    assert not (tmp_path / PAYLOAD_MARKER).exists()


def test_api_crafted_pickle_in_a_data_archive_is_not_unpickled(tmp_path: Path) -> None:
    """Data caches and archives are read with allow_pickle=False / as images only."""
    from exitnas.data.load import load_splits

    archive = tmp_path / "train.tar"
    payload = tmp_path / "x.npy"
    np.save(payload, np.array([Payload(tmp_path / PAYLOAD_MARKER)], dtype=object))
    with tarfile.open(archive, "w") as tar:
        tar.add(payload, arcname="a/x.npy")
    os.remove(payload)
    with pytest.raises(ExitnasError):
        load_splits("folder", tmp_path, 16, 0.25, seed=0, cache_dir=tmp_path / "cache")
    assert not (tmp_path / PAYLOAD_MARKER).exists()
