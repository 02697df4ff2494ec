"""Load: N search workers on one study database for a fixed time; errors and memory.

Copies a searched run's database (study + evaluation cache) to a scratch folder and runs
``--workers`` processes on it for ``--minutes``, each an ordinary exitnas search worker (the
study's sampler, heartbeats, the shared evaluation cache) with one thread. Every worker samples
its resident memory (VmRSS) every ``--every`` seconds. Reported: trials completed, failed
trials and worker exceptions, trials per second per minute (does the storage slow down as the
study grows), and each worker's memory after the first minute against its peak afterwards.

    python benchmarks/storage_load.py --run runs/quickstart --workers 8 --minutes 10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import optuna
import torch

from exitnas.runs import Run
from exitnas.search.objective import SearchObjective
from exitnas.search.samplers import create_sampler
from exitnas.search.studies import open_study


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(run_dir: str, url: str, seconds: float, every: float, out: str) -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    record: dict = {"memory": [], "error": None, "trials": 0}
    try:
        run = Run.open(run_dir, url)
        study, evaluator = run.study, run.evaluator
        sampler = create_sampler(study.search.sampler, study.seed, study.search.population_size)
        optuna_study = open_study(
            study, url, sampler, run.evaluation_key, None, study.search.heartbeat_seconds
        )
        objective = SearchObjective(evaluator, study.search.rules)
        started = time.monotonic()
        record["memory"].append((0.0, rss_mb()))
        while (elapsed := time.monotonic() - started) < seconds:
            optuna_study.optimize(objective, timeout=min(every, seconds - elapsed))
            record["memory"].append((time.monotonic() - started, rss_mb()))
        record["trials"] = evaluator.hits + evaluator.misses
    except Exception:  # reported by the parent
        record["error"] = traceback.format_exc(limit=3)
    Path(out).write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "study.db"
        shutil.copy(args.run / "study.db", database)
        url = f"sqlite:///{database}"
        study = Run.open(args.run).study
        before = len(optuna.load_study(study_name=study.name, storage=url).trials)
        context = multiprocessing.get_context("spawn")
        outs = [Path(tmp) / f"worker{i}.json" for i in range(args.workers)]
        seconds = args.minutes * 60
        processes = [
            context.Process(target=worker, args=(str(args.run), url, seconds, args.every, str(out)))
            for out in outs
        ]
        started = time.monotonic()
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        wall = time.monotonic() - started
        records = [json.loads(out.read_text()) for out in outs if out.exists()]
        trials = optuna.load_study(study_name=study.name, storage=url).trials[before:]
        states = [t.state.name for t in trials]
        size_mb = database.stat().st_size / 2**20
    errors = [r["error"] for r in records if r["error"]]
    for error in errors[:3]:
        print(error)
    print(
        f"{args.workers} workers x {args.minutes:g} min on a copy of {args.run}/study.db "
        f"(study {study.name!r}, sampler {study.search.sampler}, {before} trials before): "
        f"wall {wall:.0f} s"
    )
    print(
        f"trials: {states.count('COMPLETE')} complete, {states.count('FAIL')} failed, "
        f"{states.count('RUNNING')} running at the end; worker exceptions: {len(errors)}; "
        f"workers that wrote no record: {args.workers - len(records)}; database {size_mb:.1f} MB"
    )
    done = sorted(t.datetime_complete for t in trials if t.datetime_complete is not None)
    if done:
        first = done[0]
        per_minute = [0] * (int(args.minutes) + 1)
        for moment in done:
            per_minute[min(int((moment - first).total_seconds() // 60), len(per_minute) - 1)] += 1
        print("trials completed per minute: " + ", ".join(str(n) for n in per_minute))
    print("worker | RSS after 1 min (MB) | peak RSS after (MB) | growth (MB)")
    growths = []
    for i, record in enumerate(records):
        samples = record["memory"]
        if not samples:
            continue
        warm = [m for t, m in samples if t >= 60] or [samples[-1][1]]
        growth = max(warm) - warm[0]
        growths.append(growth)
        print(f"{i} | {warm[0]:.0f} | {max(warm):.0f} | {growth:+.1f}")
    if growths:
        print(f"largest growth after the first minute: {max(growths):+.1f} MB")


if __name__ == "__main__":
    main()
