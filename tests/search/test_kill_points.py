"""Kill a worker at every point of its life (``EXITNAS_KILL_AT``) while others run.

Each test kills one process with SIGKILL at a named point (:mod:`exitnas.faults`), at the same
place in every run, and checks that the others take over: the study reaches its target with
no completed trial lost, nothing is refused, every completed trial's architecture is cached,
and a killed profile or policy write leaves the stored one as it was. On SQLite, and on
PostgreSQL where ``EXITNAS_TEST_POSTGRES_URL`` is set (CI starts a server).

Workers are processes forked from one forkserver that has exitnas imported (a fresh process
would spend seconds importing torch); each runs what a worker of ``exitnas search --workers``
runs (:func:`exitnas.search.optuna_backend._optimize`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from exitnas.errors import CheckpointError
from exitnas.faults import KILL_ENV
from exitnas.search import suggest
from exitnas.search.objective import TRIAL_ATTR, evaluation_key, load_validation
from exitnas.search.optuna_backend import _optimize
from exitnas.search.studies import (
    DIRECTIONS,
    IDENTITY_ATTR,
    load_searched_study,
    open_study,
    study_identity,
)
from exitnas.spaces import StudyConfig
from exitnas.storage.urls import open_store

TARGET = 8  # completed trials the study must reach
COMPANION_TARGET = 4  # the worker running beside the victim stops here: it can never end the
# study before the victim reaches its point, so every run kills at the same place
JOIN_S = 240  # seconds any one process may take


@pytest.fixture(scope="module")
def workers():
    """Start processes from a forkserver that has exitnas imported; kill leftovers after."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["exitnas.search.runner", "exitnas.jobs.pipeline"])
    started: list = []

    def start(target, *args):
        process = context.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join()


def finish(process) -> int | None:
    process.join(JOIN_S)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail(f"a worker ran longer than {JOIN_S} s")
    return process.exitcode


def armed(point: str | None) -> None:
    if point is not None:
        os.environ[KILL_ENV] = point


def search_worker(point: str | None, study_dict: dict, run_dir: str, url: str, target: int):
    """A search worker (one thread); killed at ``point`` if given."""
    armed(point)
    _optimize(study_dict, run_dir, url, target, 1, None)


def profile_worker(point: str | None, study_dict: dict, run_dir: str, url: str, again: bool):
    """``exitnas profile --device cpu`` with fast settings; killed at ``point`` if given."""
    from exitnas.jobs.profile import ProfileSettings, profile_device
    from exitnas.runs import Run

    armed(point)
    run = Run(Path(run_dir), StudyConfig.from_dict(study_dict), url, progress=False)
    fast = ProfileSettings(batch_sizes=(1, 4), repeats=2, passes=2, warmup=1, configs=3)
    profile_device(run, "cpu", fast, replace=again, progress=False)


def policy_worker(point: str | None, study_dict: dict, run_dir: str, url: str, again: bool):
    """``exitnas policy fit --estimator logistic``; killed at ``point`` if given."""
    from exitnas.jobs.fit import fit_policy
    from exitnas.runs import Run

    armed(point)
    run = Run(Path(run_dir), StudyConfig.from_dict(study_dict), url)
    fit_policy(run, estimator="logistic", replace=again)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("fresh_url")


@pytest.fixture
def searchable(trained_run):
    """The tiny run with the random sampler and 1 s heartbeats: (study, run dir)."""
    study, run = trained_run
    search = replace(study.search, sampler="random", heartbeat_seconds=1)
    return replace(study, search=search), run


def bare_study(study: StudyConfig, url: str) -> optuna.Study:
    """The study's Optuna study created, nothing of exitnas's written yet."""
    return optuna.create_study(study_name=study.name, storage=url, directions=DIRECTIONS)


def complete_numbers(url: str, name: str) -> set[int]:
    study = optuna.load_study(study_name=name, storage=url)
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}


def kill_one_while_others_run(workers, study, run, url: str, point: str, alone: bool) -> set[int]:
    """Kill a worker at ``point`` while another runs (``alone``: before any other starts), then
    let two more finish the study; return the completed trials when the victim died."""
    args = (study.to_dict(), str(run), url)
    victim = workers(search_worker, point, *args, TARGET)
    if alone:
        finish(victim)
    companion = workers(search_worker, None, *args, COMPANION_TARGET)
    assert finish(victim) == -signal.SIGKILL, f"the victim was not killed at {point}"
    kept = complete_numbers(url, study.name)
    survivors = [workers(search_worker, None, *args, TARGET) for _ in range(2)]
    codes = {process.pid: finish(process) for process in (companion, *survivors)}
    if set(codes.values()) != {0}:
        trials = optuna.load_study(study_name=study.name, storage=url).trials
        pytest.fail(
            f"a worker failed or was refused (its error is above): {codes}\n" + describe(trials)
        )
    return kept


def describe(trials: list) -> str:
    """One line per trial: what a failed check shows."""
    lines = []
    for t in trials:
        start, end = t.datetime_start, t.datetime_complete
        lines.append(
            f"{t.number} {t.state.name} worker={t.user_attrs.get('worker')} "
            f"retry_of={t.system_attrs.get('failed_trial')} "
            f"{start and start.time()} -> {end and end.time()}"
        )
    return "\n".join(lines)


