"""Running a search study: Optuna in one or several processes on one database.

The study is an ordinary Optuna study (``optuna-dashboard`` opens it) named after the study
file; running again loads it and adds trials. ``workers`` processes share it through the
database; each runs its share of the requested trials, so exactly that many are added.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import torch
from tqdm.auto import tqdm

from exitnas.data import load_splits
from exitnas.errors import CheckpointError
from exitnas.search.objective import ArchitectureEvaluator, SearchObjective, file_sha256
from exitnas.search.pareto import hypervolume_2d, pareto_mask
from exitnas.search.storage import default_storage_url, open_storage, open_store
from exitnas.spaces import StudyConfig
from exitnas.supernet import count_flops, load_supernet
from exitnas.supernet.train import WEIGHTS

__all__ = [
    "DIRECTIONS",
    "OBJECTIVES",
    "SearchSummary",
    "create_sampler",
    "load_evaluator",
    "open_study",
    "reference_mflops",
    "run_search",
]

OBJECTIVES = ("accuracy", "mflops")
DIRECTIONS: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"]


def create_sampler(name: str, seed: int, population_size: int = 50) -> optuna.samplers.BaseSampler:
    """``nsga2`` (default), ``tpe`` (multi-objective) or ``random``, seeded."""
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; allowed: nsga2, tpe, random")


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
    trials_added: int
    trials_complete: int  # completed trials in the study now
    pareto_size: int
    hypervolume: float  # accuracy x MFLOPs dominated below the reference cost
    cache_hits: int  # this run's trials whose architecture was already evaluated
    cache_misses: int  # this run's trials that ran a validation pass
    seconds: float
    seconds_per_miss: float  # mean wall-clock of one uncached architecture's validation pass


def load_evaluator(study: StudyConfig, run_dir: Path, url: str) -> ArchitectureEvaluator:
    """Supernet, validation split and cache of one process."""
    model, _ = load_supernet(run_dir, study)
    data = study.data
    splits = load_splits(data.dataset, data.path, data.image_size, data.val_fraction, study.seed)
    return ArchitectureEvaluator(
        model,
        splits.val.images,
        splits.val.labels,
        splits.mean,
        splits.std,
        open_store(url),
        file_sha256(run_dir / WEIGHTS),
    )


def open_study(
    study: StudyConfig,
    url: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    weights_hash: str | None = None,
) -> optuna.Study:
    """Create or load the Optuna study of ``study`` in ``url`` and check it belongs to it."""
    optuna_study = optuna.create_study(
        study_name=study.name,
        storage=open_storage(url),
        sampler=sampler,
        directions=list(DIRECTIONS),
        load_if_exists=True,
    )
    attrs = optuna_study.user_attrs
    if "exitnas_study_key" not in attrs:
        optuna_study.set_user_attr("exitnas_study_key", study.key())
        optuna_study.set_user_attr("exitnas_study", json.dumps(study.to_dict()))
        optuna_study.set_user_attr("objectives", list(OBJECTIVES))
        if weights_hash is not None:
            optuna_study.set_user_attr("weights_hash", weights_hash)
    elif attrs["exitnas_study_key"] != study.key():
        raise CheckpointError(
            f"study {study.name!r} in {url} was searched for another study file (key "
            f"{attrs['exitnas_study_key']}); use another --storage"
        )
    elif weights_hash is not None and attrs.get("weights_hash") != weights_hash:
        raise CheckpointError(
            f"study {study.name!r} in {url} was searched with other supernet weights; the "
            "supernet was retrained since: use another --storage"
        )
    return optuna_study


def _optimize(
    study_dict: dict, run_dir: str, url: str, trials: int, seed: int, threads: int
) -> tuple[int, int, float]:
    """One worker process: run ``trials`` trials; return cache hits, misses, miss seconds."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = StudyConfig.from_dict(study_dict)
    evaluator = load_evaluator(study, Path(run_dir), url)
    sampler = create_sampler(study.search.sampler, seed, study.search.population_size)
    optuna_study = open_study(study, url, sampler, evaluator.weights_hash)
    optuna_study.optimize(SearchObjective(evaluator, study.search.rules), n_trials=trials)
    return evaluator.hits, evaluator.misses, evaluator.miss_seconds


