"""Search studies in a real PostgreSQL server: EXITNAS_TEST_POSTGRES_URL (.ci/postgres.sh)."""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import optuna
import pytest
import sqlalchemy as sa

from exitnas.search import run_search, suggest
from exitnas.search.objective import load_evaluator
from exitnas.storage import StorageError
from exitnas.storage.store import MIGRATIONS
from exitnas.storage.urls import open_storage, open_store

POSTGRES_URL = os.environ.get("EXITNAS_TEST_POSTGRES_URL", "")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="EXITNAS_TEST_POSTGRES_URL is not set"),
]


def with_sampler(study, sampler: str):
    return replace(study, search=replace(study.search, sampler=sampler, population_size=8))


def schema_versions(url: str) -> list[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT version FROM exitnas_schema")).scalars())
    finally:
        engine.dispose()


@pytest.fixture
def public_url(trained_run):
    """The server's URL as users give it; the tiny study is deleted before and after."""
    study, _ = trained_run

    def delete() -> None:
        with contextlib.suppress(KeyError):  # no such study
            optuna.delete_study(study_name=study.name, storage=POSTGRES_URL)

    delete()
    yield POSTGRES_URL
    delete()


def test_search_and_cache_in_postgres(trained_run, public_url: str) -> None:
    study, run = trained_run
    study = with_sampler(study, "random")
    summary = run_search(study, run, trials=10, storage=public_url, progress=False)
    assert summary.trials_added == 10 and summary.trials_complete == 10
    assert summary.cache_hits + summary.cache_misses == 10
    trials = optuna.load_study(study_name=study.name, storage=public_url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 10
    engine = sa.create_engine(public_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"exitnas_schema", "exitnas_evaluations", "trials"} <= tables
    assert max(schema_versions(public_url)) == len(MIGRATIONS)
    # a new process: memory empty, every architecture's logits come from PostgreSQL
    second = load_evaluator(study, run, public_url)
    for trial in trials:
        config, rule = suggest(optuna.trial.FixedTrial(trial.params), study.space)
        outcome = second.score(config, rule)
        assert (outcome.accuracy, outcome.expected_flops / 1e6) == tuple(trial.values)
    assert second.misses == 0 and second.hits == 10
    assert second.store.count(second.weights_hash) >= summary.cache_misses


def test_two_workers_add_exactly_the_requested_trials(trained_run, fresh_url: str) -> None:
    study, run = trained_run
    study = with_sampler(study, "nsga2")
    summary = run_search(study, run, trials=10, storage=fresh_url, workers=2, progress=False)
    states = [t.state for t in optuna.load_study(study_name=study.name, storage=fresh_url).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 10
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert summary.trials_added == 10
    assert summary.cache_hits + summary.cache_misses == 10
    assert schema_versions(fresh_url) == list(range(1, len(MIGRATIONS) + 1))


def test_concurrent_first_opens_migrate_once(fresh_url: str) -> None:
    start = threading.Barrier(4)

    def first_open(_: int) -> int:
        start.wait()
        store = open_store(fresh_url)
        try:
            return store.count("no-such-weights")
        finally:
            store.engine.dispose()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(first_open, range(4))) == [0] * 4
    assert schema_versions(fresh_url) == list(range(1, len(MIGRATIONS) + 1))


def test_errors_do_not_show_the_password() -> None:
    url = sa.engine.make_url(POSTGRES_URL).set(password="s3cret-pw", database="no_such_db")
    url_text = url.render_as_string(hide_password=False)
    for opener in (open_storage, open_store):
        with pytest.raises(StorageError, match="cannot open storage") as caught:
            opener(url_text)
        assert "s3cret-pw" not in str(caught.value)


def test_profiles_policies_queries_and_bundles_in_postgres(
    trained_run, fresh_url: str, tmp_path
) -> None:
    """Everything a run stores beside the trials: a device profile, the learned policy, and a
    budget query and export reading them back, all through one PostgreSQL URL."""
    import json

    from exitnas.cli import main

    study, run = trained_run
    run_search(with_sampler(study, "random"), run, trials=30, storage=fresh_url, progress=False)
    base = ["--study", str(run), "--storage", fresh_url]
    fast = ["--repeats", "2", "--warmup", "1", "--batch-sizes", "1,4", "--configs", "3"]
    assert main(["profile", *base, "--device", "cpu", *fast]) == 0
    assert main(["policy", "fit", *base, "--estimator", "logistic"]) == 0
    store = open_store(fresh_url)
    assert store.list_devices(study.name) == ["cpu"]
    assert store.get_policy(study.name, "learned") is not None
    out = tmp_path / "bundle"
    assert main(["export", *base, "--out", str(out), "--device", "cpu", "--budget-ms", "1e6"]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["budget_query"]["device"] == "cpu"


def test_both_drivers_open_the_same_database(fresh_url: str) -> None:
    """``postgresql+psycopg2://`` and ``postgresql+psycopg://`` (psycopg 3) URLs both work."""
    pytest.importorskip("psycopg")
    three = fresh_url.replace("postgresql+psycopg2://", "postgresql+psycopg://", 1)
    optuna.create_study(study_name="drivers", storage=open_storage(three))
    assert [s.study_name for s in open_storage(fresh_url).get_all_studies()] == ["drivers"]
    assert open_store(three).count("none") == 0
