"""Pareto export: point selection, bundles that run real early exit, and the front as JSON."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest

import exitnas
from exitnas.cli.export import add_export_parser
from exitnas.data import load_splits
from exitnas.deploy.bundle import BundleError
from exitnas.deploy.write import export_bundle
from exitnas.errors import ExitnasError
from exitnas.exits import ExitRule, ExitTable
from exitnas.search.front import (
    ExportError,
    ParetoPoint,
    export_front_json,
    pareto_points,
    read_front_json,
    select_point,
)
from exitnas.search.studies import load_searched_study
from exitnas.supernet import load_supernet
from exitnas.supernet.checkpoint import file_sha256
from exitnas.supernet.train import WEIGHTS


def _point(index: int, accuracy: float, mflops: float, space) -> ParetoPoint:
    config = space.smallest()
    return ParetoPoint(
        index=index,
        trial_number=10 + index,
        config=config,
        rule=ExitRule("max_softmax", (0.5,) * (config.num_exits - 1)),
        accuracy=accuracy,
        mflops=mflops,
        exit_fractions=(1.0,),
        stage_flops=(int(mflops * 1e6),),
    )


@pytest.fixture
def synthetic(space) -> list[ParetoPoint]:
    return [
        _point(0, 0.50, 10.0, space),
        _point(1, 0.70, 20.0, space),
        _point(2, 0.85, 40.0, space),
        _point(3, 0.85, 45.0, space),  # as accurate, dearer
        _point(4, 0.95, 80.0, space),
    ]


def test_select_point(synthetic) -> None:
    assert select_point(synthetic).index == 4
    assert select_point(synthetic, index=1).index == 1
    assert select_point(synthetic, "mflops<=40").index == 2
    assert select_point(synthetic, "mflops<60").index == 2  # tie on accuracy: cheaper wins
    assert select_point(synthetic, "flops<=40e6").index == 2
    assert select_point(synthetic, "flops < 40e6").index == 1
    assert select_point(synthetic, "mflops<=40,accuracy>=0.6").index == 2
    assert select_point(synthetic, "accuracy>0.5, mflops<=20").index == 1
    assert select_point(synthetic, "mflops>=50").index == 4


def test_select_point_errors(synthetic) -> None:
    with pytest.raises(ExportError, match=r"available: cheapest 10 MFLOPs .* most accurate 0.95"):
        select_point(synthetic, "mflops<=40,accuracy>=0.9")
    for bad in ("mflops=40", "latency<=3", "accuracy>=high", "", "mflops<=40,"):
        with pytest.raises(ExportError, match="allowed: accuracy|flops|mflops"):
            select_point(synthetic, bad)
    with pytest.raises(ExportError, match=r"valid: 0\.\.4"):
        select_point(synthetic, index=5)
    with pytest.raises(ExportError, match=r"valid: 0\.\.4"):
        select_point(synthetic, index=-1)
    with pytest.raises(ExportError, match="empty"):
        select_point([])
    assert issubclass(ExportError, ExitnasError) and issubclass(BundleError, ExitnasError)


@pytest.fixture(scope="module")
def searched(searched_run):
    """The session's searched run (only read here): (study, run, storage URL)."""
    return searched_run


@pytest.fixture(scope="module")
def front(searched) -> list[ParetoPoint]:
    study, _, url = searched
    return pareto_points(load_searched_study(study, url), study.space)


def test_pareto_points_are_the_sorted_front(searched, front) -> None:
    study, _, url = searched
    optuna_study = optuna.load_study(study_name=study.name, storage=url)
    assert {p.trial_number for p in front} <= {t.number for t in optuna_study.best_trials}
    assert [p.index for p in front] == list(range(len(front)))
    assert [p.mflops for p in front] == sorted(p.mflops for p in front)
    for point in front:
        assert len(point.stage_flops) == point.config.num_exits == len(point.exit_fractions)
        assert sum(point.exit_fractions) == pytest.approx(1.0)


def test_empty_and_missing_study(searched, tmp_path: Path) -> None:
    study, _, _ = searched
    url = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(ExitnasError, match="no study named 'tiny'.*run exitnas search"):
        load_searched_study(study, url)
    assert not (tmp_path / "none.db").exists()
    empty = optuna.create_study(study_name="tiny", storage=url, directions=["maximize"] * 2)
    with pytest.raises(ExportError, match="'tiny' has no completed trials; run search"):
        pareto_points(empty, study.space)


def _val_split(study):
    data = study.data
    return load_splits(data.dataset, data.path, data.image_size, data.val_fraction, study.seed)


