"""Several workers, one study: a shared target of completed trials that survives dead workers.

Every worker (a process of ``exitnas search --workers N``, or a separate ``exitnas search
--until N`` on any host sharing the storage) runs trials until the study holds ``target``
completed trials. Trials still running elsewhere count as on their way, unless their worker
stopped beating: the storage's Optuna heartbeat then marks them failed and
``RetryHeartbeatStaleTrialCallback`` queues them again (same parameters, state ``WAITING``),
and the next free worker runs the retry. A worker that finds the rest of the target in other
workers' hands waits for them (polling), so killing any worker neither loses a completed trial
nor leaves the study short.

Two workers can decide to start a trial at the same moment; each trial therefore checks, once
created, how many completed trials and running trials created before it (lower numbers) the
study holds, and is pruned as surplus when those already reach the target. Every trial records
its worker (``host:pid``) as the user attribute ``worker``.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import TrialState

__all__ = ["StudyTarget", "worker_name"]


def worker_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class StudyTarget:
    """Run trials of ``optuna_study`` until it holds ``target`` completed trials.

    Args:
        optuna_study: the study (its storage should have a heartbeat, see
            :func:`~exitnas.search.storage.open_storage`).
        target: completed trials the study should hold.
        poll: seconds to wait before looking again while other workers hold the remaining
            trials.
    """

    def __init__(self, optuna_study: optuna.Study, target: int, poll: float = 1.0) -> None:
        self.study, self.target, self.poll = optuna_study, target, poll
        self.storage = optuna_study._storage  # counts without loading every trial
        self.study_id = self.storage.get_study_id_from_name(optuna_study.study_name)
        self.pruned = 0

    def counts(self) -> tuple[int, list[optuna.trial.FrozenTrial]]:
        """Completed trials and the running trials (after failing stale ones)."""
        with warnings.catch_warnings():  # experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        complete = self.storage.get_n_trials(self.study_id, state=TrialState.COMPLETE)
        running = self.storage.get_all_trials(
            self.study_id, deepcopy=False, states=(TrialState.RUNNING,)
        )
        return complete, running

    def guard(self, objective: Callable[[optuna.trial.Trial], Sequence[float]]):
        """``objective`` that first records its worker and prunes itself when surplus."""
        name = worker_name()

        def guarded(trial: optuna.trial.Trial) -> Sequence[float]:
            trial.set_user_attr("worker", name)
            complete, running = self.counts()
            ahead = sum(t.number < trial.number for t in running)
            if complete + ahead >= self.target:
                self.pruned += 1
                raise optuna.TrialPruned(f"surplus: the study's target is {self.target} trials")
            return objective(trial)

        return guarded

    def run(
        self,
        objective: Callable[[optuna.trial.Trial], Sequence[float]],
        callbacks: Sequence[Callable] = (),
    ) -> None:
        """Run trials (one ``optimize`` call each) until the target is met."""
        guarded = self.guard(objective)
        while True:
            complete, running = self.counts()
            if complete >= self.target:
                return
            if complete + len(running) >= self.target:
                time.sleep(self.poll)  # the rest is running elsewhere: wait for it
                continue
            self.study.optimize(guarded, n_trials=1, callbacks=list(callbacks))
