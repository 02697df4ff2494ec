"""The search backends' interface: a search set up once, and a backend that adds its trials.

:func:`~exitnas.search.runner.run_search` does what every backend needs, once: it plans the
search, loads the evaluator (a missing supernet, a foreign study or a device never profiled
fails there, before any worker starts), opens the Optuna study and the progress bar, and hands
them to a :class:`SearchBackend` as a :class:`SearchSetup`. The backend runs the trials
(:class:`~exitnas.search.optuna_backend.OptunaBackend`: processes on the study's database;
:class:`~exitnas.search.ray_backend.RayBackend`: Ray Tune trials) and returns what only it
can count (:class:`TrialCounts`); the runner reads the Pareto front and sums the search up.

Example:
    >>> class Serial(SearchBackend):  # one objective call after another, in this process
    ...     name = "serial"
    ...
    ...     def run(self, setup, bar):
    ...         objective = SearchObjective(setup.evaluator, setup.study.search.rules)
    ...         setup.optuna_study.optimize(objective, n_trials=setup.trials)
    ...         e = setup.evaluator
    ...         return TrialCounts(e.hits, e.misses, e.miss_seconds)
    >>> run_search(study, "runs/quickstart", backend=Serial(), trials=20)
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import optuna

from exitnas.errors import ExitnasError
from exitnas.search.front import front_trials
from exitnas.search.objective import ArchitectureEvaluator, StageLatency
from exitnas.search.pareto import hypervolume_2d
from exitnas.spaces import SearchSpace, StudyConfig

__all__ = ["SearchBackend", "SearchSetup", "TrialCounts", "front_stats", "refresh_bar"]


def front_stats(
    optuna_study: optuna.Study, reference: float, space: SearchSpace | None = None
) -> tuple[int, int, float]:
    """Completed trials, distinct points on the Pareto front (:func:`front_trials`), and the
    accuracy x MFLOPs hypervolume."""
    trials = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not trials:
        return 0, 0, 0.0
    values = np.array([t.values for t in trials])
    front = len(front_trials(optuna_study, space))
    return len(trials), front, hypervolume_2d(values[:, 0], values[:, 1], reference)


def refresh_bar(
    bar: Any,
    optuna_study: optuna.Study,
    reference: float,
    started: float,
    space: SearchSpace | None = None,
) -> tuple[int, int, float]:
    """Set the bar's trials/s, front size and hypervolume; return :func:`front_stats`."""
    complete, front, volume = front_stats(optuna_study, reference, space)
    rate = bar.n / max(time.perf_counter() - started, 1e-9)
    bar.set_postfix(trials_s=f"{rate:.1f}", front=front, hv=f"{volume:.1f}")
    return complete, front, volume


@dataclass(frozen=True)
class SearchSetup:
    """A search ready to run: what :func:`~exitnas.search.runner.run_search` prepared once
    for whichever backend runs it."""

    study: StudyConfig
    run_dir: Path  # absolute where the backend asks for it (SearchBackend.absolute_run_dir)
    url: str  # the study's storage
    device: str | None  # a profiled device: latency is the third objective
    target: int  # completed trials the study is to hold when the search ends
    trials: int  # trials to add (without ``until``)
    until: int | None  # run until the study holds this many completed trials, all workers'
    before: int  # completed trials the study held when the search began
    workers: int  # processes (or Ray trials) running at once
    started: float  # time.perf_counter() as the trials began
    optuna_study: optuna.Study  # with the study's sampler and heartbeat
    evaluator: ArchitectureEvaluator  # this process's: supernet, validation split, cache
    latency: StageLatency | None  # the device's per-stage costs, None without a device
    reference: float  # hypervolume reference cost in MFLOPs

    @property
    def total(self) -> int:
        """Trials the progress bar counts to."""
        return max(0, self.target - self.before)

    def refresh(self, bar: Any) -> tuple[int, int, float]:
        """:func:`refresh_bar` for this search; return :func:`front_stats`."""
        return refresh_bar(bar, self.optuna_study, self.reference, self.started, self.study.space)

    def follow(self, bar: Any) -> tuple[int, int, float]:
        """Set the bar to the completed trials the database holds (trials run elsewhere:
        worker processes, Ray), then :meth:`refresh` it."""
        complete = front_stats(self.optuna_study, self.reference)[0]
        bar.n = min(self.total, complete - self.before)
        return self.refresh(bar)


@dataclass(frozen=True)
class TrialCounts:
    """What a backend counted of the trials it ran."""

    hits: int = 0  # trials whose architecture was already evaluated (cached)
    misses: int = 0  # trials that ran a validation pass
    miss_seconds: float = 0.0  # wall-clock of those validation passes, summed
    workers_lost: int = 0  # worker processes that died (killed) instead of finishing

    def __add__(self, other: TrialCounts) -> TrialCounts:
        return TrialCounts(
            self.hits + other.hits,
            self.misses + other.misses,
            self.miss_seconds + other.miss_seconds,
            self.workers_lost + other.workers_lost,
        )


class SearchBackend(ABC):
    """How a search runs its trials: Optuna processes, Ray Tune trials, ...

    Lifecycle, driven by :func:`~exitnas.search.runner.run_search` (one call each):

    1. :meth:`check`, before anything loads: refuse what the backend cannot run;
    2. the runner plans the search, loads the evaluator, opens the study and the progress bar
       (:class:`SearchSetup`); the run folder is made absolute if :attr:`absolute_run_dir`;
    3. :meth:`run` adds the trials to ``setup.optuna_study`` and returns its
       :class:`TrialCounts`; the runner then reads the Pareto front and returns the
       :class:`~exitnas.search.runner.SearchSummary`.
    """

    name: ClassVar[str]  # the ``backend`` name of run_search (``exitnas search --backend``)
    targets: ClassVar[bool] = True  # runs until the study holds a target (``until``)
    absolute_run_dir: ClassVar[bool] = False  # its workers run in other folders (and hosts)

    def check(self, until: int | None) -> None:
        """Raise :class:`~exitnas.errors.ExitnasError` on a search this backend cannot run
        (here: ``until`` on a backend without targets); called before anything loads."""
        if until is not None and not self.targets:
            raise ExitnasError(
                f"--until works with --backend optuna; use --trials with {self.name}"
            )

    @abstractmethod
    def run(self, setup: SearchSetup, bar: Any) -> TrialCounts:
        """Add ``setup.trials`` trials to ``setup.optuna_study`` (with ``setup.until``: run
        until it holds ``setup.target`` completed trials), keeping ``bar`` (tqdm) current.

        Raises:
            SearchInterrupted: Ctrl-C; the completed trials are kept, the running ones failed.
        """
