"""Running a search study: Optuna in one or several processes on one database.

The study is an ordinary Optuna study (``optuna-dashboard`` opens it) named after the study
file; running again loads it and adds trials. ``workers`` processes share it through the
database and one target of completed trials (:class:`~exitnas.search.workers.StudyTarget`), so
exactly the requested number is added even if a worker dies; ``until`` sets that target for
workers started separately (other hosts). Running trials send Optuna heartbeats: the trial of
a killed worker is marked failed and queued again for the others. The
study records the study file's key, the exit rules and the hash of the supernet weights and
validation split it was searched with, in one user attribute written in one step (a worker
killed while setting up a study leaves nothing half written), and refuses to continue with
different ones.

Searching for a profiled device (``device``) adds a third objective, the expected latency per
image on that device, in a study of its own named ``<study>@<device>`` (an Optuna study's
objectives are fixed); it shares the cached evaluations, so it costs no validation passes for
architectures already seen.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from tqdm.auto import tqdm

from exitnas.data import DataSplits, load_splits
from exitnas.errors import CheckpointError, ExitnasError
from exitnas.faults import kill_point
from exitnas.search.export import front_trials
from exitnas.search.interrupts import Interrupts, SearchInterrupted, TrialInterrupted
from exitnas.search.objective import ArchitectureEvaluator, SearchObjective, file_sha256
from exitnas.search.pareto import hypervolume_2d
from exitnas.search.samplers import create_sampler
from exitnas.search.seeds import seed_trials
from exitnas.search.storage import open_storage, open_store, resolve_storage_url
from exitnas.search.workers import StudyTarget, trial_told
from exitnas.spaces import SearchSpace, StudyConfig
from exitnas.supernet import SuperViT, count_flops, load_supernet
from exitnas.supernet.train import WEIGHTS
from exitnas.threads import holding, register, use_threads

__all__ = [
    "DIRECTIONS",
    "IDENTITY_ATTR",
    "LATENCY_OBJECTIVE",
    "OBJECTIVES",
    "SearchInterrupted",
    "SearchSummary",
    "evaluation_key",
    "front_stats",
    "completed_trials",
    "database_exists",
    "load_evaluator",
    "load_latency",
    "load_searched_study",
    "load_searched",
    "load_validation",
    "open_run",
    "open_study",
    "plan_search",
    "reference_mflops",
    "run_search",
    "search_objectives",
    "search_study_name",
    "study_identity",
    "study_names",
]

OBJECTIVES = ("accuracy", "mflops")
DIRECTIONS: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"]
LATENCY_OBJECTIVE = "latency_ms"  # the third objective of a device search (minimised)


def search_study_name(study: StudyConfig, device: str | None = None) -> str:
    """Name of the Optuna study: the study's, or ``<study>@<device>`` for a device search."""
    return study.name if device is None else f"{study.name}@{device}"


def search_objectives(
    device: str | None = None,
) -> tuple[tuple[str, ...], list[Literal["maximize", "minimize"]]]:
    """Metric names and directions of a search (three with a device)."""
    if device is None:
        return OBJECTIVES, list(DIRECTIONS)
    return (*OBJECTIVES, LATENCY_OBJECTIVE), [*DIRECTIONS, "minimize"]


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


def load_validation(study: StudyConfig, progress: bool = True) -> DataSplits:
    """The study's data splits (search, export and report use only ``val``); ``progress``:
    a bar while images are decoded."""
    data = study.data
    return load_splits(
        data.dataset,
        data.path,
        data.image_size,
        data.val_fraction,
        study.seed,
        download=data.download,
        in_chans=study.space.in_chans,
        num_classes=study.space.num_classes,
        progress=progress,
    )


def evaluation_key(run_dir: Path, splits: DataSplits) -> str:
    """Hash of the supernet weights and the validation split: the cache's second key."""
    digest = hashlib.sha256(file_sha256(run_dir / WEIGHTS).encode())
    digest.update(splits.val.images.numpy().tobytes())
    digest.update(splits.val.labels.numpy().tobytes())
    return digest.hexdigest()


