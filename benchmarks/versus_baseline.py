"""exitnas against a standalone ViT: headline fractions, a budget sweep with real early exit,
and ablations, all on one trained supernet and the test split.

Selection and calibration use the validation split carved from the training data; every number
printed is measured on the test split.

- Baseline: ``benchmarks/baseline_vit.py``'s ViT (the backbone's largest dims at the largest
  resolution, same epochs, seed and data as the supernet), read from ``--baseline``: its test
  accuracy and FLOPs, and its latency timed here, in rounds alternating with exitnas's.
- exitnas: the run's searched Pareto front (each point with its searched thresholds); then, for
  a sweep of FLOPs budgets (fractions of the baseline's FLOPs), the answer of ``exitnas policy
  query`` (a Pareto configuration with the learned policy or its confidence rule, thresholds
  calibrated on validation), exported as a bundle and run with real batched early exit on the
  test split: accuracy, FLOPs spent, measured ms per image.
- Ablations, each one part of exitnas taken away, the rest (supernet, sampler, seed, trials,
  budget queries) the same:
  ``fixed-thresholds``: the front's architectures with max-softmax and one threshold shared by
  every exit (set per budget on validation): no searched per-exit thresholds, no learned policy;
  ``no-reuse``, ``single-branch``, ``linear-heads``, ``no-keep-rates``: a new search in the
  space narrowed that way, its own learned policy, the same budget queries (simulated from the
  test logits, which real early exit reproduces exactly).

Headline: the fewest FLOPs, and the least measured latency, at which exitnas's budget sweep
reaches the baseline's test accuracy, as fractions of the baseline's; and exitnas's accuracy
gain at the baseline's FLOPs.

    python benchmarks/baseline_vit.py studies/cifar10.yaml --out runs/cifar10-baseline
    python benchmarks/versus_baseline.py --run runs/cifar10 --baseline runs/cifar10-baseline \\
        --out benchmarks/results/cifar10
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
import torch
from plain_vit import plain_vit
from presets import describe, test_point

import exitnas
from exitnas.policies.policy_cli import QueryResult, export_query_result
from exitnas.policies.query import Budget, BudgetError, Candidate, answer_budget
from exitnas.policies.study_policy import fit_study_policy, policy_from_bytes
from exitnas.search.export import pareto_points
from exitnas.search.objective import SearchObjective
from exitnas.search.rules import LEARNED, confidences, exit_indices, score_exits, softmax
from exitnas.search.runner import DIRECTIONS, load_evaluator, load_searched, open_run
from exitnas.search.samplers import create_sampler
from exitnas.search.storage import open_store
from exitnas.supernet.batches import normalize
from exitnas.supernet.checkpoint import load_weights
from exitnas.supernet.evaluate import predict_exits

FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.25)
SHARED_THRESHOLDS = np.linspace(0.0, 1.0, 51)
NARROWED = {  # ablation -> the SearchSpace fields it narrows
    "no-reuse": {"reuse": (False,)},
    "single-branch": {"max_branches": 1},
    "linear-heads": {"head_types": ("linear",)},
    "no-keep-rates": {"keep_rates": (1.0,)},
}


def fit_policy(candidates, labels, seed: int):
    """The learned policy of a front (as ``exitnas policy fit``), or None without multi-exits."""
    logits = list({c.point.config.key(): c.logits for c in candidates}.values())
    try:
        return fit_study_policy(logits, labels, random_state=seed)
    except ValueError:
        return None


def shared_threshold_answer(candidates, labels, budget_mflops: float):
    """Most accurate (config, one max-softmax threshold for every exit) within the budget."""
    best = None
    for c in candidates:
        conf = confidences(softmax(c.logits), "max_softmax")
        correct = c.logits.argmax(-1) == labels[None, :]
        cumulative = np.cumsum(c.point.stage_flops) / 1e6
        for t in SHARED_THRESHOLDS:
            thresholds = np.full(c.logits.shape[0] - 1, t)
            outcome = score_exits(exit_indices(conf, thresholds), correct, cumulative)
            if outcome.expected_flops > budget_mflops * (1 + 1e-12):
                continue
            key = (outcome.accuracy, -outcome.expected_flops)
            if best is None or key > best[0]:
                best = (key, c, tuple(thresholds.tolist()))
    return None if best is None else (best[1], "max_softmax", best[2], best[0][0])


def narrowed_front(evaluator, study, space, trials: int) -> list:
    """Pareto points of a new search (same sampler, seed, trials) in a narrowed space."""
    sampler = create_sampler(study.search.sampler, study.seed, study.search.population_size)
    optuna_study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    objective = SearchObjective(evaluator, study.search.rules, space=space)
    optuna_study.optimize(objective, n_trials=trials, show_progress_bar=True)
    return pareto_points(optuna_study, space)


def alternate(functions: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds of each function, timed in alternating rounds after one warm-up call."""
    for fn in functions.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def reached(points: list[dict], accuracy: float, key: str) -> float | None:
    """Smallest ``key`` among points with test accuracy at least ``accuracy``."""
    values = [p[key] for p in points if p["test_accuracy"] >= accuracy]
    return min(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a run after `exitnas run`")
    parser.add_argument("--baseline", required=True, type=Path, help="baseline_vit.py's --out")
    parser.add_argument("--out", required=True, type=Path, help="folder for JSON and plots")
    parser.add_argument("--storage")
    parser.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS)
    parser.add_argument("--ablations", nargs="*", default=["fixed-thresholds", *NARROWED])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model, study, url = open_run(args.run, args.storage)
    splits, optuna_study = load_searched(study, args.run, url)
    evaluator = load_evaluator(study, args.run, url, splits)
    val_labels, test_labels = splits.val.labels.numpy(), splits.test.labels.numpy()
    images = splits.test.images
    trials = len(optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))

    base = json.loads((args.baseline / "baseline.json").read_text())
    vit = plain_vit(study.space)
    vit.load_state_dict(load_weights(args.baseline / "vit.safetensors")[0])
    vit.eval()
    base_mflops, base_acc = base["mflops"], base["test_accuracy"]
    budgets = [f * base_mflops for f in args.fractions]
    print(
        f"run {args.run} ({study.name}: {trials} trials), baseline {args.baseline}; test split "
        f"{len(test_labels)} images; {torch.get_num_threads()} threads, batch {args.batch}, "
        f"median of {args.rounds} alternating rounds"
    )
    print(
        f"baseline ViT: test accuracy {base_acc:.4f}, {base_mflops:.1f} MFLOPs, "
        f"{base['epochs']} epochs"
    )

    test_cache: dict[str, np.ndarray] = {}

    def test_logits(config) -> np.ndarray:
        if config.key() not in test_cache:
            test_cache[config.key()] = predict_exits(
                model, images, splits.mean, splits.std, config=config
            )
        return test_cache[config.key()]

    def candidates_of(points) -> list[Candidate]:
        return [Candidate(p, evaluator.logits(p.config)[0]) for p in points]

    # -- exitnas: the searched front ---------------------------------------------------------
    points = pareto_points(optuna_study, study.space)
    front = []
    print("\n| point | config | rule | val acc | test acc | MFLOPs (test) |")
    print("|---:|---|---|---:|---:|---:|")
    for p in points:
        acc, mflops = test_point(
            test_logits(p.config), test_labels, p.stage_flops, p.rule.rule, p.rule.thresholds
        )
        front.append(
            {
                "index": p.index,
                "val_accuracy": p.accuracy,
                "test_accuracy": acc,
                "mflops": mflops,
                "config": describe(p.config),
            }
        )
        print(
            f"| {p.index} | {describe(p.config)} | {p.rule.rule} | {p.accuracy:.4f} | "
            f"{acc:.4f} | {mflops:.3g} |"
        )

    # -- exitnas: budget sweep, exported bundles, real early exit ----------------------------
    store = open_store(url)
    stored = store.get_policy(study.name, "learned")
    policy = policy_from_bytes(stored.blob) if stored else None
    candidates = candidates_of(points)
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]

    def run_baseline() -> None:
        with torch.inference_mode():
            for batch in batches:
                vit(normalize(batch, splits.mean, splits.std))

    sweep = []
    print(
        "\n| budget (x baseline FLOPs) | config | rule | val acc | test acc | MFLOPs spent | "
        "FLOPs fraction | ms/image | baseline ms/image | latency fraction |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for fraction, budget in zip(args.fractions, budgets, strict=True):
            try:
                answer = answer_budget(
                    candidates, val_labels, Budget("mflops", budget), policy=policy
                )
            except BudgetError as err:
                print(f"| {fraction:g} | below the cheapest configuration: {err} |")
                continue
            out = Path(tmp) / f"b{fraction:g}"
            used = policy if answer.rule.rule == LEARNED else None
            result = QueryResult(answer, model, study, splits, stored and stored.name, used)
            export_query_result(result, args.run, out)  # what `exitnas export --budget-...` writes
            bundle = exitnas.load(out)
            prediction = bundle.predict(images, batch_size=args.batch)
            accuracy = float((prediction.labels == test_labels).mean())
            mflops = float(prediction.flops.mean() / 1e6)
            seconds = alternate(
                {
                    "exitnas": lambda b=bundle: b.predict(images, batch_size=args.batch),
                    "baseline": run_baseline,
                },
                args.rounds,
            )
            ms, base_ms = (seconds[k] * 1e3 / len(images) for k in ("exitnas", "baseline"))
            row = {
                "fraction": fraction,
                "budget_mflops": budget,
                "config": describe(answer.point.config),
                "rule": answer.rule.rule,
                "val_accuracy": answer.accuracy,
                "test_accuracy": accuracy,
                "mflops": mflops,
                "flops_fraction": mflops / base_mflops,
                "ms": ms,
                "baseline_ms": base_ms,
                "latency_fraction": ms / base_ms,
            }
            sweep.append(row)
            print(
                f"| {fraction:g} | {row['config']} | {row['rule']} | {answer.accuracy:.4f} | "
                f"{accuracy:.4f} | {mflops:.3g} | {row['flops_fraction']:.3f} | {ms:.3f} | "
                f"{base_ms:.3f} | {row['latency_fraction']:.3f} |"
            )

    # -- ablations ---------------------------------------------------------------------------
    ablations: dict[str, list[dict]] = {}
    for name in args.ablations:
        if name == "fixed-thresholds":
            arm_candidates, arm_policy = candidates, None
        else:
            space = replace(study.space, **NARROWED[name])
            print(f"\nablation {name}: {trials} trials in the narrowed space", flush=True)
            arm_points = narrowed_front(evaluator, study, space, trials)
            arm_candidates = candidates_of(arm_points)
            arm_policy = fit_policy(arm_candidates, val_labels, study.seed)
        rows = []
        for fraction, budget in zip(args.fractions, budgets, strict=True):
            if name == "fixed-thresholds":
                found = shared_threshold_answer(arm_candidates, val_labels, budget)
                if found is None:
                    continue
                chosen, rule, thresholds, val_acc = found
                chosen_point = chosen.point
            else:
                try:
                    answer = answer_budget(
                        arm_candidates, val_labels, Budget("mflops", budget), policy=arm_policy
                    )
                except BudgetError:
                    continue
                chosen_point = answer.point
                rule, thresholds, val_acc = (
                    answer.rule.rule,
                    answer.rule.thresholds,
                    answer.accuracy,
                )
            config = chosen_point.config
            acc, mflops = test_point(
                test_logits(config),
                test_labels,
                chosen_point.stage_flops,
                rule,
                thresholds,
                arm_policy,
            )
            rows.append(
                {
                    "fraction": fraction,
                    "config": describe(config),
                    "rule": rule,
                    "val_accuracy": val_acc,
                    "test_accuracy": acc,
                    "mflops": mflops,
                }
            )
        ablations[name] = rows

    print(
        "\n| arm | "
        + " | ".join(f"{f:g}x" for f in args.fractions)
        + " | FLOPs fraction at baseline acc |"
    )
    print("|---|" + "---:|" * (len(args.fractions) + 1))
    for name, rows in {"exitnas": sweep, **ablations}.items():
        by_fraction = {r["fraction"]: r for r in rows}
        cells = [
            f"{by_fraction[f]['test_accuracy']:.4f} ({by_fraction[f]['mflops']:.3g})"
            if f in by_fraction
            else "-"
            for f in args.fractions
        ]
        fewest = reached(rows, base_acc, "mflops")
        share = "not reached" if fewest is None else f"{fewest / base_mflops:.3f}"
        print(f"| {name} | " + " | ".join(cells) + f" | {share} |")

    # -- headline ----------------------------------------------------------------------------
    fewest = reached(sweep, base_acc, "flops_fraction")
    fastest = reached(sweep, base_acc, "latency_fraction")
    at_cost = [r["test_accuracy"] for r in sweep if r["mflops"] <= base_mflops * (1 + 1e-9)]
    best = max(sweep, key=lambda r: r["test_accuracy"])
    print()
    if fewest is None:
        print(
            f"FLOPs fraction at equal accuracy: not reached (exitnas's best test accuracy "
            f"{best['test_accuracy']:.4f} at {best['mflops']:.3g} MFLOPs < baseline {base_acc:.4f})"
        )
        print("latency fraction at equal accuracy: not reached")
    else:
        print(f"FLOPs fraction at equal accuracy: {fewest:.3f}")
        print(f"latency fraction at equal accuracy: {fastest:.3f}")
    if at_cost:
        print(f"accuracy gain at the baseline's FLOPs: {max(at_cost) - base_acc:+.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "run": str(args.run),
        "study": study.name,
        "trials": trials,
        "baseline": base,
        "front": front,
        "sweep": sweep,
        "ablations": ablations,
        "flops_fraction_at_equal_accuracy": fewest,
        "latency_fraction_at_equal_accuracy": fastest,
        "accuracy_gain_at_baseline_flops": max(at_cost) - base_acc if at_cost else None,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    figure = tradeoff_figure(study.name, base, front, sweep, ablations)
    figure.write_html(args.out / "tradeoff.html", include_plotlyjs="cdn")
    try:
        figure.write_image(args.out / "tradeoff.png", width=900, height=560)
    except (ImportError, ValueError, RuntimeError) as err:  # kaleido / a browser missing
        print(f"no PNG ({type(err).__name__}: {err}); the HTML is written")
    print(f"wrote {args.out}/results.json and tradeoff.html")


def tradeoff_figure(name: str, base: dict, front, sweep, ablations) -> go.Figure:
    """Test accuracy against MFLOPs of every arm, the baseline as one marker."""
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[base["mflops"]],
            y=[base["test_accuracy"]],
            mode="markers",
            name="baseline ViT",
            marker={"symbol": "star", "size": 16},
        )
    )
    arms = {"exitnas front (searched thresholds)": front, "exitnas (budget query)": sweep}
    arms.update({f"ablation: {k}": v for k, v in ablations.items()})
    for label, rows in arms.items():
        rows = sorted(rows, key=lambda r: r["mflops"])
        figure.add_trace(
            go.Scatter(
                x=[r["mflops"] for r in rows],
                y=[r["test_accuracy"] for r in rows],
                mode="lines+markers",
                name=label,
                line={"width": 3 if label.startswith("exitnas (") else 1.5},
            )
        )
    figure.update_layout(
        title=f"{name}: test accuracy against FLOPs per image",
        xaxis_title="MFLOPs per image (test split)",
        yaxis_title="test accuracy",
        template="plotly_white",
    )
    return figure


if __name__ == "__main__":
    main()
