"""Running a search study: one entry point, :func:`run_search`, over pluggable backends.

The study is an ordinary Optuna study (``optuna-dashboard`` opens it) named after the study
file; running again loads it and adds trials. :func:`run_search` sets a search up once for
every backend (:class:`~exitnas.search.backends.SearchSetup`: storage, evaluator, device
latency, the opened study, the progress bar) and sums it up afterwards; the backend runs the
trials: ``"optuna"`` (:class:`~exitnas.search.optuna_backend.OptunaBackend`: this process, or
``workers`` processes sharing the study through its database and one target of completed
trials, so that exactly the requested number is added even if a worker dies; ``until`` sets
that target for workers started separately, on other hosts) or ``"ray"``
(:class:`~exitnas.search.ray_backend.RayBackend`: Ray Tune trials, on a local Ray instance or a
cluster). The study records the study file's key, the exit rules and the hash of the supernet
weights and validation split it was searched with, in one user attribute written in one step
(a worker killed while setting up a study leaves nothing half written), and refuses to
continue with different ones (:func:`~exitnas.search.studies.open_study`).

Searching for a profiled device (``device``) adds a third objective, the expected latency per
image on that device, in a study of its own named ``<study>@<device>`` (an Optuna study's
objectives are fixed); it shares the cached evaluations, so it costs no validation passes for
architectures already seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from exitnas.errors import ExitnasError
from exitnas.search.backends import SearchBackend, SearchSetup, front_stats
from exitnas.search.objective import load_evaluator, load_latency, load_validation
from exitnas.search.optuna_backend import OptunaBackend
from exitnas.search.samplers import create_sampler
from exitnas.search.studies import open_study
from exitnas.spaces import StudyConfig
from exitnas.storage.urls import resolve_storage_url
from exitnas.supernet import count_flops
from exitnas.threads import use_threads

__all__ = [
    "DEFAULT_BACKEND",
    "SearchSummary",
    "create_backend",
    "plan_search",
    "reference_mflops",
    "run_search",
]

DEFAULT_BACKEND = "optuna"  # the backend the progress bar does not name


def reference_mflops(study: StudyConfig) -> float:
    """Hypervolume reference cost: 1.5 x the costliest largest config over head types."""
    space = study.space
    worst = max(sum(count_flops(space, space.largest(head))) for head in space.head_types)
    return 1.5 * worst / 1e6


@dataclass(frozen=True)
class SearchSummary:
    """What one `exitnas search` did."""

    study_name: str
    storage: str
    trials_added: int  # completed trials the study gained while this command ran
    trials_complete: int  # completed trials in the study now (all processes)
    pareto_size: int  # distinct points on the Pareto front (front_trials)
    hypervolume: float  # accuracy x MFLOPs dominated below the reference cost
    cache_hits: int  # this command's trials whose architecture was already evaluated
    cache_misses: int  # this command's trials that ran a validation pass
    seconds: float
    seconds_per_miss: float  # mean wall-clock of one uncached architecture's validation pass
    target: int = 0  # completed trials the study was to hold
    workers_lost: int = 0  # worker processes that died (killed) instead of finishing


def plan_search(
    study: StudyConfig, run_dir: Path, trials: int | None, storage: str | None, workers: int
) -> tuple[str, int, int]:
    """Storage URL, trials to add and workers to use, checked."""
    url = resolve_storage_url(storage, study.search.storage, run_dir)
    trials = study.search.trials if trials is None else trials
    if trials < 1 or workers < 1:
        raise ExitnasError(f"trials ({trials}) and workers ({workers}) must be at least 1")
    return url, trials, min(workers, trials)


def create_backend(
    backend: str | SearchBackend = DEFAULT_BACKEND, *, address: str | None = None
) -> SearchBackend:
    """The search backend named ``backend`` (``"optuna"`` or ``"ray"``); an instance as it is.

    Ray is imported only when the ``ray`` backend is used.

    Args:
        backend: a backend's name, or a :class:`~exitnas.search.backends.SearchBackend`.
        address: with ``"ray"``: a running Ray cluster (``"auto"``, ``"ray://host:10001"``);
            by default a local Ray instance is started for the search and shut down after.

    Raises:
        ExitnasError: an unknown name, or an ``address`` for another backend.
    """
    if isinstance(backend, SearchBackend):
        if address is not None:
            raise ExitnasError("give a backend instance its Ray address: RayBackend(address)")
        return backend
    if backend == "ray":
        from exitnas.search.ray_backend import RayBackend

        return RayBackend(address)
    if backend != "optuna":
        raise ExitnasError(f"unknown search backend {backend!r}: use optuna or ray")
    if address is not None:
        raise ExitnasError("a Ray address goes with the ray backend")
    return OptunaBackend()


def _set_up(
    study: StudyConfig,
    run_dir: Path,
    backend: SearchBackend,
    trials: int | None,
    until: int | None,
    storage: str | None,
    workers: int,
    device: str | None,
    progress: bool,
) -> SearchSetup:
    """Plan the search, load this process's evaluator and open the study: everything that
    fails on a user's mistake fails here, before any worker starts."""
    run_dir = run_dir.resolve() if backend.absolute_run_dir else run_dir
    url, trials, workers = plan_search(study, run_dir, trials, storage, workers)
    use_threads(study.training.num_threads)
    splits = load_validation(study, progress)
    evaluator = load_evaluator(study, run_dir, url, splits)  # fails early on a missing supernet
    latency = load_latency(study, url, device)  # and on a device never profiled
    sampler = create_sampler(study.search.sampler, study.seed, study.search.population_size)
    heartbeat = study.search.heartbeat_seconds
    optuna_study = open_study(study, url, sampler, evaluator.weights_hash, device, heartbeat)
    reference = reference_mflops(study)
    before = front_stats(optuna_study, reference)[0]
    return SearchSetup(
        study=study,
        run_dir=run_dir,
        url=url,
        device=device,
        target=before + trials if until is None else until,
        trials=trials,
        until=until,
        before=before,
        workers=workers,
        started=time.perf_counter(),
        optuna_study=optuna_study,
        evaluator=evaluator,
        latency=latency,
        reference=reference,
    )