def load_evaluator(
    study: StudyConfig, run_dir: Path, url: str, splits: DataSplits | None = None
) -> ArchitectureEvaluator:
    """Supernet, validation split and cache of one process."""
    model, _ = load_supernet(run_dir, study)
    splits = splits or load_validation(study)
    return ArchitectureEvaluator(
        model,
        splits.val.images,
        splits.val.labels,
        splits.mean,
        splits.std,
        open_store(url),
        evaluation_key(run_dir, splits),
    )


IDENTITY_ATTR = "exitnas_identity"  # the study's identity: one user attribute, written last
# before IDENTITY_ATTR, a study's identity was five attributes written one by one
_LEGACY_ATTRS = {
    "study_key": "exitnas_study_key",
    "study": "exitnas_study",
    "rules": "rules",
    "evaluation_key": "evaluation_key",
    "device": "device",
}


def study_identity(optuna_study: optuna.Study) -> dict[str, Any] | None:
    """What a searched study was set up with (study key, study file, exit rules, evaluation
    key, device), or None when its set-up never completed.

    A study set up before the identity was one attribute gives its separate attributes (the
    fields its set-up reached).
    """
    attrs = optuna_study.user_attrs
    if IDENTITY_ATTR in attrs:
        return dict(attrs[IDENTITY_ATTR])
    if _LEGACY_ATTRS["study_key"] in attrs:
        return {field: attrs[name] for field, name in _LEGACY_ATTRS.items() if name in attrs}
    return None


def _identity(study: StudyConfig, key: str | None, device: str | None) -> dict[str, Any]:
    return {
        "study_key": study.key(),
        "study": json.dumps(study.to_dict()),
        "rules": list(study.search.rules),
        "evaluation_key": key,
        "device": device,
    }


def _check_identity(
    optuna_study: optuna.Study, study: StudyConfig, url: str, key: str | None, rules: bool
) -> None:
    identity = study_identity(optuna_study)
    where = f"study {optuna_study.study_name!r} in {url}"
    if identity is None:
        raise ExitnasError(
            f"{where} was never set up (its first search was cut short): run exitnas search"
        )
    if identity.get("study_key") != study.key():
        raise CheckpointError(
            f"{where} was searched for another study file (key "
            f"{identity.get('study_key')}); use another --storage"
        )
    if rules and list(identity.get("rules", [])) != list(study.search.rules):
        raise CheckpointError(
            f"{where} was searched with exit rules {identity.get('rules')}; the study file now "
            f"says {list(study.search.rules)}: restore them or use another --storage"
        )
    if key is not None and identity.get("evaluation_key") != key:
        raise CheckpointError(
            f"{where} was searched with other supernet weights or another validation split "
            "(the supernet was retrained or the data changed): use another --storage"
        )


def open_study(
    study: StudyConfig,
    url: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    key: str | None = None,
    device: str | None = None,
    heartbeat: int | None = None,
) -> optuna.Study:
    """Create or load the Optuna study of ``study`` in ``url`` and check it belongs to it.

    A new study queues its seed trials (:func:`~exitnas.search.seeds.seed_trials`: the plain
    ViT's config and the presets) first; the sampler draws the trials after them.

    The study's identity (:func:`study_identity`) is one user attribute, written in one step
    after everything else the set-up writes, and the only one checked: a worker killed during
    the set-up leaves a study without it, which the next worker sets up (never refuses), and a
    worker opening the study while another sets it up checks the finished identity. Workers
    with the same study file, rules and evaluation key write the same identity; two workers
    that differ, opening a fresh study at the same instant, can both pass (Optuna's attributes
    have no compare-and-set), while any later one is refused.

    Args:
        key: the :func:`evaluation_key` the study must have been searched with.
        device: a profiled device: the three-objective study ``<study>@<device>``.
        heartbeat: seconds between running trials' heartbeats (to run trials on it).
    """
    names, directions = search_objectives(device)
    optuna_study = optuna.create_study(
        study_name=search_study_name(study, device),
        storage=open_storage(url, heartbeat),
        sampler=sampler,
        directions=directions,
        load_if_exists=True,
    )
    kill_point("study-created")
    if IDENTITY_ATTR not in optuna_study.user_attrs:  # new, or its set-up was cut short
        legacy = study_identity(optuna_study) or {}  # an older study's separate attributes
        with warnings.catch_warnings():  # experimental in Optuna; names the dashboard's axes
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna_study.set_metric_names(list(names))
        for design, params in seed_trials(study):  # again after a cut-short set-up: no repeats
            optuna_study.enqueue_trial(params, user_attrs={"seed": design}, skip_if_exists=True)
        kill_point("identity-half-written")
        identity = {**_identity(study, key, device), **legacy}
        optuna_study.set_user_attr(IDENTITY_ATTR, identity)  # one write: the set-up is complete
    _check_identity(optuna_study, study, url, key, rules=True)
    return optuna_study


