"""Exit policy quality: the learned policy against max-softmax thresholds and the oracle.

The MSDNet / CF-ViT protocol: thresholds are calibrated on held-out data for a sweep of FLOPs
budgets, and accuracy against expected FLOPs is measured on the test split. For each chosen
Pareto point of a searched study, the learned policy is fitted on one half of the validation
split, both policies are calibrated on the other half (one shared threshold per budget), and
all three curves are measured on the test split. Reported: the mean accuracy gap between curves
(``area_between``) and the share of the max-softmax -> oracle gap the learned policy closes.

    python benchmarks/policy_quality.py --run runs/quickstart --points 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import optuna

from exitnas.policies import LearnedExitPolicy, area_between, tradeoff_curve
from exitnas.search.export import pareto_points
from exitnas.search.runner import load_evaluator, load_searched, open_run
from exitnas.supernet.evaluate import predict_exits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder with a searched study")
    parser.add_argument("--storage", help="study storage (default: the run's study.db)")
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--budgets", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Path(args.run)
    _, study, url = open_run(run, args.storage)
    splits, optuna_study = load_searched(study, run, url)
    evaluator = load_evaluator(study, run, url, splits)
    points = [p for p in pareto_points(optuna_study, study.space) if p.config.num_exits > 2]
    chosen = sorted(points, key=lambda p: -p.accuracy)[: args.points]
    val_labels = splits.val.labels.numpy()
    test_labels = splits.test.labels.numpy()
    half = np.random.default_rng(args.seed).permutation(len(val_labels))
    fit_rows, cal_rows = half[: len(half) // 2], half[len(half) // 2 :]
    print(
        f"run {run}: fit on {len(fit_rows)} / calibrate on {len(cal_rows)} validation images, "
        f"test on {len(test_labels)}; {args.budgets} budgets"
    )
    print("point  exits  gap learned-maxsoftmax  gap oracle-maxsoftmax  share of gap closed")
    for point in chosen:
        val_logits, _ = evaluator.logits(point.config)
        test_logits = predict_exits(
            evaluator.model, splits.test.images, splits.mean, splits.std, config=point.config
        )
        policy = LearnedExitPolicy(random_state=args.seed)
        policy.fit(val_logits[:, fit_rows], val_labels[fit_rows])
        flops = np.cumsum(point.stage_flops)
        budgets = np.linspace(flops[0] * 1.001, flops[-1], args.budgets)
        curves = tradeoff_curve(
            policy,
            val_logits[:, cal_rows],
            val_labels[cal_rows],
            point.stage_flops,
            budgets,
            test_logits=test_logits,
            test_labels=test_labels,
        )
        try:
            learned = area_between(curves.learned, curves.max_softmax)
            oracle = area_between(curves.oracle, curves.max_softmax)
        except ValueError:  # every budget is spent best at the first exit: nothing to compare
            reached = sorted(set(curves.max_softmax.flops))
            print(
                f"{point.index:5d}  {point.config.num_exits:5d}  n/a: both policies reach "
                f"only {reached} FLOPs (exiting first is best at every budget)"
            )
            continue
        share = learned / oracle if oracle > 0 else float("nan")
        print(
            f"{point.index:5d}  {point.config.num_exits:5d}  {learned:+21.4f}  {oracle:+21.4f}"
            f"  {share:19.2f}"
        )


if __name__ == "__main__":
    main()