def test_bundle_round_trip_reproduces_the_search(searched, front, tmp_path: Path) -> None:
    study, run, _ = searched
    model, _ = load_supernet(run, study)
    splits = _val_split(study)
    point = select_point(front)
    out = export_bundle(
        point,
        model,
        study,
        tmp_path / "bundle",
        weights_hash=file_sha256(run / WEIGHTS),
        mean=splits.mean,
        std=splits.std,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "manifest.json",
        "weights.safetensors",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
    bundle = exitnas.load(out)
    assert not bundle.model.training
    assert bundle.config == point.config and bundle.rule == point.rule
    assert bundle.meta["val_accuracy"] == point.accuracy
    assert bundle.meta["study"] == {"name": study.name, "key": study.key()}
    # the bundle holds just the parts the config uses
    assert sum(p.numel() for p in bundle.model.parameters()) < sum(
        p.numel() for p in model.parameters()
    )
    logits = bundle.logits(splits.val.images)
    labels = splits.val.labels.numpy()
    table = ExitTable(logits, labels, point.stage_flops)
    outcome = table.score(point.rule)
    assert outcome.accuracy == point.accuracy
    assert outcome.expected_flops / 1e6 == pytest.approx(point.mflops)
    prediction = bundle.predict(splits.val.images, batch_size=64)
    np.testing.assert_array_equal(prediction.exits, table.exits(point.rule))
    simulated = logits.argmax(-1)[table.exits(point.rule), np.arange(len(labels))]
    np.testing.assert_array_equal(prediction.labels, simulated)
    cumulative = np.cumsum(point.stage_flops)
    np.testing.assert_array_equal(prediction.flops, cumulative[prediction.exits])
    assert float((prediction.labels == labels).mean()) == point.accuracy


def test_predict_exits_early_on_several_exits(searched, front, tmp_path: Path) -> None:
    """A multi-exit point with thresholds forced so samples leave at different exits."""
    study, run, _ = searched
    model, _ = load_supernet(run, study)
    splits = _val_split(study)
    base = max(front, key=lambda p: (p.config.num_exits, p.accuracy))
    if base.config.num_exits < 2:
        config = study.space.largest()
        rule = ExitRule("max_softmax", (1.0,) * (config.num_exits - 1))
        base = replace(base, config=config, rule=rule, stage_flops=model.count_flops(config))
    probe = export_bundle(
        base, model, study, tmp_path / "probe", weights_hash="x", mean=splits.mean, std=splits.std
    )
    images = splits.val.images
    logits = exitnas.load(probe).logits(images)
    table = ExitTable(logits, splits.val.labels.numpy(), base.stage_flops)
    # thresholds at each exit's confidence quantile: samples leave at every exit
    confidence = table.confidence("max_softmax")[:-1]
    thresholds = tuple(float(np.quantile(c, 0.6)) for c in confidence)
    point = replace(base, rule=ExitRule("max_softmax", thresholds))
    out = export_bundle(
        point, model, study, tmp_path / "b", weights_hash="x", mean=splits.mean, std=splits.std
    )
    bundle = exitnas.load(out)
    np.testing.assert_array_equal(bundle.logits(images), logits)
    prediction = bundle.predict(images, batch_size=50)
    expected = table.exits(point.rule)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(prediction.exits, expected)
    np.testing.assert_array_equal(
        prediction.labels, logits.argmax(-1)[expected, np.arange(len(images))]
    )
    with pytest.raises(BundleError, match=r"expected uint8 \(N, 1, 16, 16\), got uint8"):
        bundle.predict(images[:, :, :8, :8])
    with pytest.raises(BundleError, match=r"expected uint8 \(N, 1, 16, 16\), got"):
        bundle.logits(images.repeat(1, 3, 1, 1))
    with pytest.raises(BundleError, match="got float32"):
        bundle.predict(images.float())


def _bundle(searched, front, out: Path) -> Path:
    study, run, _ = searched
    model, _ = load_supernet(run, study)
    return export_bundle(front[0], model, study, out, weights_hash="x", mean=(0.5,), std=(0.25,))


def test_tampered_bundles_are_refused(searched, front, tmp_path: Path) -> None:
    out = _bundle(searched, front, tmp_path / "bundle")
    weights = out / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights.safetensors does not match manifest"):
        exitnas.load(out)
    other = _bundle(searched, front, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["format"] = 99
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format 99 is not supported.*reads format 1"):
        exitnas.load(other)
    with pytest.raises(BundleError, match="not an exitnas bundle"):
        exitnas.load(tmp_path)


def test_non_empty_out_dir_is_refused_and_untouched(searched, front, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty"):
        _bundle(searched, front, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert exitnas.load(_bundle(searched, front, empty)).config == front[0].config


def test_front_json_round_trip(front, tmp_path: Path) -> None:
    path = export_front_json(front, tmp_path / "front.json")
    assert read_front_json(path) == front
    with pytest.raises(ExportError, match="already exists"):
        export_front_json(front[:1], path)
    assert read_front_json(path) == front


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="exitnas")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.handler(args)


def test_export_command(searched, front, tmp_path: Path, capsys) -> None:
    _, run, url = searched
    base = ("--study", str(run), "--storage", url)
    bundle = tmp_path / "bundle"
    assert _cli(*base, "--out", str(bundle), "--select", "mflops<=1e9") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"exported point {select_point(front).index} ") and str(bundle) in line
    assert exitnas.load(bundle).config == select_point(front).config
    assert _cli(*base, "--out", str(tmp_path / "f.json"), "--pareto") == 0
    assert read_front_json(tmp_path / "f.json") == front
    with pytest.raises(ExportError, match=r"valid: 0\.\."):
        _cli(*base, "--out", str(tmp_path / "x"), "--pareto-index", "999")
    with pytest.raises(ExitnasError, match="no study named"):
        _cli("--study", str(run), "--storage", f"sqlite:///{tmp_path}/none.db", "--out", "y")
    with pytest.raises(SystemExit):
        _cli("--study", str(run), "--out", "z", "--select", "mflops<1", "--pareto-index", "0")
