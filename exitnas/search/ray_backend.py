"""Running a search study through Ray Tune: the same study, sampler and objective as Optuna.

Ray Tune's ``OptunaSearch`` drives the study's Optuna sampler with :func:`suggest` as its
define-by-run space; the Optuna study lives in the same database as with the Optuna backend,
so ``exitnas export`` and ``exitnas report`` read the result unchanged. Each Ray trial is one
Optuna trial: the trainable rebuilds the sub-network and exit rule from the trial's parameters,
scores them with an :class:`ArchitectureEvaluator` kept once per Ray worker process, and reports
``accuracy`` and ``mflops``, which ``OptunaSearch`` tells the Optuna study. Each trial records
the process (``worker``: ``host:pid``) and Ray node (``ray_node``) it ran on.

On a cluster (``address``), every node needs exitnas installed, the run folder at the same path
and the database reachable (PostgreSQL; SQLite only on one host). Ray's own trial records go to
``<run_dir>/ray``.

Example:
    >>> summary = run_search(study, "runs/quickstart", backend="ray", trials=200, workers=4)
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from exitnas.errors import ExitnasError
from exitnas.search.backends import SearchBackend, SearchSetup, TrialCounts
from exitnas.search.encoding import suggest
from exitnas.search.objective import (
    TRIAL_ATTR,
    ArchitectureEvaluator,
    load_evaluator,
    load_latency,
    objective_values,
)
from exitnas.search.studies import search_objectives, search_study_name
from exitnas.search.workers import worker_name
from exitnas.spaces import SearchSpace, StudyConfig
from exitnas.storage.urls import open_storage
from exitnas.threads import use_threads

__all__ = ["RayBackend", "RayBackendError"]

TRIAL_NUMBER = "optuna_trial_number"  # the constant the space adds to each Ray trial's config


class RayBackendError(ExitnasError):
    """Ray Tune is not installed, the Ray cluster cannot be reached, or a Ray trial failed."""


class _DefineByRun:
    """``OptunaSearch``'s space: :func:`suggest` on the trial (a plain, picklable object).

    Returns the Optuna trial number as a constant of the Ray trial's config, so the trainable
    can record the exit distribution on that Optuna trial (``OptunaSearch`` keeps no public
    link from a Ray trial to its Optuna trial), and remembers the numbers it handed out.
    """

    def __init__(self, space: SearchSpace, rules: tuple[str, ...]):
        self.space, self.rules = space, rules
        self.asked: list[int] = []

    def __call__(self, trial: optuna.trial.Trial) -> dict[str, int]:
        suggest(trial, self.space, self.rules)
        self.asked.append(trial.number)
        return {TRIAL_NUMBER: trial.number}


@dataclass
class _Worker:
    """What one Ray worker process keeps between trials."""

    evaluator: ArchitectureEvaluator
    storage: optuna.storages.BaseStorage
    study_id: int
    latency: Any  # DeviceCosts of a device search, else None


_WORKERS: dict[tuple[str, str, str | None], _Worker] = {}  # per process: (run, URL, device)


def _worker(study: StudyConfig, run_dir: str, url: str, device: str | None) -> _Worker:
    key = (run_dir, url, device)
    if key not in _WORKERS:
        use_threads(study.training.num_threads)  # 0: Ray's OMP_NUM_THREADS (its CPUs per trial)
        storage = open_storage(url)
        _WORKERS[key] = _Worker(
            load_evaluator(study, Path(run_dir), url),
            storage,
            storage.get_study_id_from_name(search_study_name(study, device)),
            load_latency(study, url, device),
        )
    return _WORKERS[key]


def _trainable(
    config: dict[str, Any], *, study: StudyConfig, run_dir: str, url: str, device: str | None
) -> None:
    """One Ray trial: score the trial's config and exit rule, report the objectives."""
    import ray
    from ray import tune

    worker = _worker(study, run_dir, url, device)
    params = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
    subnet, rule = suggest(optuna.trial.FixedTrial(params), study.space, study.search.rules)
    spent = worker.evaluator.miss_seconds
    table, hit = worker.evaluator.table(subnet)
    outcome = table.score(rule)
    trial_id = worker.storage.get_trial_id_from_study_id_trial_number(
        worker.study_id, config[TRIAL_NUMBER]
    )
    worker.storage.set_trial_user_attr(  # before reporting: the trial is still running
        trial_id, TRIAL_ATTR, {"exit_fractions": list(outcome.exit_fractions), "cache_hit": hit}
    )
    worker.storage.set_trial_user_attr(trial_id, "worker", worker_name())
    worker.storage.set_trial_user_attr(
        trial_id, "ray_node", ray.get_runtime_context().get_node_id()
    )
    stage_ms = None if worker.latency is None else worker.latency.stage_ms(study.space, subnet)[0]
    values = objective_values(outcome, stage_ms)
    tune.report(
        {
            **dict(zip(search_objectives(device)[0], values, strict=True)),
            "cache_hit": hit,
            "validation_seconds": worker.evaluator.miss_seconds - spent,
        }
    )


