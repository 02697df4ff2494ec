"""Shared fixtures: the registered tiny supernet's space, a tiny study and tiny data."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from exitnas.data import DataSplits, ImageSplit, load_splits
from exitnas.spaces import DataConfig, SearchConfig, SearchSpace, StudyConfig, TrainingConfig
from exitnas.supernet.registry import exitnas_tiny


class SearchedRun(NamedTuple):
    """A trained and searched tiny run."""

    study: StudyConfig
    run: Path  # the run folder (shared: do not write into it)
    url: str  # the searched study's SQLite URL


@pytest.fixture
def space() -> SearchSpace:
    return exitnas_tiny()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def study(space: SearchSpace) -> StudyConfig:
    training = TrainingConfig(
        epochs=2,
        batch_size=32,
        lr=2e-3,
        warmup_epochs=0.5,
        random_subnets=1,
        checkpoint_every=3,
        crop_padding=1,
    )
    return StudyConfig(
        name="tiny",
        space=space,
        data=DataConfig(image_size=16, val_fraction=0.1),
        training=training,
        # no seed trials: the searches here test the sampler's own (tests/search/test_seeds.py
        # tests the seeds)
        search=SearchConfig(seeds=()),
        seed=7,
    )


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_splits("digits", None, 16, 0.1, 0)


@pytest.fixture
def tiny_data(digits: DataSplits) -> DataSplits:
    """128 training and 64 validation digits: a few steps per epoch."""

    def head(split: ImageSplit, n: int) -> ImageSplit:
        return ImageSplit(split.images[:n], split.labels[:n])

    return replace(digits, train=head(digits.train, 128), val=head(digits.val, 64))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, digits: DataSplits):
    """A tiny supernet trained for a few steps, shared by the search tests: (study, run dir)."""
    from exitnas.supernet import train_supernet

    space = exitnas_tiny()
    training = TrainingConfig(epochs=1, batch_size=64, random_subnets=1, warmup_epochs=0.2)
    study = StudyConfig(
        name="tiny",
        space=space,
        data=DataConfig(image_size=16, val_fraction=0.1),
        training=training,
        search=SearchConfig(seeds=()),  # as `study`'s: the sampler's own trials
        seed=3,
    )
    small = replace(digits, train=ImageSplit(digits.train.images[:256], digits.train.labels[:256]))
    run = tmp_path_factory.mktemp("tiny-run")
    train_supernet(study, small, run, progress=False)
    return study, run


@pytest.fixture(scope="session")
def searched_run(trained_run, tmp_path_factory) -> SearchedRun:
    """``trained_run`` searched once for the whole session: 30 random trials in a database of
    its own. Tests that add to the database (profiles, policies) work on a copy:
    ``searched_copy``."""
    from exitnas.search import run_search

    study, run = trained_run
    study = replace(study, search=replace(study.search, sampler="random"))
    url = f"sqlite:///{tmp_path_factory.mktemp('searched') / 'study.db'}"
    run_search(study, run, trials=30, storage=url, progress=False)
    return SearchedRun(study, run, url)


@pytest.fixture(scope="module")
def searched_copy(searched_run: SearchedRun, tmp_path_factory) -> SearchedRun:
    """``searched_run`` with its database copied for one test module: what the module adds
    (profiles, policies, trials) stays in its copy."""
    source = Path(searched_run.url.removeprefix("sqlite:///"))
    target = tmp_path_factory.mktemp("searched-copy") / source.name
    shutil.copyfile(source, target)
    return searched_run._replace(url=f"sqlite:///{target}")
