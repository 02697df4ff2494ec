"""Search studies on the tiny supernet: cache, front, resume, concurrent workers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest

from exitnas.errors import CheckpointError
from exitnas.exits import ExitRule
from exitnas.search import run_search, suggest
from exitnas.search.front import front_trials
from exitnas.search.objective import load_evaluator
from exitnas.search.samplers import create_sampler
from exitnas.search.studies import open_study
from exitnas.storage import StorageError
from exitnas.storage.urls import default_storage_url
from exitnas.supernet.evaluate import predict_exits


def with_sampler(study, sampler: str):
    return replace(study, search=replace(study.search, sampler=sampler, population_size=8))


def test_cached_and_recomputed_metrics_are_identical(trained_run, tmp_path: Path, rng) -> None:
    study, run = trained_run
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    first = load_evaluator(study, run, url)
    configs = [study.space.sample(rng) for _ in range(4)]
    rules = [ExitRule("max_softmax", tuple(rng.random(c.num_exits - 1))) for c in configs]
    fresh = [first.score(c, r) for c, r in zip(configs, rules, strict=True)]
    assert first.misses == 4 and first.hits == 0
    second = load_evaluator(study, run, url)  # a new process: memory empty, database warm
    cached = [second.score(c, r) for c, r in zip(configs, rules, strict=True)]
    assert second.hits == 4 and second.misses == 0
    assert cached == fresh
    for config in configs:  # the stored logits are exactly a fresh validation pass
        stored, hit = second.logits(config)
        assert hit
        again = predict_exits(first.model, second.images, second.mean, second.std, config=config)
        np.testing.assert_array_equal(stored, again)


def test_search_front_is_the_brute_force_front(trained_run, tmp_path: Path) -> None:
    study, run = trained_run
    study = with_sampler(study, "random")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary = run_search(study, run, trials=30, storage=url, progress=False)
    assert summary.trials_added == 30 and summary.trials_complete == 30
    optuna_study = optuna.load_study(study_name="tiny", storage=url)
    trials = optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    values = np.array([t.values for t in trials])
    front = {t.number for t in optuna_study.best_trials}
    dominated = {
        t.number
        for t, (a, c) in zip(trials, values, strict=True)
        if any((a2 >= a and c2 <= c) and (a2 > a or c2 < c) for a2, c2 in values)
    }
    assert front == {t.number for t in trials} - dominated
    assert summary.pareto_size == len(front_trials(optuna_study, study.space)) <= len(front)
    # every trial's recorded objectives are reproduced from its parameters and the cache
    evaluator = load_evaluator(study, run, url)
    for trial in trials[:8]:
        config, rule = suggest(optuna.trial.FixedTrial(trial.params), study.space)
        outcome = evaluator.score(config, rule)
        assert (outcome.accuracy, outcome.expected_flops / 1e6) == tuple(trial.values)


def test_resume_adds_trials_after_an_interruption(trained_run, tmp_path: Path) -> None:
    study, run = trained_run
    study = with_sampler(study, "nsga2")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_search(study, run, trials=6, storage=url, progress=False)
    optuna_study = open_study(study, url)

    def interrupt(s, trial):
        if trial.number == 8:
            raise KeyboardInterrupt

    from exitnas.search.objective import SearchObjective

    evaluator = load_evaluator(study, run, url)
    with pytest.raises(KeyboardInterrupt):
        optuna_study.optimize(
            SearchObjective(evaluator, study.search.rules), n_trials=10, callbacks=[interrupt]
        )
    summary = run_search(study, run, trials=5, storage=url, progress=False)
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=url).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6 + 3 + 5
    assert summary.trials_added == 5


def test_a_narrowed_space_searches_only_its_configs(trained_run, tmp_path: Path) -> None:
    """The benchmark's ablations: one supernet searched in a narrower space."""
    from exitnas.search.objective import SearchObjective

    study, run = trained_run
    evaluator = load_evaluator(study, run, f"sqlite:///{tmp_path / 'cache.db'}")
    narrow = replace(study.space, max_branches=1, head_types=("linear",))
    assert narrow != study.space
    optuna_study = optuna.create_study(directions=["maximize", "minimize"])
    optuna_study.optimize(SearchObjective(evaluator, ("max_softmax",), space=narrow), n_trials=12)
    configs = [suggest(optuna.trial.FixedTrial(t.params), narrow)[0] for t in optuna_study.trials]
    assert all(len(c.branches) == 1 for c in configs)
    assert {e.head for c in configs for b in c.branches for e in b.exits} == {"linear"}
    for config in configs:
        study.space.check(config)  # a sub-network of the supernet's own space
        narrow.check(config)