def load_searched_study(
    study: StudyConfig, url: str, key: str | None = None, device: str | None = None
) -> optuna.Study:
    """Load (never create) the searched study of ``study`` from ``url`` and check it.

    The exit rules are not compared: every trial records its rule, so reading a study back
    does not depend on the study file's ``search`` section.

    Args:
        device: load the device search ``<study>@<device>`` instead.
    """
    name = search_study_name(study, device)
    hint = "exitnas search" + (f" --device {device}" if device else "")
    if not database_exists(url):
        raise ExitnasError(f"no study named {name!r} in {url}; run {hint}")
    try:
        optuna_study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise ExitnasError(f"no study named {name!r} in {url}; run {hint}") from None
    _check_identity(optuna_study, study, url, key, rules=False)
    return optuna_study


def open_run(
    run_dir: Path, storage: str | None = None, data_path: str | Path | None = None
) -> tuple[SuperViT, StudyConfig, str]:
    """A trained run folder: its supernet, its study and the URL of its searched study.

    Args:
        run_dir: folder written by ``exitnas train``.
        storage: ``--storage``; else the study's ``search.storage``, else the run's SQLite file.
        data_path: ``--data``: where the study's data lives now.
    """
    model, study = load_supernet(run_dir)
    if data_path is not None:
        study = replace(study, data=replace(study.data, path=str(data_path)))
    return model, study, resolve_storage_url(storage, study.search.storage, run_dir)


def load_searched(
    study: StudyConfig,
    run_dir: Path,
    url: str,
    device: str | None = None,
    progress: bool = True,
) -> tuple[DataSplits, optuna.Study]:
    """The data splits and the searched study, checked to be this supernet's and split's.

    Args:
        device: prefer the device search ``<study>@<device>`` when there is one (its front
            includes latency); fall back to the study's own search.
        progress: a bar while images are decoded (a cold decoded-image cache).
    """
    splits = load_validation(study, progress)
    key = evaluation_key(run_dir, splits)
    if device is not None:
        if search_study_name(study, device) in study_names(url):
            return splits, load_searched_study(study, url, key, device)
    return splits, load_searched_study(study, url, key)


def database_exists(url: str) -> bool:
    """False for an SQLite URL whose file is missing (opening it would create it)."""
    return not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).is_file()


def study_names(url: str) -> list[str]:
    """Optuna studies in ``url`` (none when its SQLite file does not exist)."""
    return optuna.get_all_study_names(open_storage(url)) if database_exists(url) else []


