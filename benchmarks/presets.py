"""The published designs (presets) against the searched Pareto front, on one trained supernet.

Every preset config (:mod:`exitnas.spaces.presets`: RAViT, CF-ViT, SuperViT, Multi-Exit ViT)
runs on the run's supernet. A multi-exit preset gets thresholds of its own rule calibrated on
the validation split for a sweep of FLOPs budgets (MSDNet protocol); every point is then
measured on the test split. The searched front is measured on the test split the same way, each
Pareto point with its searched rule. For each preset, the table lists its own Pareto points
(accuracy up, FLOPs down, over all its configs and budgets) with the front's best test
accuracy at no more FLOPs, and the front's fewest FLOPs at no less accuracy.

    python benchmarks/presets.py --run runs/quickstart
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import optuna

from exitnas.exits.calibrate import calibrate_thresholds
from exitnas.exits.rules import LEARNED, confidences, exit_indices, score_exits, softmax
from exitnas.jobs.export import front as pareto_front
from exitnas.runs import Run
from exitnas.spaces.presets import PRESETS, make_preset
from exitnas.supernet import count_flops
from exitnas.supernet.evaluate import predict_exits


def test_point(
    logits, labels, stage_flops, rule: str, thresholds, policy=None
) -> tuple[float, float]:
    """Test accuracy and expected MFLOPs of a rule with given thresholds (``policy``: the
    study policy scoring the ``learned`` rule)."""
    scores = policy.scores(logits) if rule == LEARNED else confidences(softmax(logits), rule)
    taken = exit_indices(scores, np.asarray(thresholds, dtype=np.float64))
    correct = logits.argmax(-1) == labels[None, :]
    outcome = score_exits(taken, correct, np.cumsum(stage_flops))
    return outcome.accuracy, outcome.expected_flops / 1e6


def describe(config) -> str:
    parts = []
    for b in config.branches:
        refine = f" refine {b.refine_fraction}" if b.refine_fraction else ""
        keep = f" keep {b.keep_rate}" if b.keep_rate < 1 else ""
        heads = "/".join(sorted({e.head for e in b.exits}))
        parts.append(f"{b.resolution}px p{b.patch_size}{refine}{keep} x{len(b.exits)} {heads}")
    return " -> ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--storage")
    parser.add_argument("--budgets", type=int, default=6, help="budgets per multi-exit preset")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Run.open(args.run, args.storage)
    study, splits, evaluator = run.study, run.splits, run.evaluator
    val_labels, test_labels = splits.val.labels.numpy(), splits.test.labels.numpy()

    def test_logits(config):
        return predict_exits(
            run.supernet, splits.test.images, splits.mean, splits.std, config=config
        )

    front = []
    for p in pareto_front(run):
        acc, mflops = test_point(
            test_logits(p.config), test_labels, p.stage_flops, p.rule.rule, p.rule.thresholds
        )
        front.append((mflops, acc))
    front_mflops, front_acc = np.array(front).T
    print(
        f"run {args.run}: searched front {len(front)} points, test accuracy "
        f"{front_acc.min():.4f}-{front_acc.max():.4f} at {front_mflops.min():.3g}-"
        f"{front_mflops.max():.3g} MFLOPs (test split, {len(test_labels)} images)"
    )
    print(
        "| preset | config | rule | test acc | MFLOPs | front acc at <= MFLOPs | "
        "front MFLOPs at >= acc |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    for name in PRESETS:
        preset = make_preset(study.space, name)
        rows = []  # (accuracy, mflops, config)
        for config in preset.configs:
            flops = count_flops(study.space, config)
            val_logits, _ = evaluator.logits(config)
            logits = test_logits(config)
            if config.num_exits == 1:
                rows.append((*test_point(logits, test_labels, flops, preset.rule, ()), config))
                continue
            scores = confidences(softmax(val_logits), preset.rule)
            correct = val_logits.argmax(-1) == val_labels[None, :]
            cumulative = np.cumsum(flops)
            for budget in np.linspace(cumulative[0], cumulative[-1], args.budgets):
                thresholds = calibrate_thresholds(scores, correct, flops, budget)
                point = test_point(logits, test_labels, flops, preset.rule, thresholds)
                rows.append((*point, config))
        own_front = [
            r
            for r in rows
            if not any(o[0] >= r[0] and o[1] <= r[1] and o[:2] != r[:2] for o in rows)
        ]
        for acc, mflops, config in sorted(set(own_front), key=lambda r: r[1]):
            cheaper = front_acc[front_mflops <= mflops * (1 + 1e-9)]
            richer = front_mflops[front_acc >= acc]
            at_cost = f"{cheaper.max():.4f}" if cheaper.size else "-"
            at_acc = f"{richer.min():.3g}" if richer.size else "-"
            print(
                f"| {preset.design} | {describe(config)} | {preset.rule} | {acc:.4f} | "
                f"{mflops:.3g} | {at_cost} | {at_acc} |"
            )


if __name__ == "__main__":
    main()