def test_four_workers_add_exactly_the_requested_trials(trained_run, tmp_path: Path) -> None:
    study, run = trained_run
    study = with_sampler(study, "nsga2")
    url = default_storage_url(tmp_path)
    summary = run_search(study, run, trials=40, storage=url, workers=4, progress=False)
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 40
    # workers that started a trial at the same moment near the end prune the surplus one
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert states.count(optuna.trial.TrialState.PRUNED) < 4
    assert summary.trials_added == 40 and summary.workers_lost == 0
    assert summary.cache_hits + summary.cache_misses == 40


def test_trials_are_seeded_by_their_number(tmp_path: Path) -> None:
    """Two processes sharing a study draw what one process draws for each trial number."""
    url = f"sqlite:///{tmp_path / 's.db'}"

    def draw(trial):
        return trial.suggest_float("x", 0, 1), trial.suggest_categorical("c", list(range(50)))

    alone = optuna.create_study(sampler=create_sampler("random", 5))
    expected = [draw(alone.ask()) for _ in range(12)]
    optuna.create_study(study_name="shared", storage=url)
    handles = [
        optuna.load_study(study_name="shared", storage=url, sampler=create_sampler("random", 5))
        for _ in range(2)
    ]
    drawn = {}
    for i in range(12):
        trial = handles[i % 2].ask()  # the two "processes" take turns
        drawn[trial.number] = draw(trial)
    assert [drawn[n] for n in range(12)] == expected
    assert len(set(expected)) == 12


def test_same_seed_same_study(trained_run, tmp_path: Path) -> None:
    study, run = trained_run
    study = with_sampler(study, "nsga2")
    runs = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / name}.db"
        run_search(study, run, trials=12, storage=url, progress=False)
        runs.append(optuna.load_study(study_name="tiny", storage=url).trials)
    assert [t.params for t in runs[0]] == [t.params for t in runs[1]]
    assert [t.values for t in runs[0]] == [t.values for t in runs[1]]


def test_a_study_refuses_other_rules(trained_run, tmp_path: Path) -> None:
    study, run = trained_run
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_search(study, run, trials=2, storage=url, progress=False)
    other = replace(study, search=replace(study.search, rules=("entropy",)))
    with pytest.raises(CheckpointError, match="exit rules"):
        run_search(other, run, trials=1, storage=url, progress=False)


def test_storage_and_study_errors(trained_run, tmp_path: Path) -> None:
    study, run = trained_run
    with pytest.raises(StorageError, match="does not exist"):
        run_search(study, run, trials=1, storage=f"sqlite:///{tmp_path}/no/such/dir.db")
    with pytest.raises(StorageError, match="cannot open storage"):
        run_search(study, run, trials=1, storage="nosuchdb://x")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_search(study, run, trials=1, storage=url, progress=False)
    other = study.with_overrides(epochs=2)
    with pytest.raises(CheckpointError, match="another study"):
        run_search(other, run, trials=1, storage=url, progress=False)
    with pytest.raises(CheckpointError, match="no trained supernet"):
        run_search(study, tmp_path / "empty", trials=1, storage=url, progress=False)
