"""Ctrl-C during a search: the running trial is failed quietly, and the search says where it
stopped.

Optuna catches a ``KeyboardInterrupt`` raised inside a trial, fails the trial, logs the whole
traceback as a warning and raises it again. A search wraps its objective in
:meth:`Interrupts.wrap` instead: a ``KeyboardInterrupt`` there leaves the objective as
:class:`TrialInterrupted`, which Optuna neither catches nor logs, and
:meth:`Interrupts.stopped` then fails the trial that was running (so that no later search
waits for it) and returns the :class:`SearchInterrupted` to raise. Completed trials are all in
the study already; running the search again continues it.

Inside :meth:`Interrupts.deferring` (around ``optimize``), a Ctrl-C that comes while Optuna
asks for, tells or calls back about a trial waits until the next trial's objective starts, or
``optimize`` returns: a trial asked for but never started would stay running in the study.

Example:
    >>> interrupts = Interrupts()
    >>> try:
    ...     with interrupts.deferring():
    ...         optuna_study.optimize(interrupts.wrap(objective), n_trials=20)
    ... except (KeyboardInterrupt, TrialInterrupted):
    ...     raise interrupts.stopped(optuna_study, target=20) from None
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import TrialState

__all__ = ["Interrupts", "SearchInterrupted", "TrialInterrupted"]

Objective = Callable[[optuna.trial.Trial], Any]


class TrialInterrupted(BaseException):
    """Ctrl-C inside a trial, carried past Optuna (which would log its traceback)."""


class SearchInterrupted(KeyboardInterrupt):
    """A search stopped by Ctrl-C; its completed trials are kept and the running ones failed.

    Attributes:
        trials: numbers of the trials that were running when it stopped (failed now).
        target: the completed trials the search was to reach (``exitnas search --until``).
    """

    def __init__(self, trials: Sequence[int], target: int) -> None:
        self.trials, self.target = tuple(sorted(trials)), target
        super().__init__(str(self))

    def __str__(self) -> str:
        if not self.trials:
            return "search interrupted before its first trial"
        many = "s" * (len(self.trials) > 1)
        return f"search interrupted at trial{many} {', '.join(map(str, self.trials))}"


class Interrupts:
    """Makes a search's objective stop quietly on Ctrl-C, and fails the trial it stopped in."""

    def __init__(self) -> None:
        self.trial: tuple[int, int] | None = None  # (number, id) of the last trial started
        self._inside = False  # in the objective: Ctrl-C interrupts at once
        self._pending = False  # a deferred Ctrl-C

    def wrap(self, objective: Objective) -> Objective:
        """``objective`` that records its trial and turns a ``KeyboardInterrupt`` (or a
        deferred one) into :class:`TrialInterrupted`."""

        def interruptible(trial: optuna.trial.Trial) -> Any:
            self.trial = (trial.number, trial._trial_id)
            self._inside = True
            try:
                if self._pending:
                    raise KeyboardInterrupt
                return objective(trial)
            except KeyboardInterrupt:
                raise TrialInterrupted from None
            finally:
                self._inside = False

        return interruptible

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Defer a Ctrl-C outside the objective to the next trial's start (or the block's end).

        Only the main thread receives signals; elsewhere this does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._inside:
                raise KeyboardInterrupt
            self._pending = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        if self._pending:
            raise KeyboardInterrupt

    def stopped(self, optuna_study: optuna.Study, target: int) -> SearchInterrupted:
        """Fail the last trial started if it is still running; the exception to raise."""
        if self.trial is None:
            return SearchInterrupted((), target)
        number, trial_id = self.trial
        storage = optuna_study._storage
        try:
            if storage.get_trial(trial_id).state == TrialState.RUNNING:
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile (a heartbeat failed it, another worker told it)
        return SearchInterrupted((number,), target)
