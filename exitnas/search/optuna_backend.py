"""The Optuna backend: trials in this process, or in ``workers`` processes on one database.

One worker runs the trials in this process with the evaluator the search set up (Optuna's own
loop, or :class:`~exitnas.search.workers.StudyTarget` with ``until``). Several are processes
that share the study through the database and one target of completed trials, so exactly the
requested number is added even if a worker dies; each loads its own evaluator and sends back
its cache counts. Running trials send Optuna heartbeats: the trial of a killed worker is
marked failed and queued again for the others.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from exitnas.errors import ExitnasError
from exitnas.search.backends import SearchBackend, SearchSetup, TrialCounts
from exitnas.search.interrupts import Interrupts, SearchInterrupted, TrialInterrupted
from exitnas.search.objective import SearchObjective, load_evaluator, load_latency
from exitnas.search.samplers import create_sampler
from exitnas.search.studies import open_study
from exitnas.search.workers import StudyTarget, trial_told
from exitnas.spaces import StudyConfig
from exitnas.threads import holding, register, use_threads

__all__ = ["OptunaBackend"]


class OptunaBackend(SearchBackend):
    """Trials run by Optuna: in this process (one worker), or in ``workers`` processes.

    Torch's threads: ``training.num_threads``, else automatic (:mod:`exitnas.threads`; each
    worker process gets its share), checked again after every trial.
    """

    name = "optuna"

    def run(self, setup: SearchSetup, bar: Any) -> TrialCounts:
        if setup.workers == 1:
            return _run_here(setup, bar)
        return _run_workers(setup, lambda: setup.follow(bar))


def _run_here(setup: SearchSetup, bar: Any) -> TrialCounts:
    """Run the trials in this process; Ctrl-C fails the running trial
    (:class:`~exitnas.search.interrupts.Interrupts`)."""
    requested = setup.study.training.num_threads
    last = [0.0]

    def tick(s: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update(trial.state == optuna.trial.TrialState.COMPLETE)
        use_threads(requested)  # an automatic count follows the other processes
        if time.perf_counter() - last[0] > 1.0:
            last[0] = time.perf_counter()
            setup.refresh(bar)

    evaluator, optuna_study = setup.evaluator, setup.optuna_study
    objective = SearchObjective(evaluator, setup.study.search.rules, setup.latency)
    interrupts = Interrupts()
    try:
        if setup.until is None:  # alone on the study: Optuna's own loop
            with interrupts.deferring():
                optuna_study.optimize(
                    interrupts.wrap(objective), n_trials=setup.trials, callbacks=[tick, trial_told]
                )
        else:
            StudyTarget(optuna_study, setup.target).run(
                objective, callbacks=[tick], interrupts=interrupts
            )
    except (KeyboardInterrupt, TrialInterrupted):
        raise interrupts.stopped(optuna_study, setup.target) from None
    return TrialCounts(evaluator.hits, evaluator.misses, evaluator.miss_seconds)


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


def _run_workers(setup: SearchSetup, refresh: Callable[[], Any]) -> TrialCounts:
    """Run ``setup.workers`` processes (:func:`_worker`) until the study holds
    ``setup.target`` completed trials, calling ``refresh`` twice a second; return their
    counts summed, and how many died.

    Raises:
        SearchInterrupted: Ctrl-C here; the workers (which got it too, from the terminal, or
            from here) failed their running trials and stopped.
        ExitnasError: a worker's user error.
    """
    context = multiprocessing.get_context("spawn")
    processes, pipes = [], []
    interrupted = False
    threads = setup.study.training.num_threads  # 0: each worker its share (exitnas.threads)
    args = (setup.study.to_dict(), str(setup.run_dir), setup.url, setup.target, threads)
    with holding(setup.workers):  # this process holds its workers' shares of the CPUs
        for _ in range(setup.workers):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_worker, args=(send, *args, setup.device), daemon=True)
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
        counts, errors, stopped = TrialCounts(), [], []
        for process, pipe in zip(processes, pipes, strict=True):
            process.join()
            message = pipe.recv() if pipe.poll() else None
            if message is None:  # killed, or crashed with a traceback of its own
                counts += TrialCounts(workers_lost=1)
            elif message[0] == "ok":
                counts += TrialCounts(*message[1])
            elif message[0] == "interrupted":  # with this process, or alone (then the others
                stopped.extend(message[1])  # finish the target without it)
                counts += TrialCounts(workers_lost=int(not interrupted))
            else:
                errors.append(message[1])
    if interrupted:
        raise SearchInterrupted(stopped, setup.target)
    if errors:
        raise ExitnasError(errors[0])
    return counts


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
