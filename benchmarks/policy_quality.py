"""Exit policy quality: the learned policy against max-softmax thresholds and the oracle.

The MSDNet / CF-ViT protocol: thresholds are calibrated on the validation split for a sweep of
FLOPs budgets, and accuracy against expected FLOPs is measured on the test split. The learned
policy is what ``exitnas policy fit`` fits: one policy pooled over the validation logits of
every multi-exit Pareto architecture, cross-fitted, so it is calibrated on out-of-fold scores
of the same validation split as max-softmax. Both are calibrated the same way (one shared
threshold, or per-exit thresholds with ``--refine``); the oracle sends each test image to its
first correct exit within the budget. Reported per Pareto point: the mean accuracy gap between
curves (``area_between``) and the share of the max-softmax -> oracle gap the learned policy
closes; and the mean over points.

    python benchmarks/policy_quality.py --run runs/quickstart --points 6
"""

from __future__ import annotations

import argparse

import numpy as np
import optuna

from exitnas.exits import area_between, tradeoff_curve
from exitnas.exits.policy import fit_study_policy
from exitnas.jobs.export import front as pareto_front
from exitnas.runs import Run
from exitnas.supernet.evaluate import predict_exits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder with a searched study")
    parser.add_argument("--storage", help="study storage (default: the run's study.db)")
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--budgets", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimator", default="boosting", choices=["boosting", "logistic"])
    parser.add_argument("--target", default="correct", choices=["correct", "oracle", "final"])
    parser.add_argument("--refine", action="store_true", help="per-exit thresholds for both")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Run.open(args.run, args.storage)
    splits, evaluator = run.splits, run.evaluator
    front = pareto_front(run)
    multi = {p.config.key(): p for p in front if p.config.num_exits > 1}
    val_labels = splits.val.labels.numpy()
    test_labels = splits.test.labels.numpy()
    val_logits = {key: evaluator.logits(p.config)[0] for key, p in multi.items()}
    policy = fit_study_policy(
        list(val_logits.values()),
        val_labels,
        estimator=args.estimator,
        target=args.target,
        random_state=args.seed,
    )
    chosen = sorted(multi.values(), key=lambda p: -p.accuracy)[: args.points]
    print(
        f"run {run.path}: policy ({args.estimator}, target {args.target}) fitted on {len(multi)} "
        f"Pareto architectures x {len(val_labels)} validation images (2-fold cross-fitting), "
        f"thresholds {'per exit' if args.refine else 'shared'}; test on {len(test_labels)}; "
        f"{args.budgets} budgets"
    )
    print("point  exits  gap learned-maxsoftmax  gap oracle-maxsoftmax  share of gap closed")
    gaps = []
    for point in chosen:
        test_logits = predict_exits(
            run.supernet, splits.test.images, splits.mean, splits.std, config=point.config
        )
        flops = np.cumsum(point.stage_flops)
        budgets = np.linspace(flops[0] * 1.001, flops[-1], args.budgets)
        curves = tradeoff_curve(
            policy,
            val_logits[point.config.key()],
            val_labels,
            point.stage_flops,
            budgets,
            test_logits=test_logits,
            test_labels=test_labels,
            refine=args.refine,
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
        gaps.append((learned, oracle))
        share = learned / oracle if oracle > 0 else float("nan")
        print(
            f"{point.index:5d}  {point.config.num_exits:5d}  {learned:+21.4f}  {oracle:+21.4f}"
            f"  {share:19.2f}"
        )
    if gaps:
        learned, oracle = np.mean(gaps, axis=0)
        print(
            f" mean         {learned:+21.4f}  {oracle:+21.4f}  {learned / oracle:19.2f}"
            f"  ({len(gaps)} points)"
        )


if __name__ == "__main__":
    main()
