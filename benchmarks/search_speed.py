"""Search speed: a trial on a cached architecture against a bare Optuna trial.

Both studies use the same sampler (NSGA-II, same seed and population) and the same storage
(SQLite through SQLAlchemy, as `exitnas search` uses it). The bare objective asks the trial for
the same parameters (the define-by-run space) and returns constants: it is Optuna's own cost
of a trial of this study. The exitnas objective additionally looks the architecture up in the
evaluation cache and scores the exit rule on the cached logits. The cache is filled first by
a run with the same seed, so every architecture of the timed exitnas run is cached (database
and memory as in a long study). Rounds alternate; medians are reported.

    python benchmarks/search_speed.py studies/quickstart.yaml --run runs/quickstart --trials 200
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from exitnas.search.encoding import suggest
from exitnas.search.objective import SearchObjective, load_evaluator
from exitnas.search.samplers import create_sampler
from exitnas.search.studies import DIRECTIONS
from exitnas.spaces import load_study
from exitnas.storage.urls import default_storage_url, open_storage


def timed_study(name, url, objective, sampler_args, trials, heartbeat=None) -> float:
    """Seconds per trial of a fresh study (running trials send heartbeats if ``heartbeat``)."""
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(url, heartbeat),
        sampler=create_sampler(*sampler_args),
        directions=DIRECTIONS,
    )
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return (time.perf_counter() - start) / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--run", required=True, help="run folder with the trained supernet")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(args.study)
    sampler_args = ("nsga2", 0, study.search.population_size)
    with tempfile.TemporaryDirectory() as tmp:
        url = default_storage_url(tmp)
        evaluator = load_evaluator(study, Path(args.run), url)
        objective = SearchObjective(evaluator, study.search.rules)

        def bare(trial):
            suggest(trial, study.space, study.search.rules)
            return 0.5, 1.0

        fill = timed_study("fill", url, objective, sampler_args, args.trials)
        misses, miss_seconds = evaluator.misses, evaluator.miss_seconds
        ours, plain, beating = [], [], []
        heartbeat = study.search.heartbeat_seconds
        for i in range(args.rounds):
            plain.append(timed_study(f"bare{i}", url, bare, sampler_args, args.trials))
            evaluator.hits = evaluator.misses = 0
            ours.append(timed_study(f"cached{i}", url, objective, sampler_args, args.trials))
            beating.append(
                timed_study(f"hb{i}", url, objective, sampler_args, args.trials, heartbeat)
            )
            assert evaluator.misses == 0, "the timed run met an uncached architecture"
        bare_s, ours_s = statistics.median(plain), statistics.median(ours)
        beat_s = statistics.median(beating)
        print(f"study: {args.study}, {args.trials} trials x {args.rounds} rounds, NSGA-II, {url}")
        print(f"bare Optuna trial (same sampler, storage, params) : {bare_s * 1e3:7.2f} ms")
        print(f"exitnas trial on a cached architecture            : {ours_s * 1e3:7.2f} ms")
        print(f"ratio                                             : {ours_s / bare_s:.3f}")
        print(f"the same with heartbeats (as exitnas search runs) : {beat_s * 1e3:7.2f} ms")
        print(f"ratio with heartbeats                             : {beat_s / bare_s:.3f}")
        print(f"filling run: {fill * 1e3:.2f} ms/trial, {misses} uncached architectures, ")
        print(
            f"  {miss_seconds / max(misses, 1):.3f} s per uncached architecture (validation pass)"
        )


if __name__ == "__main__":
    main()
