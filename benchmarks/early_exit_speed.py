"""Real early exit: measured wall-clock speedup against the speedup its FLOPs predict.

For Pareto points of a searched study, the exported bundle classifies the test split two ways,
side by side in one process, alternating rounds: running every stage for every image (the full
configuration, ``ExitModel.logits``), and real batched early exit (``ExitModel.predict``: after
each stage the images that exit leave the batch). The FLOPs-predicted speedup is the full
configuration's FLOPs over the mean FLOPs early exit spends on these images; the target is a
measured speedup of at least 0.9 x the predicted one.

    python benchmarks/early_exit_speed.py --run runs/quickstart --points 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

import exitnas
from exitnas.jobs.export import export_point, front
from exitnas.runs import Run


def alternate(full, early, rounds: int) -> tuple[float, float]:
    """Median seconds of ``full()`` and ``early()``, timed in alternating rounds."""
    times: dict[str, list[float]] = {"full": [], "early": []}
    for _ in range(rounds):
        for name, fn in (("full", full), ("early", early)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["full"]), statistics.median(times["early"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder with a searched study")
    parser.add_argument("--storage", help="study storage (default: the run's study.db)")
    parser.add_argument("--points", type=int, default=3, help="Pareto points to measure")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Run.open(args.run, args.storage)
    splits, points = run.splits, front(run)
    # the points where early exit has work to do: several exits actually used on validation
    multi = [p for p in points if sum(f > 0 for f in p.exit_fractions) > 1]
    chosen = sorted(multi, key=lambda p: -p.accuracy)[: args.points]
    images = splits.test.images
    print(
        f"run {run.path}, test split: {len(images)} images, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} rounds"
    )
    print("point  trial  test acc  exits used  predicted  measured  measured/predicted")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for point in chosen:
            out = Path(tmp) / f"p{point.index}"
            export_point(run, point, out)
            bundle = exitnas.load(out)
            prediction = bundle.predict(images, batch_size=args.batch)
            accuracy = float((prediction.labels == splits.test.labels.numpy()).mean())
            predicted = bundle.cumulative_flops[-1] / prediction.flops.mean()
            bundle.logits(images, batch_size=args.batch)  # warm-up
            full, early = alternate(
                lambda b=bundle: b.logits(images, batch_size=args.batch),
                lambda b=bundle: b.predict(images, batch_size=args.batch),
                args.rounds,
            )
            used = int((np.bincount(prediction.exits) > 0).sum())
            print(
                f"{point.index:5d}  {point.trial_number:5d}  {accuracy:8.4f}  {used:10d}  "
                f"{predicted:8.2f}x  {full / early:7.2f}x  {full / early / predicted:18.3f}"
            )


if __name__ == "__main__":
    main()