def run_search(
    study: StudyConfig,
    run_dir: str | Path,
    *,
    backend: str | SearchBackend = DEFAULT_BACKEND,
    trials: int | None = None,
    until: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    device: str | None = None,
    address: str | None = None,
    progress: bool = True,
) -> SearchSummary:
    """Add ``trials`` trials to the study's Optuna study (created on first use).

    Args:
        study: the study file (its ``search`` section: sampler, rules, trials, storage).
        run_dir: the run folder holding the trained supernet.
        backend: ``"optuna"``, ``"ray"`` or a :class:`~exitnas.search.backends.SearchBackend`
            (:func:`create_backend`).
        trials: trials to add; the study's ``search.trials`` by default.
        until: instead of ``trials`` (optuna backend): run until the study holds this many
            completed trials, counting those that other workers (other commands, other hosts)
            are running.
        storage: SQLAlchemy URL; the study's, else ``sqlite:///<run_dir>/study.db``.
        workers: processes (optuna) or Ray trials (ray) running trials together on the study.
        device: a device profiled in the study's storage (``exitnas profile``): expected
            latency on it becomes the third objective, in the study ``<study>@<device>``.
        address: with ``backend="ray"``: a running Ray cluster (:func:`create_backend`).
        progress: tqdm bar with trials, trials/s, Pareto-front size and hypervolume (of the
            accuracy-MFLOPs front).

    Torch's threads: ``training.num_threads``, else automatic (:mod:`exitnas.threads`; each
    of ``workers`` processes gets its share), checked again after every trial.

    Raises:
        SearchInterrupted: Ctrl-C; the completed trials are kept, the running ones failed.
        RayBackendError: Ray Tune is not installed, the cluster cannot be reached, or a Ray
            trial failed.
    """
    backend = create_backend(backend, address=address)
    backend.check(until)
    setup = _set_up(
        study, Path(run_dir), backend, trials, until, storage, workers, device, progress
    )
    name = setup.optuna_study.study_name
    desc = (
        f"search {name}" if backend.name == DEFAULT_BACKEND else f"search {name} ({backend.name})"
    )
    with tqdm(total=setup.total, desc=desc, unit="trial", disable=not progress) as bar:
        counts = backend.run(setup, bar)
        complete, front, volume = setup.follow(bar)
    return SearchSummary(
        study_name=name,
        storage=setup.url,
        trials_added=complete - setup.before,
        trials_complete=complete,
        pareto_size=front,
        hypervolume=round(volume, 4),
        cache_hits=int(counts.hits),
        cache_misses=int(counts.misses),
        seconds=round(time.perf_counter() - setup.started, 2),
        seconds_per_miss=round(counts.miss_seconds / counts.misses, 4) if counts.misses else 0.0,
        target=setup.target,
        workers_lost=counts.workers_lost,
    )
