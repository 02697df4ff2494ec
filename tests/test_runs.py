"""A run folder opened once: each part loaded on first use, and only once."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest

import exitnas.search.objective as objective_module
import exitnas.supernet.checkpoint as checkpoint_module
import exitnas.supernet.trained as trained_module
from exitnas.errors import CheckpointError
from exitnas.runs import Run


def _counting(monkeypatch, module, name: str, counts: collections.Counter) -> None:
    function = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] += 1
        return function(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_a_query_loads_the_supernet_once_and_hashes_it_once(searched_run, monkeypatch) -> None:
    from exitnas.jobs.query import query_budget
    from exitnas.search.budget import Budget

    counts: collections.Counter = collections.Counter()
    _counting(monkeypatch, trained_module, "load_weights", counts)
    _counting(monkeypatch, checkpoint_module, "file_sha256", counts)
    _counting(monkeypatch, objective_module, "file_sha256", counts)
    study, path, url = searched_run
    run = Run.open(path, url, progress=False)
    assert counts == {}  # opening reads the description and the weights' header only
    assert run.study.key() == study.key() and run.url == url
    result = query_budget(run, Budget("mflops", 1000.0), policy=None)
    assert result.run is run and run.supernet is run.evaluator.model
    assert counts == {"load_weights": 1, "file_sha256": 1}
    assert run.searched() is run.searched(None)  # the searched study is opened once too


def test_data_moves_and_foreign_weights(searched_run, tmp_path: Path) -> None:
    study, path, url = searched_run
    moved = Run.open(path, url, data=tmp_path / "elsewhere")
    assert moved.study.data.path == str(tmp_path / "elsewhere")
    assert moved.study.key() == study.key()  # where the data lives is not part of the study
    with pytest.raises(CheckpointError, match="no trained supernet"):
        Run.open(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(path, other)
    description = other / "supernet.json"
    text = description.read_text()
    description.write_text(text.replace('"seed": 3', '"seed": 4'))
    with pytest.raises(CheckpointError, match="does not belong"):
        Run.open(other)
