"""``exitnas profile``: device profiles measured, stored in the study database, moved, evaluated."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from exitnas.cli.profile import add_profile_parser
from exitnas.devices.errors import ProfileError
from exitnas.devices.profile import DeviceProfile
from exitnas.errors import ExitnasError
from exitnas.search import run_search
from exitnas.storage import store as store_module
from exitnas.storage.store import MIGRATIONS, ProfileExistsError, ProfileStore, SqlStore
from exitnas.storage.urls import open_store
from exitnas.supernet.checkpoint import file_sha256
from exitnas.supernet.train import WEIGHTS

FAST = ("--repeats", "2", "--warmup", "1", "--batch-sizes", "1,4", "--configs", "3")


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="exitnas")
    add_profile_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["profile", *argv])
    return args.handler(args)


def _versions(url: str) -> list[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT version FROM exitnas_schema")).scalars())
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def searched(searched_copy):
    """The session's searched run in a database of its own: (study, run, storage URL)."""
    return searched_copy


@pytest.fixture(scope="module")
def profiled(searched):
    """``searched`` with device "cpu" profiled (fast settings): (study, run, url, summary)."""
    study, run, url = searched
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _cli("--study", str(run), "--storage", url, "--device", "cpu", *FAST) == 0
    return study, run, url, out.getvalue().strip()


def test_profile_is_stored_and_listed(profiled) -> None:
    study, run, url, _ = profiled
    store = open_store(url)
    assert isinstance(store, ProfileStore)
    assert "cpu" in store.list_devices(study.name)
    assert store.list_devices("another-study") == []
    assert store.get_profile(study.name, "gpu") is None
    profile = store.get_profile(study.name, "cpu")
    assert isinstance(profile, DeviceProfile)
    assert profile.device == "cpu" and profile.study_key == study.key()
    assert profile.weights_hash == file_sha256(run / WEIGHTS)
    assert profile.host.threads == 1
    configs = {t.config_key for t in profile.timings}
    assert len(configs) >= 4  # the front's configs and 3 sampled ones
    assert {t.batch_size for t in profile.timings} == {1, 4}
    assert all(t.median_ms > 0 for t in profile.timings)
    assert _versions(url) == list(range(1, len(MIGRATIONS) + 1))


def test_profile_prints_a_summary(profiled) -> None:
    study, _, url, line = profiled
    assert line.startswith("profiled device 'cpu' for study 'tiny': ")
    assert "batch sizes 1,4, 1 threads" in line and line.endswith(url)
    profile = open_store(url).get_profile(study.name, "cpu")
    assert profile is not None and f"{len(profile.timings)} stages timed" in line


def test_reprofiling_needs_replace(profiled) -> None:
    study, run, url, _ = profiled
    before = open_store(url).get_profile(study.name, "cpu")
    with pytest.raises(ProfileExistsError, match="'cpu' is already profiled.*--replace"):
        _cli("--study", str(run), "--storage", url, "--device", "cpu", *FAST)
    assert open_store(url).get_profile(study.name, "cpu") == before
    assert before is not None
    with pytest.raises(ProfileExistsError, match="'cpu' is already profiled"):
        open_store(url).put_profile(study.name, before)
    newer = replace(before, created="2099-01-01T00:00:00+00:00")
    open_store(url).put_profile(study.name, newer, replace=True)
    assert open_store(url).get_profile(study.name, "cpu") == newer
    open_store(url).put_profile(study.name, before, replace=True)


def test_export_import_round_trip(profiled, tmp_path: Path, capsys) -> None:
    study, run, url, _ = profiled
    base = ("--study", str(run), "--storage", url)
    path = tmp_path / "cpu.json"
    assert _cli(*base, "--device", "cpu", "--export", str(path)) == 0
    assert str(path) in capsys.readouterr().out
    stored = open_store(url).get_profile(study.name, "cpu")
    assert DeviceProfile.load(path) == stored
    with pytest.raises(ProfileError, match="exists"):
        _cli(*base, "--device", "cpu", "--export", str(path))
    assert _cli(*base, "--device", "laptop", "--import", str(path)) == 0
    assert "as device 'laptop'" in capsys.readouterr().out
    devices = open_store(url).list_devices(study.name)
    assert {"cpu", "laptop"} <= set(devices) and devices == sorted(devices)
    imported = open_store(url).get_profile(study.name, "laptop")
    assert stored is not None and imported == replace(stored, device="laptop")
    with pytest.raises(ProfileExistsError, match="'laptop' is already profiled"):
        _cli(*base, "--device", "laptop", "--import", str(path))
    assert _cli(*base, "--device", "laptop", "--import", str(path), "--replace") == 0


