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

from exitnas.search.storage import open_storage
from exitnas.search.workers import StudyTarget, worker_name


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


def test_a_trial_started_beyond_the_target_is_pruned(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    other = study.ask()  # another worker's trial, running and created first
    target = StudyTarget(study, 1)
    guarded = target.guard(lambda trial: 1.0)
    study.optimize(guarded, n_trials=1)
    assert study.trials[-1].state == TrialState.PRUNED and target.pruned == 1
    study.tell(other, 0.5)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 1


def running_trial_of(url: str, name: str, pid: int) -> int | None:
    study = optuna.load_study(study_name=name, storage=url)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker", "").endswith(f":{pid}"):
            return trial.number
    return None


def test_kill_9_of_two_of_four_search_workers(trained_run, tmp_path: Path) -> None:
    """Four `exitnas search --until 60` on one study, two killed mid-trial: nothing is lost,
    their trials are failed and retried, and the study ends with exactly 60 completed trials."""
    study, run = trained_run
    study = replace(study, search=replace(study.search, sampler="random", heartbeat_seconds=1))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "exitnas.cli", "search", str(path), "--run", str(run)]
    command += ["--storage", url, "--until", "60", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE) for _ in range(4)]
    killed: dict[int, int] = {}  # pid -> its trial running when it was killed
    kept: set[int] = set()
    deadline = time.monotonic() + 240
    for victim in workers[:2]:
        while victim.pid not in killed and time.monotonic() < deadline:
            time.sleep(0.2)
            if not Path(tmp_path / "study.db").exists():
                continue
            try:
                os.kill(victim.pid, signal.SIGSTOP)  # frozen: what it runs stays running
                number = running_trial_of(url, study.name, victim.pid)
            except (KeyError, optuna.exceptions.StorageInternalError):
                number = None  # the study is not created yet
            if number is None:
                os.kill(victim.pid, signal.SIGCONT)
                continue
            done = optuna.load_study(study_name=study.name, storage=url)
            kept |= {t.number for t in done.get_trials(states=(TrialState.COMPLETE,))}
            os.kill(victim.pid, signal.SIGKILL)
            killed[victim.pid] = number
        victim.wait()
    assert len(killed) == 2, "a worker finished before it could be killed"
    for survivor in workers[2:]:
        _, err = survivor.communicate(timeout=max(1, deadline - time.monotonic()))
        assert survivor.returncode == 0, err.decode()
    final = optuna.load_study(study_name=study.name, storage=url)
    complete = {t.number for t in final.get_trials(states=(TrialState.COMPLETE,))}
    assert len(complete) == 60
    assert kept <= complete  # no completed trial lost
    for number in killed.values():
        assert final.trials[number].state == TrialState.FAIL
        # retried; on SQLite (no row locks) two workers noticing the stale trial at once can
        # both queue it, and the second copy then runs or is pruned as surplus
        retries = [t for t in final.trials if t.system_attrs.get("failed_trial") == number]
        states = [t.state for t in retries]
        assert TrialState.COMPLETE in states
        assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
        for retry in retries:  # the same parameters, as far as the killed trial drew them
            assert final.trials[number].params.items() <= retry.params.items()
    assert not final.get_trials(states=(TrialState.RUNNING,))
