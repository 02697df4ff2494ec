"""The Ray Tune backend on a local 2-CPU Ray instance: same study, same storage, same scores."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from exitnas.search import suggest
from exitnas.search.objective import TRIAL_ATTR
from exitnas.search.runner import load_evaluator
from exitnas.search.storage import open_storage

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def test_storage_pickles(tmp_path: Path) -> None:
    # OptunaSearch checkpoints its Optuna study, storage included, with plain pickle
    storage = pickle.loads(pickle.dumps(open_storage(f"sqlite:///{tmp_path / 'study.db'}")))
    assert storage.get_all_studies() == []


def test_ray_search_fills_the_optuna_storage(trained_run, tmp_path: Path) -> None:
    from exitnas.search.ray_backend import run_ray_search

    study, run = trained_run
    study = replace(study, search=replace(study.search, sampler="nsga2", population_size=4))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary = run_ray_search(study, run, trials=8, storage=url, workers=2, progress=False)
    assert summary.trials_added == 8 and summary.trials_complete == 8
    assert summary.cache_hits + summary.cache_misses == 8
    optuna_study = optuna.load_study(study_name="tiny", storage=url)
    trials = optuna_study.trials
    assert len(trials) == 8  # nothing asked and left running
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(len(t.values) == 2 for t in trials)
    assert 0 < len(optuna_study.best_trials) == summary.pareto_size
    evaluator = load_evaluator(study, run, url)
    for trial in trials:
        config, rule = suggest(optuna.trial.FixedTrial(trial.params), study.space)
        outcome = evaluator.score(config, rule)
        assert (outcome.accuracy, outcome.expected_flops / 1e6) == tuple(trial.values)
        assert trial.user_attrs[TRIAL_ATTR]["exit_fractions"] == list(outcome.exit_fractions)
