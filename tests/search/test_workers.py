"""Workers that die: heartbeats fail their trials, the others retry them and finish the study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from exitnas.faults import KILL_ENV
from exitnas.search.workers import STARTED_ATTR, StudyTarget, worker_name
from exitnas.storage.urls import open_storage


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_dead_workers_trial_is_failed_retried_and_the_target_met(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="s")
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(orphan._trial_id)  # its worker beat once, then died
    target = StudyTarget(study, 5, poll=0.2)
    started = time.monotonic()
    target.run(lambda trial: trial.suggest_float("x", 0, 1))
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5
    assert study.trials[orphan.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == study.trials[orphan.number].params
    assert time.monotonic() - started >= 2  # it waited for the grace period (2 x heartbeat)
    assert {t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE} == {
        worker_name()
    }


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize("orphan", ["asked", "retry popped"])
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed(
    tmp_path: Path, orphan: str
) -> None:
    """Optuna never fails a running trial without heartbeats: the workers fail it once it is
    still not marked started after the grace period, and retry it. A retry carries the mark of
    the trial it retries, which does not count."""
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="s")
    x = optuna.distributions.FloatDistribution(0, 1)
    if orphan == "asked":
        dead = study.ask({"x": x})  # its worker was killed before it beat once
        number = dead.number
    else:  # the retry of a trial that had started, popped by a worker killed at once
        first = study.ask({"x": x})
        storage.set_trial_system_attr(first._trial_id, STARTED_ATTR, first.number)
        study.tell(first, state=TrialState.FAIL)
        template = study.trials[first.number]
        retry = optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=template.params,
            distributions=template.distributions,
            system_attrs=template.system_attrs,
        )
        study.add_trial(retry)
        number = study.trials[-1].number
        assert storage.set_trial_state_values(study.trials[-1]._trial_id, TrialState.RUNNING)
    StudyTarget(study, 3, poll=0.2).run(lambda trial: trial.suggest_float("x", 0, 1))
    trials = study.get_trials(deepcopy=False)
    assert trials[number].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert retries and retries[0].params == trials[number].params
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_a_trial_told_first_by_another_worker_is_left_to_it(tmp_path: Path) -> None:
    """On SQLite two workers can take the same queued retry: the one telling it second goes on
    instead of failing."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    other = optuna.load_study(study_name="s", storage=open_storage(url))

    def objective(trial: optuna.trial.Trial) -> float:
        if trial.number == 1:
            other.tell(trial.number, 0.5)  # the other worker running it finished first
        return 1.0

    StudyTarget(study, 3).run(objective)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[1].value == 0.5


def test_a_trial_started_beyond_the_target_is_pruned(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    other = study.ask()  # another worker's trial, running and created first
    target = StudyTarget(study, 1)
    guarded = target.guard(lambda trial: 1.0)
    study.optimize(guarded, n_trials=1)
    assert study.trials[-1].state == TrialState.PRUNED and target.pruned == 1
    study.tell(other, 0.5)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 1


def test_kill_9_of_two_of_four_search_workers(trained_run, tmp_path: Path) -> None:
    """Four `exitnas search` on one study, two of them killed with SIGKILL mid-trial at kill
    points (their second trial before its first heartbeat; their third validation pass before
    its cache row): nothing is lost, their trials are failed and retried, and the study ends
    with exactly 24 completed trials.

    The same in every run: the victims start beside a worker that stops at 4 trials, so the
    study cannot reach 24 before both victims reach their points; the fourth worker, started
    once they are dead, takes the study to 24.
    """
    study, run = trained_run
    study = replace(study, search=replace(study.search, sampler="random", heartbeat_seconds=1))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "exitnas.cli", "search", str(path), "--run", str(run)]
    command += ["--storage", url, "--quiet", "--until"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    points = ("trial-asked:2", "evaluated-not-cached:3")
    victims = [subprocess.Popen([*command, "24"], env={**env, KILL_ENV: p}) for p in points]
    companion = subprocess.Popen([*command, "4"], env=env, stderr=subprocess.PIPE)
    for victim in victims:
        assert victim.wait(timeout=240) == -signal.SIGKILL
    kept = {t.number for t in completed(url, study.name)}  # completed before the last starts
    last = subprocess.Popen([*command, "24"], env=env, stderr=subprocess.PIPE)
    for survivor in (companion, last):
        _, err = survivor.communicate(timeout=240)
        assert survivor.returncode == 0, err.decode()
    final = optuna.load_study(study_name=study.name, storage=url)
    complete = {t.number for t in completed(url, study.name)}
    assert len(complete) == 24
    assert kept <= complete  # no completed trial lost
    failed = final.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2  # one trial of each victim
    for trial in failed:
        # retried with its parameters (on SQLite, two workers failing the stale trial at once
        # can both queue it; a retry queued as the target is met stays WAITING)
        retries = [t for t in final.trials if t.system_attrs.get("failed_trial") == trial.number]
        assert retries
        for retry in retries:
            assert trial.params.items() <= retry.params.items()
    assert not final.get_trials(states=(TrialState.RUNNING,))


def completed(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=url)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
