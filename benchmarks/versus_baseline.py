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
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import torch
from ablations import ABLATIONS, TestLogits, ablation_rows
from plain_vit import plain_vit
from presets import describe, test_point

import exitnas
from exitnas.jobs.export import front as pareto_front
from exitnas.jobs.query import export_answer, query_budget
from exitnas.runs import Run
from exitnas.search.budget import Budget, BudgetError
from exitnas.supernet.batches import normalize
from exitnas.supernet.checkpoint import load_weights

FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.25)


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a run after `exitnas run`")
    parser.add_argument("--baseline", required=True, type=Path, help="baseline_vit.py's --out")
    parser.add_argument("--out", required=True, type=Path, help="folder for JSON and plots")
    parser.add_argument("--storage")
    parser.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS)
    parser.add_argument("--ablations", nargs="*", default=list(ABLATIONS))
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def load_baseline(folder: Path, space) -> tuple[dict, torch.nn.Module]:
    """``baseline_vit.py``'s results (``baseline.json``) and its trained ViT, in eval mode."""
    base = json.loads((folder / "baseline.json").read_text())
    vit = plain_vit(space)
    vit.load_state_dict(load_weights(folder / "vit.safetensors")[0])
    vit.eval()
    return base, vit


def front_rows(run: Run, test: TestLogits) -> list[dict]:
    """The searched front, each point with its searched thresholds, on the test split."""
    rows = []
    print("\n| point | config | rule | val acc | test acc | MFLOPs (test) |")
    print("|---:|---|---|---:|---:|---:|")
    for p in pareto_front(run):
        acc, mflops = test_point(
            test(p.config), test.labels, p.stage_flops, p.rule.rule, p.rule.thresholds
        )
        rows.append(
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
    return rows


def measure(bundle, baseline, test: TestLogits, batch: int, rounds: int) -> tuple[float, ...]:
    """A bundle's real early exit on the test split: accuracy, MFLOPs spent, and ms per image
    of it and of ``baseline()``, timed in alternating rounds."""
    images = test.run.splits.test.images
    prediction = bundle.predict(images, batch_size=batch)
    accuracy = float((prediction.labels == test.labels).mean())
    mflops = float(prediction.flops.mean() / 1e6)
    seconds = alternate(
        {"exitnas": lambda: bundle.predict(images, batch_size=batch), "baseline": baseline},
        rounds,
    )
    ms, base_ms = (seconds[k] * 1e3 / len(images) for k in ("exitnas", "baseline"))
    return accuracy, mflops, ms, base_ms


def budget_sweep(run: Run, test: TestLogits, vit, base_mflops: float, args) -> list[dict]:
    """``exitnas policy query``'s answer for each budget, exported and run on the test split."""
    images, mean, std = run.splits.test.images, run.splits.mean, run.splits.std
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    budgets = [f * base_mflops for f in args.fractions]

    def run_baseline() -> None:
        with torch.inference_mode():
            for batch in batches:
                vit(normalize(batch, mean, std))

    sweep = []
    print(
        "\n| budget (x baseline FLOPs) | config | rule | val acc | test acc | MFLOPs spent | "
        "FLOPs fraction | ms/image | baseline ms/image | latency fraction |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for fraction, budget in zip(args.fractions, budgets, strict=True):
            try:
                result = query_budget(run, Budget("mflops", budget))
            except BudgetError as err:
                print(f"| {fraction:g} | below the cheapest configuration: {err} |")
                continue
            out = Path(tmp) / f"b{fraction:g}"
            export_answer(result, out)  # what `exitnas export --budget-...` writes
            bundle = exitnas.load(out)
            accuracy, mflops, ms, base_ms = measure(
                bundle, run_baseline, test, args.batch, args.rounds
            )
            answer = result.answer
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
    return sweep


def print_arms(arms: dict[str, list[dict]], fractions, base_acc: float, base_mflops: float) -> None:
    """Test accuracy (MFLOPs) of every arm at each budget, and its FLOPs at baseline accuracy."""
    print(
        "\n| arm | "
        + " | ".join(f"{f:g}x" for f in fractions)
        + " | FLOPs fraction at baseline acc |"
    )
    print("|---|" + "---:|" * (len(fractions) + 1))
    for name, rows in arms.items():
        by_fraction = {r["fraction"]: r for r in rows}
        cells = [
            f"{by_fraction[f]['test_accuracy']:.4f} ({by_fraction[f]['mflops']:.3g})"
            if f in by_fraction
            else "-"
            for f in fractions
        ]
        fewest = reached(rows, base_acc, "mflops")
        share = "not reached" if fewest is None else f"{fewest / base_mflops:.3f}"
        print(f"| {name} | " + " | ".join(cells) + f" | {share} |")


def headline(sweep: list[dict], base_acc: float, base_mflops: float) -> dict[str, float | None]:
    """Print and return the FLOPs and latency fractions at which the sweep reaches the
    baseline's accuracy, and its accuracy gain at the baseline's FLOPs."""
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
    return {
        "flops_fraction_at_equal_accuracy": fewest,
        "latency_fraction_at_equal_accuracy": fastest,
        "accuracy_gain_at_baseline_flops": max(at_cost) - base_acc if at_cost else None,
    }


def write_results(out: Path, result: dict, figure: go.Figure) -> None:
    """``results.json``, ``tradeoff.html`` and (with kaleido) ``tradeoff.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    figure.write_html(out / "tradeoff.html", include_plotlyjs="cdn")
    try:
        figure.write_image(out / "tradeoff.png", width=900, height=560)
    except (ImportError, ValueError, RuntimeError) as err:  # kaleido / a browser missing
        print(f"no PNG ({type(err).__name__}: {err}); the HTML is written")
    print(f"wrote {out}/results.json and tradeoff.html")


def main() -> None:
    args = parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Run.open(args.run, args.storage)
    study, test = run.study, TestLogits(run)
    trials = len(run.searched().get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    base, vit = load_baseline(args.baseline, study.space)
    base_mflops, base_acc = base["mflops"], base["test_accuracy"]
    budgets = [f * base_mflops for f in args.fractions]
    print(
        f"run {args.run} ({study.name}: {trials} trials), baseline {args.baseline}; test split "
        f"{len(test.labels)} images; {torch.get_num_threads()} threads, batch {args.batch}, "
        f"median of {args.rounds} alternating rounds"
    )
    print(
        f"baseline ViT: test accuracy {base_acc:.4f}, {base_mflops:.1f} MFLOPs, "
        f"{base['epochs']} epochs"
    )
    front = front_rows(run, test)
    sweep = budget_sweep(run, test, vit, base_mflops, args)
    ablations = {
        name: ablation_rows(name, run, trials, test, args.fractions, budgets)
        for name in args.ablations
    }
    print_arms({"exitnas": sweep, **ablations}, args.fractions, base_acc, base_mflops)
    summary = headline(sweep, base_acc, base_mflops)
    result = {
        "run": str(args.run),
        "study": study.name,
        "trials": trials,
        "baseline": base,
        "front": front,
        "sweep": sweep,
        "ablations": ablations,
        **summary,
    }
    write_results(args.out, result, tradeoff_figure(study.name, base, front, sweep, ablations))


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