def check_study(study: StudyConfig, run: Path, url: str, kept: set[int]) -> list:
    """The study reached its target, lost no completed trial, retried every killed trial and
    cached every completed trial's architecture; return its trials."""
    key = evaluation_key(run, load_validation(study))
    final = load_searched_study(study, url, key)  # its identity is complete and this run's
    trials = final.get_trials(deepcopy=False)
    complete = {t.number for t in trials if t.state == TrialState.COMPLETE}
    assert len(complete) == TARGET, describe(trials)
    assert kept <= complete  # no completed trial lost
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        # queued again with its parameters (on SQLite, two workers failing the stale trial at
        # once can both queue it); a retry queued as the target is met stays WAITING
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
        assert retries
        for retry in retries:
            assert failed.params.items() <= retry.params.items()
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert all("failed_trial" in t.system_attrs for t in waiting)  # only retries wait
    store = open_store(url)
    for trial in (t for t in trials if t.state == TrialState.COMPLETE):
        config, _ = suggest(optuna.trial.FixedTrial(trial.params), study.space, study.search.rules)
        assert store.get(config.key(), key) is not None
    return trials


@pytest.mark.parametrize("point", ["study-created", "identity-half-written"])
def test_a_worker_killed_while_setting_up_the_study(workers, searchable, url, point) -> None:
    """The first worker dies before the study's identity is written: the next workers (two at
    once) complete the set-up instead of refusing the study."""
    study, run = searchable
    kept = kill_one_while_others_run(workers, study, run, url, point, alone=True)
    check_study(study, run, url, kept)


@pytest.mark.parametrize(
    "point", ["trial-asked:2", "evaluated-not-cached:2", "cache-row-written:2", "trial-told:2"]
)
def test_a_worker_killed_mid_trial(workers, searchable, url, point) -> None:
    """Killed in its second trial (or just after telling it): its running trial is failed
    after the heartbeat's grace period and retried by the others; nothing completed is lost."""
    study, run = searchable
    kept = kill_one_while_others_run(workers, study, run, url, point, alone=False)
    trials = check_study(study, run, url, kept)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if point.startswith("trial-told"):
        assert not failed  # told trials stay complete
        return
    assert len(failed) == 1  # the victim's trial, left RUNNING, failed by a heartbeat check
    if point.startswith("cache-row-written"):  # a retry that ran found the victim's cache row
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
        done = [t for t in retries if t.state == TrialState.COMPLETE]
        assert all(t.user_attrs[TRIAL_ATTR]["cache_hit"] for t in done)


@pytest.fixture
def searched(workers, searchable, url):
    """The tiny run searched to the target (so a front exists): (study, run dir, url)."""
    study, run = searchable
    assert finish(workers(search_worker, None, study.to_dict(), str(run), url, 2 * TARGET)) == 0
    return study, run, url


@pytest.mark.parametrize(
    ("point", "worker", "read"),
    [
        ("profile-write", profile_worker, lambda store, name: store.get_profile(name, "cpu")),
        ("policy-write", policy_worker, lambda store, name: store.get_policy(name, "learned")),
    ],
)
def test_a_profile_or_policy_write_killed(workers, searched, point, worker, read) -> None:
    """Killed while storing (the row written, not committed), while a search runs on: nothing
    is stored, the same command again is not refused; killed while replacing, the stored one
    stays as it was."""
    study, run, url = searched
    args = (study.to_dict(), str(run), url)
    victim = workers(worker, point, *args, False)
    search = workers(search_worker, None, *args, 3 * TARGET)
    assert finish(victim) == -signal.SIGKILL
    assert finish(search) == 0
    store = open_store(url)
    assert read(store, study.name) is None
    assert finish(workers(worker, None, *args, False)) == 0  # not "already stored"
    stored = read(store, study.name)
    assert stored is not None
    assert finish(workers(worker, point, *args, True)) == -signal.SIGKILL  # replacing it
    assert read(store, study.name) == stored
    assert len(complete_numbers(url, study.name)) == 3 * TARGET


def test_a_torn_set_up_of_an_older_study_is_completed(searchable, tmp_path: Path) -> None:
    """A study set up before the identity was one attribute, cut short after its study key:
    the next worker completes it with the fields it lacks instead of refusing it."""
    study, run = searchable
    url = f"sqlite:///{tmp_path / 'study.db'}"
    key = evaluation_key(run, load_validation(study))
    old = bare_study(study, url)
    old.set_user_attr("device", None)
    old.set_user_attr("exitnas_study_key", study.key())
    opened = open_study(study, url, key=key)
    identity = study_identity(opened)
    assert identity is not None and IDENTITY_ATTR in opened.user_attrs
    assert identity["study_key"] == study.key() and identity["evaluation_key"] == key
    assert identity["rules"] == list(study.search.rules)


def test_an_older_study_of_other_weights_is_still_refused(searchable, tmp_path: Path) -> None:
    study, run = searchable
    url = f"sqlite:///{tmp_path / 'study.db'}"
    old = bare_study(study, url)
    for name, value in [
        ("device", None),
        ("exitnas_study_key", study.key()),
        ("rules", list(study.search.rules)),
        ("evaluation_key", "0" * 64),
    ]:
        old.set_user_attr(name, value)
    with pytest.raises(CheckpointError, match="other supernet weights"):
        open_study(study, url, key=evaluation_key(run, load_validation(study)))


def test_a_real_mismatch_is_refused_after_a_cut_short_set_up(searchable, tmp_path: Path) -> None:
    """Set up by whoever completes it first: a worker with other weights is then refused."""
    study, run = searchable
    url = f"sqlite:///{tmp_path / 'study.db'}"
    bare_study(study, url)
    key = evaluation_key(run, load_validation(study))
    open_study(study, url, key=key)  # completes the set-up nobody wrote
    with pytest.raises(CheckpointError, match="other supernet weights"):
        open_study(study, url, key="f" * 64)