def _import_ray() -> Any:
    """The ``ray`` module, Ray Tune checked with it."""
    try:
        import ray
        import ray.tune.search.optuna  # noqa: F401  (OptunaSearch needs Optuna and Tune)
    except ImportError:
        raise RayBackendError(
            'the ray backend needs Ray Tune: pip install "exitnas[ray]"'
        ) from None
    return ray


class RayBackend(SearchBackend):
    """Trials run as Ray Tune trials (``workers`` at once), on a local Ray instance started
    for the search and shut down afterwards, or on the running cluster at ``address``
    (``"auto"``, ``"ray://host:10001"``). Ray's own tables stay quiet.

    Raises:
        RayBackendError: Ray Tune is not installed (from :meth:`check`), ``address`` cannot
            be reached or a Ray trial failed (from :meth:`run`).
    """

    name = "ray"
    targets = False  # OptunaSearch adds a number of trials; it knows no shared target
    absolute_run_dir = True  # Ray runs each trial in a folder of its own, maybe on another host

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def check(self, until: int | None) -> None:
        super().check(until)
        _import_ray()  # fail before anything loads

    def run(self, setup: SearchSetup, bar: Any) -> TrialCounts:
        ray = _import_ray()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space = _DefineByRun(setup.study.space, tuple(setup.study.search.rules))
        tuner = _tuner(setup, space)
        started_ray = not ray.is_initialized()
        if started_ray:
            self._start(ray, setup.workers)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # Tune's banner ignores verbose=0
                with _following(setup, bar):
                    results = tuner.fit()
        finally:
            running = setup.optuna_study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
            )
            for number in {t.number for t in running}.intersection(space.asked):
                # asked but never told (an error, Ctrl-C): failed, as Optuna marks them
                setup.optuna_study.tell(
                    number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True
                )
            if started_ray:
                ray.shutdown()
        if results.errors:
            first = str(results.errors[0]).strip().splitlines()
            error = first[-1] if first else repr(results.errors[0])
            raise RayBackendError(f"a Ray trial failed: {error}")
        metrics = [results[i].metrics or {} for i in range(len(results))]
        return TrialCounts(
            hits=sum(bool(m.get("cache_hit")) for m in metrics),
            misses=sum(not m.get("cache_hit", True) for m in metrics),
            miss_seconds=sum(float(m.get("validation_seconds", 0.0)) for m in metrics),
        )

    def _start(self, ray: Any, workers: int) -> None:
        """Start Ray: connect to :attr:`address`, or a local instance of ``workers`` CPUs."""
        try:
            if self.address:
                ray.init(address=self.address, logging_level=logging.WARNING)
            else:
                ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
        except ConnectionError as err:
            raise RayBackendError(
                f"cannot reach the Ray cluster at {self.address!r}: {err}"
            ) from None


def _tuner(setup: SearchSetup, space: _DefineByRun) -> Any:
    """Ray Tune's tuner of the search: ``OptunaSearch`` on the study's sampler and storage,
    ``setup.workers`` trials of :func:`_trainable` at once."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    metric_names, modes = search_objectives(setup.device)
    searcher = OptunaSearch(
        space=space,
        metric=list(metric_names),
        mode=[mode[:3] for mode in modes],  # "maximize" -> "max"
        sampler=setup.optuna_study.sampler,
        study_name=setup.optuna_study.study_name,
        storage=open_storage(setup.url),
    )
    trainable = tune.with_parameters(
        _trainable,
        study=setup.study,
        run_dir=str(setup.run_dir),
        url=setup.url,
        device=setup.device,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=setup.trials,
            max_concurrent_trials=setup.workers,
            reuse_actors=True,  # keeps each worker's evaluator (supernet, logits) warm
        ),
        run_config=tune.RunConfig(storage_path=str(setup.run_dir / "ray"), verbose=0),
    )


@contextlib.contextmanager
def _following(setup: SearchSetup, bar: Any) -> Iterator[None]:
    """Keep ``bar`` following the database (:meth:`SearchSetup.follow`) inside the block."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            setup.follow(bar)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
