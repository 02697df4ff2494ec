"""Several workers, one study: a shared target of completed trials that survives dead workers.

Every worker (a process of ``exitnas search --workers N``, or a separate ``exitnas search
--until N`` on any host sharing the storage) runs trials until the study holds ``target``
completed trials. Trials still running elsewhere count as on their way, unless their worker
stopped beating: the storage's Optuna heartbeat then marks them failed and
``RetryHeartbeatStaleTrialCallback`` queues them again (same parameters, state ``WAITING``),
and the next free worker runs the retry. A worker that finds the rest of the target in other
workers' hands waits for them (polling), so killing any worker neither loses a completed trial
nor leaves the study short. A retry queued as the target is met stays ``WAITING``: the study's
next search runs it first.

Optuna never fails a running trial that has no heartbeat at all (a worker killed between
asking a trial and its heartbeat thread's first beat). A trial's first act is therefore to
beat once and mark itself started (the system attribute ``exitnas_started``: its own number,
which a retry copying it does not match), and a trial still unmarked after the grace period
(two heartbeats, by the clock of the host that asked it) is failed and queued again like a
stale one. Trials that other tools (Ray Tune's searcher) run on the same study without
heartbeats would be failed the same way: do not share one study between them.

Two workers can decide to start a trial at the same moment; each trial therefore checks, once
created, how many completed trials, and running or queued (retry) trials created before it
(lower numbers), the study holds, and is pruned as surplus when those already reach the
target. Every trial records its worker (``host:pid``) as the user attribute ``worker``.

SQLite has no row locks, so two workers can take the same queued retry (or both fail one stale
trial and queue two retries): both run it, the first to finish tells it, and the second, finding
it finished, goes on with the next trial instead of failing.
"""

from __future__ import annotations

import copy
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from exitnas.faults import kill_point
from exitnas.search.interrupts import Interrupts

__all__ = ["STARTED_ATTR", "WORKER_ATTR", "StudyTarget", "trial_told", "worker_name"]

WORKER_ATTR = "worker"  # user attribute: the trial's worker, host:pid
STARTED_ATTR = "exitnas_started"  # system attribute: the trial's number, set after its first beat


def worker_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_told(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna callback (called once a trial's state is committed): the ``trial-told`` kill
    point of :mod:`exitnas.faults`."""
    kill_point("trial-told")


class StudyTarget:
    """Run trials of ``optuna_study`` until it holds ``target`` completed trials.

    Args:
        optuna_study: the study (its storage should have a heartbeat, see
            :func:`~exitnas.storage.urls.open_storage`).
        target: completed trials the study should hold.
        poll: seconds to wait before looking again while other workers hold the remaining
            trials.
    """

    def __init__(self, optuna_study: optuna.Study, target: int, poll: float = 1.0) -> None:
        self.study, self.target, self.poll = optuna_study, target, poll
        self.storage: Any = optuna_study._storage  # Optuna's cache: finished trials read once
        self.study_id = self.storage.get_study_id_from_name(optuna_study.study_name)
        interval = getattr(self.storage, "get_heartbeat_interval", None)  # RDB storages
        self.heartbeat: int | None = interval() if interval is not None else None
        self.pruned = 0
        self._trial_id: int | None = None  # the trial this worker runs now

    def counts(self) -> tuple[int, list[FrozenTrial], list[FrozenTrial]]:
        """Completed trials, running trials and queued (retry) trials, read in one query
        after failing stale ones (two queries would miss a trial changing state in between)."""
        with warnings.catch_warnings():  # experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        complete = len(trials) - len(running) - len(waiting)
        return complete, self._fail_never_started(running), waiting

    def _fail_never_started(self, running: list[FrozenTrial]) -> list[FrozenTrial]:
        """Fail (and queue again) the running trials not marked started within the grace
        period; return the others."""
        if self.heartbeat is None:
            return running
        now, alive = datetime.now(), []
        for trial in running:
            started = trial.datetime_start
            if trial.system_attrs.get(STARTED_ATTR) == trial.number or started is None:
                alive.append(trial)
            elif (now - started).total_seconds() <= 2 * self.heartbeat:
                alive.append(trial)
            else:
                try:
                    failed = self.storage.set_trial_state_values(
                        trial._trial_id, state=TrialState.FAIL
                    )
                except optuna.exceptions.UpdateFinishedTrialError:
                    failed = False  # another worker failed it first
                retry = self.storage.get_heartbeat_stale_trial_callback()
                if failed and retry is not None:
                    retry(self.study, copy.deepcopy(self.storage.get_trial(trial._trial_id)))
        return alive

    def guard(self, objective: Callable[[optuna.trial.Trial], Sequence[float]]):
        """``objective`` that first records its worker and prunes itself when surplus."""
        name = worker_name()

        def guarded(trial: optuna.trial.Trial) -> Sequence[float]:
            self._trial_id = trial._trial_id
            kill_point("trial-asked")
            if self.heartbeat is not None:
                self.storage.record_heartbeat(trial._trial_id)  # before the thread's first
            self.storage.set_trial_system_attr(trial._trial_id, STARTED_ATTR, trial.number)
            trial.set_user_attr(WORKER_ATTR, name)
            complete, running, waiting = self.counts()  # waiting: the next worker runs them
            ahead = sum(t.number < trial.number for t in (*running, *waiting))
            if complete + ahead >= self.target:
                self.pruned += 1
                raise optuna.TrialPruned(f"surplus: the study's target is {self.target} trials")
            return objective(trial)

        return guarded

    def run(
        self,
        objective: Callable[[optuna.trial.Trial], Sequence[float]],
        callbacks: Sequence[Callable] = (),
        interrupts: Interrupts | None = None,
    ) -> None:
        """Run trials (one ``optimize`` call each) until the target is met.

        Args:
            objective: the search's objective.
            callbacks: Optuna callbacks, called after each trial.
            interrupts: makes Ctrl-C quiet and fails the trial it stops
                (:class:`~exitnas.search.interrupts.Interrupts`; the caller catches it).
        """
        guarded = self.guard(objective)
        if interrupts is not None:
            guarded = interrupts.wrap(guarded)
        while True:
            complete, running, _ = self.counts()
            if complete >= self.target:
                return
            if complete + len(running) >= self.target:
                time.sleep(self.poll)  # the rest is running elsewhere: wait for it
                continue
            self._trial_id = None
            try:
                with interrupts.deferring() if interrupts is not None else nullcontext():
                    self.study.optimize(guarded, n_trials=1, callbacks=[*callbacks, trial_told])
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                # another worker finished this trial first: it ran the same queued trial, or it
                # failed this one as stale (a heartbeat that came late on a loaded machine) and
                # queued it again; either way the study goes on without this worker's result
                if self._trial_id is None or not self._finished_elsewhere(self._trial_id):
                    raise

    def _finished_elsewhere(self, trial_id: int) -> bool:
        """Whether ``trial_id``, which this worker could not tell, is finished (told by another
        worker that took the same queued trial)."""
        return self.storage.get_trial(trial_id).state.is_finished()