def completed_trials(study: StudyConfig, url: str, device: str | None = None) -> int:
    """Completed trials of the study's search in ``url`` (0 when it was never searched)."""
    name = search_study_name(study, device)
    if name not in study_names(url):
        return 0
    loaded = optuna.load_study(study_name=name, storage=open_storage(url))
    return len(loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def load_latency(study: StudyConfig, url: str, device: str | None):
    """The stored profile of ``device`` as per-stage costs (None without a device)."""
    if device is None:
        return None
    from exitnas.policies.costs import load_device_costs

    return load_device_costs(open_store(url), study, device, url)


def plan_search(
    study: StudyConfig, run_dir: Path, trials: int | None, storage: str | None, workers: int
) -> tuple[str, int, int]:
    """Storage URL, trials to add and workers to use, checked."""
    url = resolve_storage_url(storage, study.search.storage, run_dir)
    trials = study.search.trials if trials is None else trials
    if trials < 1 or workers < 1:
        raise ExitnasError(f"trials ({trials}) and workers ({workers}) must be at least 1")
    return url, trials, min(workers, trials)


def _optimize(
    study_dict: dict, run_dir: str, url: str, target: int, threads: int, device: str | None
) -> tuple[int, int, float]:
    """One worker process: run trials until the study holds ``target`` completed ones; return
    cache hits, misses and miss seconds.

    Its torch threads: ``threads``, or with 0 automatic: its parent's share of the CPUs
    divided among the parent's workers (:mod:`exitnas.threads`), checked after every trial.
    """
    study = StudyConfig.from_dict(study_dict)
    register(0)  # the parent holds this worker's share
    use_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    evaluator = load_evaluator(study, Path(run_dir), url)
    sampler = create_sampler(study.search.sampler, study.seed, study.search.population_size)
    optuna_study = open_study(
        study, url, sampler, evaluator.weights_hash, device, study.search.heartbeat_seconds
    )
    objective = SearchObjective(evaluator, study.search.rules, load_latency(study, url, device))
    interrupts = Interrupts()
    try:
        StudyTarget(optuna_study, target).run(
            objective, callbacks=[lambda s, t: use_threads(threads)], interrupts=interrupts
        )
    except (KeyboardInterrupt, TrialInterrupted):
        raise interrupts.stopped(optuna_study, target) from None
    return evaluator.hits, evaluator.misses, evaluator.miss_seconds


def _worker(connection: Any, *args: Any) -> None:
    """Process entry point: :func:`_optimize`, its result, user error or interruption sent
    back."""
    try:
        connection.send(("ok", _optimize(*args)))
    except ExitnasError as err:
        connection.send(("error", str(err)))
    except SearchInterrupted as stop:
        connection.send(("interrupted", stop.trials))
    except KeyboardInterrupt:  # before its first trial
        connection.send(("interrupted", ()))
    finally:
        connection.close()


def _run_workers(
    study: StudyConfig,
    run_dir: Path,
    url: str,
    target: int,
    device: str | None,
    workers: int,
    refresh: Callable[[], None],
) -> tuple[list[tuple[int, int, float]], int]:
    """Run ``workers`` processes (:func:`_worker`) until the study holds ``target`` completed
    trials, calling ``refresh`` twice a second; return their results and how many died.

    Raises:
        SearchInterrupted: Ctrl-C here; the workers (which got it too, from the terminal, or
            from here) failed their running trials and stopped.
        ExitnasError: a worker's user error.
    """
    context = multiprocessing.get_context("spawn")
    processes, pipes = [], []
    interrupted = False
    threads = study.training.num_threads  # 0: each worker its share (exitnas.threads)
    with holding(workers):  # this process holds its workers' shares of the CPUs
        for _ in range(workers):
            receive, send = context.Pipe(duplex=False)
            args = (send, study.to_dict(), str(run_dir), url, target, threads, device)
            process = context.Process(target=_worker, args=args, daemon=True)
            process.start()
            send.close()
            processes.append(process)
            pipes.append(receive)
        try:
            while any(p.is_alive() for p in processes):
                time.sleep(0.5)
                refresh()
        except KeyboardInterrupt:
            interrupted = True
            _stop_workers(processes)
        results, errors, stopped, lost = [], [], [], 0
        for process, pipe in zip(processes, pipes, strict=True):
            process.join()
            message = pipe.recv() if pipe.poll() else None
            if message is None:  # killed, or crashed with a traceback of its own
                lost += 1
            elif message[0] == "ok":
                results.append(message[1])
            elif message[0] == "interrupted":  # with this process, or alone (then the others
                stopped.extend(message[1])  # finish the target without it)
                if not interrupted:
                    lost += 1
            else:
                errors.append(message[1])
    if interrupted:
        raise SearchInterrupted(stopped, target)
    if errors:
        raise ExitnasError(errors[0])
    return results, lost


def _stop_workers(processes: list[Any], grace: float = 2.0, patience: float = 20.0) -> None:
    """After Ctrl-C: give the workers ``grace`` seconds to stop on the terminal's SIGINT, send
    SIGINT to those still running (Ctrl-C reached only this process), and terminate any left
    after ``patience`` seconds more (their running trials fail at their next heartbeat)."""
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + patience
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()


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
):
    """Set the bar's trials/s, front size and hypervolume; return :func:`front_stats`."""
    complete, front, volume = front_stats(optuna_study, reference, space)
    rate = bar.n / max(time.perf_counter() - started, 1e-9)
    bar.set_postfix(trials_s=f"{rate:.1f}", front=front, hv=f"{volume:.1f}")
    return complete, front, volume


