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
    >>> summary = run_ray_search(study, "runs/quickstart", trials=200, workers=4)
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from exitnas.errors import ExitnasError
from exitnas.search.objective import TRIAL_ATTR, ArchitectureEvaluator, objective_values
from exitnas.search.runner import (
    SearchSummary,
    front_stats,
    load_evaluator,
    load_latency,
    open_study,
    plan_search,
    reference_mflops,
    refresh_bar,
    search_objectives,
    search_study_name,
)
from exitnas.search.samplers import create_sampler
from exitnas.search.space import suggest
from exitnas.search.storage import open_storage
from exitnas.search.workers import worker_name
from exitnas.spaces import SearchSpace, StudyConfig
from exitnas.threads import use_threads

__all__ = ["RayBackendError", "run_ray_search"]

TRIAL_NUMBER = "optuna_trial_number"  # the constant the space adds to each Ray trial's config


class RayBackendError(ExitnasError):
    """Ray Tune is not installed, or the Ray cluster cannot be reached."""


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


def run_ray_search(
    study: StudyConfig,
    run_dir: str | Path,
    *,
    trials: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    address: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> SearchSummary:
    """Add ``trials`` trials to the study's Optuna study, run as Ray Tune trials.

    Args:
        study: the study file (its ``search`` section: sampler, rules, trials, storage).
        run_dir: the run folder holding the trained supernet.
        trials: trials to add; the study's ``search.trials`` by default.
        storage: SQLAlchemy URL; the study's, else ``sqlite:///<run_dir>/study.db``.
        workers: trials running at once (and the CPUs of a local Ray instance).
        address: a running Ray cluster (``"auto"``, ``"ray://host:10001"``); by default a local
            Ray instance is started for this search and shut down afterwards.
        device: a profiled device: expected latency on it is the third objective (the study
            ``<study>@<device>``, see :func:`~exitnas.search.runner.run_search`).
        progress: tqdm bar with trials, trials/s, Pareto-front size and hypervolume; Ray's own
            tables stay quiet either way.

    Raises:
        RayBackendError: Ray Tune is not installed, or ``address`` cannot be reached.
    """
    try:
        import ray
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise RayBackendError(
            'the ray backend needs Ray Tune: pip install "exitnas[ray]"'
        ) from None
    from tqdm.auto import tqdm

    run_dir = Path(run_dir).resolve()
    url, trials, workers = plan_search(study, run_dir, trials, storage, workers)
    # fail early, here, on a missing or foreign supernet, unreadable data or a foreign study
    evaluator = load_evaluator(study, run_dir, url)
    load_latency(study, url, device)  # a device never profiled fails here, not in a worker
    optuna_study = open_study(study, url, None, evaluator.weights_hash, device)
    del evaluator
    name = search_study_name(study, device)
    metric_names, modes = search_objectives(device)
    reference = reference_mflops(study)
    before, _, _ = front_stats(optuna_study, reference)
    sampler = create_sampler(study.search.sampler, study.seed, study.search.population_size)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = _DefineByRun(study.space, tuple(study.search.rules))
    searcher = OptunaSearch(
        space=space,
        metric=list(metric_names),
        mode=[mode[:3] for mode in modes],  # "maximize" -> "max"
        sampler=sampler,
        study_name=name,
        storage=open_storage(url),
    )
    tuner = tune.Tuner(
        tune.with_parameters(_trainable, study=study, run_dir=str(run_dir), url=url, device=device),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=trials,
            max_concurrent_trials=workers,
            reuse_actors=True,  # keeps each worker's evaluator (supernet, logits) warm
        ),
        run_config=tune.RunConfig(storage_path=str(run_dir / "ray"), verbose=0),
    )
    started_ray = not ray.is_initialized()
    if started_ray:
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
        except ConnectionError as err:
            raise RayBackendError(f"cannot reach the Ray cluster at {address!r}: {err}") from None
    started = time.perf_counter()
    bar = tqdm(total=trials, desc=f"search {name} (ray)", unit="trial", disable=not progress)
    done = threading.Event()

    def watch() -> None:  # the bar follows the database, like run_search's workers
        while not done.wait(0.5):
            bar.n = min(trials, front_stats(optuna_study, reference)[0] - before)
            refresh_bar(bar, optuna_study, reference, started, study.space)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        with bar, contextlib.redirect_stdout(io.StringIO()):  # Tune's banner ignores verbose=0
            watcher.start()
            results = tuner.fit()
            done.set()
            watcher.join()
            bar.n = min(trials, front_stats(optuna_study, reference)[0] - before)
            complete, front, volume = refresh_bar(
                bar, optuna_study, reference, started, study.space
            )
    finally:
        done.set()
        running = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for number in {t.number for t in running}.intersection(space.asked):
            # asked but never told (an error, Ctrl-C): failed, as Optuna marks them
            optuna_study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if started_ray:
            ray.shutdown()
    if results.errors:
        first = str(results.errors[0]).strip().splitlines()
        raise RayBackendError(f"a Ray trial failed: {first[-1] if first else results.errors[0]!r}")
    metrics = [results[i].metrics or {} for i in range(len(results))]
    hits = sum(bool(m.get("cache_hit")) for m in metrics)
    misses = sum(not m.get("cache_hit", True) for m in metrics)
    miss_seconds = sum(float(m.get("validation_seconds", 0.0)) for m in metrics)
    return SearchSummary(
        study_name=name,
        storage=url,
        trials_added=hits + misses,
        trials_complete=complete,
        pareto_size=front,
        hypervolume=round(volume, 4),
        cache_hits=hits,
        cache_misses=misses,
        seconds=round(time.perf_counter() - started, 2),
        seconds_per_miss=round(miss_seconds / misses, 4) if misses else 0.0,
    )