def _front_stats(optuna_study: optuna.Study, reference: float) -> tuple[int, int, float]:
    trials = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not trials:
        return 0, 0, 0.0
    values = np.array([t.values for t in trials])
    front = int(pareto_mask(values[:, 0], values[:, 1]).sum())
    return len(trials), front, hypervolume_2d(values[:, 0], values[:, 1], reference)


def run_search(
    study: StudyConfig,
    run_dir: str | Path,
    *,
    trials: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> SearchSummary:
    """Add ``trials`` trials to the study's Optuna study (created on first use).

    Args:
        study: the study file (its ``search`` section: sampler, rules, trials, storage).
        run_dir: the run folder holding the trained supernet.
        trials: trials to add; the study's ``search.trials`` by default.
        storage: SQLAlchemy URL; the study's, else ``sqlite:///<run_dir>/study.db``.
        workers: processes running trials together on the same storage.
        progress: tqdm bar with trials, trials/s, Pareto-front size and hypervolume.
    """
    run_dir = Path(run_dir)
    url = storage or study.search.storage or default_storage_url(run_dir)
    trials = trials or study.search.trials
    workers = max(1, min(workers, trials))
    weights_hash = file_sha256(run_dir / WEIGHTS) if (run_dir / WEIGHTS).is_file() else None
    load_supernet(run_dir, study)  # fail early, in the parent, on a missing or foreign supernet
    optuna_study = open_study(study, url, None, weights_hash)
    reference = reference_mflops(study)
    before, _, _ = _front_stats(optuna_study, reference)
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    seeds = [study.seed * 1000 + before + i for i in range(workers)]  # new streams on resume
    started = time.perf_counter()
    bar = tqdm(total=trials, desc=f"search {study.name}", unit="trial", disable=not progress)
    hits = misses = 0
    miss_seconds = 0.0
    with bar:
        if workers == 1:
            results = [_optimize_here(study, run_dir, url, trials, seeds[0], bar, reference)]
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [
                    pool.submit(_optimize, study.to_dict(), str(run_dir), url, n, seed, threads)
                    for n, seed in zip(shares, seeds, strict=True)
                ]
                while not all(f.done() for f in futures):
                    time.sleep(0.5)
                    _refresh(bar, optuna_study, reference, before, started)
                results = [f.result() for f in futures]
        for h, m, s in results:
            hits, misses, miss_seconds = hits + h, misses + m, miss_seconds + s
        complete, front, volume = _refresh(bar, optuna_study, reference, before, started)
    return SearchSummary(
        study_name=study.name,
        storage=url,
        trials_added=complete - before,
        trials_complete=complete,
        pareto_size=front,
        hypervolume=round(volume, 4),
        cache_hits=hits,
        cache_misses=misses,
        seconds=round(time.perf_counter() - started, 2),
        seconds_per_miss=round(miss_seconds / misses, 4) if misses else 0.0,
    )


def _refresh(bar: Any, optuna_study: optuna.Study, reference: float, before: int, started: float):
    complete, front, volume = _front_stats(optuna_study, reference)
    bar.n = complete - before
    rate = bar.n / max(time.perf_counter() - started, 1e-9)
    bar.set_postfix(trials_s=f"{rate:.1f}", front=front, hv=f"{volume:.1f}")
    return complete, front, volume


def _optimize_here(
    study: StudyConfig, run_dir: Path, url: str, trials: int, seed: int, bar: Any, reference: float
) -> tuple[int, int, float]:
    """The single-worker case, in this process, refreshing the bar about once a second."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    evaluator = load_evaluator(study, run_dir, url)
    sampler = create_sampler(study.search.sampler, seed, study.search.population_size)
    optuna_study = open_study(study, url, sampler, evaluator.weights_hash)
    before = len(optuna_study.get_trials(deepcopy=False))
    started, last = time.perf_counter(), 0.0

    def callback(s: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal last
        bar.update(1)
        if time.perf_counter() - last > 1.0:
            last = time.perf_counter()
            complete, front, volume = _front_stats(s, reference)
            rate = bar.n / max(last - started, 1e-9)
            bar.set_postfix(trials_s=f"{rate:.1f}", front=front, hv=f"{volume:.1f}")

    del before
    optuna_study.optimize(
        SearchObjective(evaluator, study.search.rules), n_trials=trials, callbacks=[callback]
    )
    return evaluator.hits, evaluator.misses, evaluator.miss_seconds