def run_search(
    study: StudyConfig,
    run_dir: str | Path,
    *,
    trials: int | None = None,
    until: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    device: str | None = None,
    progress: bool = True,
) -> SearchSummary:
    """Add ``trials`` trials to the study's Optuna study (created on first use).

    Args:
        study: the study file (its ``search`` section: sampler, rules, trials, storage).
        run_dir: the run folder holding the trained supernet.
        trials: trials to add; the study's ``search.trials`` by default.
        until: instead of ``trials``: run until the study holds this many completed trials,
            counting those that other workers (other commands, other hosts) are running.
        storage: SQLAlchemy URL; the study's, else ``sqlite:///<run_dir>/study.db``.
        workers: processes running trials together on the same storage.
        device: a device profiled in the study's storage (``exitnas profile``): expected
            latency on it becomes the third objective, in the study ``<study>@<device>``.
        progress: tqdm bar with trials, trials/s, Pareto-front size and hypervolume (of the
            accuracy-MFLOPs front).

    Torch's threads: ``training.num_threads``, else automatic (:mod:`exitnas.threads`; each
    of ``workers`` processes gets its share), checked again after every trial.

    Raises:
        SearchInterrupted: Ctrl-C; the completed trials are kept, the running ones failed.
    """
    run_dir = Path(run_dir)
    url, trials, workers = plan_search(study, run_dir, trials, storage, workers)
    requested = study.training.num_threads
    use_threads(requested)
    splits = load_validation(study, progress)
    evaluator = load_evaluator(study, run_dir, url, splits)  # fails early on a missing supernet
    latency = load_latency(study, url, device)  # and on a device never profiled
    sampler = create_sampler(study.search.sampler, study.seed, study.search.population_size)
    heartbeat = study.search.heartbeat_seconds
    optuna_study = open_study(study, url, sampler, evaluator.weights_hash, device, heartbeat)
    reference = reference_mflops(study)
    before = front_stats(optuna_study, reference)[0]
    target = before + trials if until is None else until
    started = time.perf_counter()
    name = search_study_name(study, device)
    total = max(0, target - before)
    bar = tqdm(total=total, desc=f"search {name}", unit="trial", disable=not progress)
    lost = 0
    with bar:
        if workers == 1:
            last = [0.0]

            def tick(s: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                bar.update(trial.state == optuna.trial.TrialState.COMPLETE)
                use_threads(requested)  # an automatic count follows the other processes
                if time.perf_counter() - last[0] > 1.0:
                    last[0] = time.perf_counter()
                    refresh_bar(bar, s, reference, started, study.space)

            objective = SearchObjective(evaluator, study.search.rules, latency)
            interrupts = Interrupts()
            try:
                if until is None:  # alone on the study: Optuna's own loop
                    with interrupts.deferring():
                        optuna_study.optimize(
                            interrupts.wrap(objective),
                            n_trials=trials,
                            callbacks=[tick, trial_told],
                        )
                else:
                    StudyTarget(optuna_study, target).run(
                        objective, callbacks=[tick], interrupts=interrupts
                    )
            except (KeyboardInterrupt, TrialInterrupted):
                raise interrupts.stopped(optuna_study, target) from None
            results = [(evaluator.hits, evaluator.misses, evaluator.miss_seconds)]
        else:

            def refresh() -> None:
                bar.n = min(total, front_stats(optuna_study, reference)[0] - before)
                refresh_bar(bar, optuna_study, reference, started, study.space)

            results, lost = _run_workers(study, run_dir, url, target, device, workers, refresh)
        complete, front, volume = refresh_bar(bar, optuna_study, reference, started, study.space)
    hits, misses, miss_seconds = (sum(r[i] for r in results) for i in range(3))
    return SearchSummary(
        study_name=name,
        storage=url,
        trials_added=complete - before,
        trials_complete=complete,
        pareto_size=front,
        hypervolume=round(volume, 4),
        cache_hits=int(hits),
        cache_misses=int(misses),
        seconds=round(time.perf_counter() - started, 2),
        seconds_per_miss=round(miss_seconds / misses, 4) if misses else 0.0,
        target=target,
        workers_lost=lost,
    )