def test_import_of_another_study_or_supernet_is_refused(profiled, tmp_path: Path) -> None:
    study, run, url, _ = profiled
    stored = open_store(url).get_profile(study.name, "cpu")
    assert stored is not None
    base = ("--study", str(run), "--storage", url, "--device", "other")
    foreign = tmp_path / "foreign.json"
    replace(stored, study_key="0" * 16).save(foreign)
    with pytest.raises(ProfileError, match=r"another study.*study key 0{16}, this study's is"):
        _cli(*base, "--import", str(foreign))
    retrained = tmp_path / "retrained.json"
    replace(stored, weights_hash="f" * 64).save(retrained)
    with pytest.raises(ProfileError, match=r"supernet weights sha256 ffffffffffff\.\.\.") as err:
        _cli(*base, "--import", str(retrained))
    assert "study key" not in str(err.value)
    both = tmp_path / "both.json"
    replace(stored, study_key="0" * 16, weights_hash="").save(both)
    with pytest.raises(ProfileError, match=r"study key .*; supernet weights sha256 \(none\)"):
        _cli(*base, "--import", str(both))
    garbage = tmp_path / "garbage.json"
    garbage.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ProfileError, match="not an exitnas device profile"):
        _cli(*base, "--import", str(garbage))
    assert "other" not in open_store(url).list_devices(study.name)


def test_evaluate_prints_the_held_out_error(profiled, capsys) -> None:
    _, run, url, _ = profiled
    assert _cli("--study", str(run), "--storage", url, "--device", "cpu", "--evaluate") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("latency model on device 'cpu': held-out MdAPE ")
    assert "% (" in line and " train / " in line and " test stage timings)" in line


def test_unknown_device_lists_the_profiled_ones(profiled, tmp_path: Path) -> None:
    study, run, url, _ = profiled
    base = ("--study", str(run), "--storage", url, "--device", "phone")
    with pytest.raises(ProfileError, match=r"no profile of device 'phone'.*profiled: .*'cpu'"):
        _cli(*base, "--evaluate")
    with pytest.raises(ProfileError, match=r"no profile of device 'phone'.*profiled: .*'cpu'"):
        _cli(*base, "--export", str(tmp_path / "phone.json"))
    assert not (tmp_path / "phone.json").exists()
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(ExitnasError, match="no study named 'tiny'"):
        _cli("--study", str(run), "--storage", missing, "--device", "cpu", "--evaluate")
    assert not (tmp_path / "none.db").exists()


def test_parser_rejects_bad_options(profiled) -> None:
    _, run, url, _ = profiled
    base = ("--study", str(run), "--storage", url, "--device", "cpu")
    for bad in (
        ("--batch-sizes", "1,x"),
        ("--batch-sizes", "0,4"),
        ("--repeats", "0"),
        ("--evaluate", "--export", "x.json"),
    ):
        with pytest.raises(SystemExit):
            _cli(*base, *bad)
    with pytest.raises(SystemExit):
        _cli("--study", str(run), "--evaluate")  # --device is required


def test_migration_1_database_upgrades_and_keeps_evaluations(
    trained_run, tmp_path: Path, monkeypatch
) -> None:
    """A database written before profiles existed (schema 1) gains the table, loses nothing."""
    study, run = trained_run
    study = replace(study, search=replace(study.search, sampler="random"))
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with monkeypatch.context() as old:
        old.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])  # exitnas before profiles
        run_search(study, run, trials=4, storage=url, progress=False)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert "exitnas_device_profiles" not in sa.inspect(conn).get_table_names()
            query = sa.text("SELECT arch_key, weights_hash FROM exitnas_evaluations")
            cached = [tuple(row) for row in conn.execute(query)]
        engine.dispose()
        old_store = SqlStore(url)
        before = {key: old_store.get(*key) for key in cached}
    assert cached and _versions(url) == [1]
    store = open_store(url)  # opening the store migrates the database
    assert _versions(url) == [1, 2, 3]
    assert open_store(url).count(cached[0][1]) == len(cached)
    assert _versions(url) == [1, 2, 3]  # once
    for key, evaluation in before.items():
        again = store.get(*key)
        assert evaluation is not None and again is not None
        assert again.config_json == evaluation.config_json
        np.testing.assert_array_equal(again.logits, evaluation.logits)
    assert store.count(cached[0][1]) == len(cached)
    assert store.list_devices(study.name) == []
    args = ("--study", str(run), "--storage", url, "--device", "cpu")
    fast = ("--repeats", "1", "--warmup", "0", "--batch-sizes", "1", "--configs", "1")
    assert _cli(*args, *fast) == 0
    assert store.list_devices(study.name) == ["cpu"]
