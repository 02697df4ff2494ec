"""ONNX Runtime against torch eager on a study's budget bundles, and whether latency budgets hold.

Every number is measured on the test split of a trained and searched run.

1. Speed. For three FLOPs budgets spread over the front (``--fractions`` of the way from the
   cheapest achievable MFLOPs to the most accurate Pareto point's expected MFLOPs under its
   exit rule; ``--up-to full``: to its full cost),
   the answer of ``exitnas policy query`` is exported as one bundle holding both the safetensors
   and the ONNX files (``exitnas export --format both``). ``exitnas.load(bundle).predict``
   (torch eager) and ``exitnas.deploy.load_onnx(bundle).predict`` (ONNX Runtime, CPU) classify
   the same test images with real early exit, side by side in one process, in alternating
   rounds, with the same thread count, at batch size 1 and 256: ms per image and the ratio
   onnx/torch (target: below 1), and how many images get another exit or label (target: 0).
2. Budget adherence. For 10 latency budgets spread from the cheapest achievable (every image at
   the first exit of the cheapest configuration) to the most accurate point's expected latency
   (above it every budget gets that point; ``--up-to full``: its latency with no early exit),
   ``policy query --budget-ms`` answers on a torch profile (``--device``) and on an ONNX profile
   (``--onnx-device``, measured with ``exitnas profile --runtime onnx`` first when the study has
   none), and each answer's bundle is timed at batch size 1 with the runtime its profile used,
   with the profile's thread count: budget, predicted and measured ms per image. Target: at
   most 1 budget in 10 exceeded by more than 10 %.

    python benchmarks/onnx_runtime.py --run runs/cifar10-r
    python benchmarks/onnx_runtime.py --run runs/quickstart --onnx-device local-onnx
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import optuna
import torch
from presets import describe
from tqdm.auto import tqdm

import exitnas
from exitnas.deploy import load_onnx
from exitnas.policies.costs import expected_ms, load_device_costs
from exitnas.policies.policy_cli import QueryResult, export_query_result, query_run
from exitnas.policies.profile_cli import ProfileSettings, profile_run
from exitnas.policies.query import Budget, BudgetError
from exitnas.search.export import pareto_points
from exitnas.search.export_cli import write_bundle
from exitnas.search.runner import load_searched, open_run
from exitnas.search.storage import open_store

FRACTIONS = (0.3, 0.6, 1.0)  # speed budgets: from the cheapest (0) to the top (1) of the front
RUNTIMES = ("torch", "onnx")
OVER = 1.10  # "over by more than 10 %"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a run after `exitnas run`")
    parser.add_argument("--storage", help="study storage (default: the run's study.db)")
    parser.add_argument(
        "--device", default="local", help="torch profile of the study (default local)"
    )
    parser.add_argument(
        "--onnx-device",
        help="ONNX profile of the study (default <device>-onnx); measured and stored in the "
        "study's database first when missing",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON (default benchmarks/onnx_runtime_<study>.json)"
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=FRACTIONS,
        help="speed budgets: fractions of the way from the cheapest achievable MFLOPs (0) to "
        "the most accurate point's (1; --up-to)",
    )
    parser.add_argument(
        "--up-to",
        choices=("expected", "full"),
        default="expected",
        help="top of the budget spreads: the most accurate point's expected cost under its "
        "exit rule (default), or its full cost with no early exit",
    )
    parser.add_argument(
        "--budgets-mflops", type=float, nargs="+", help="speed budgets (overrides --fractions)"
    )
    parser.add_argument(
        "--latency-budgets", type=int, default=10, help="latency budgets per profile"
    )
    parser.add_argument(
        "--budgets-ms", type=float, nargs="+", help="latency budgets (overrides the spread)"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of both runtimes")
    parser.add_argument("--images", type=int, default=512, help="test images at --batch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--batch1-images", type=int, default=128, help="first test images timed at batch size 1"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median)")
    parser.add_argument(
        "--profile-repeats", type=int, default=20, help="timed runs per stage of a new profile"
    )
    parser.add_argument(
        "--reprofile",
        action="store_true",
        help="measure both profiles again (replacing stored ones; e.g. after a change of what "
        "a profile holds)",
    )
    parser.add_argument(
        "--skip", choices=("speed", "budgets"), action="append", default=[], help="skip a part"
    )
    return parser.parse_args()


def alternate(
    functions: dict[str, Callable[[], Any]], rounds: int, warmup: bool = True
) -> dict[str, float]:
    """Median seconds of each function over ``rounds`` rounds (order reversed every other
    round), after one untimed call of each unless ``warmup`` is False."""
    if warmup:
        for fn in functions.values():
            fn()
    names = list(functions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def front_costs(run: Path, study, url: str, device: str) -> dict[str, Any]:
    """The front a query on ``device`` chooses from (its device search's when there is one),
    with the cheapest achievable ms and the most accurate point's expected and full cost."""
    costs = load_device_costs(open_store(url), study, device, url)
    _, optuna_study = load_searched(study, run, url, device, progress=False)
    points = pareto_points(optuna_study, study.space)
    stage_ms = [costs.rule_stage_ms(study.space, p.config, p.rule.rule) for p in points]
    best = max(range(len(points)), key=lambda i: (points[i].accuracy, -points[i].mflops))
    return {
        "points": len(points),
        "cheapest_ms": float(min(ms[0] for ms in stage_ms)),
        "cheapest_mflops": min(p.stage_flops[0] for p in points) / 1e6,
        "best_index": points[best].index,
        "best_expected_ms": expected_ms(stage_ms[best], points[best].exit_fractions),
        "best_full_ms": float(np.sum(stage_ms[best])),
        "best_expected_mflops": points[best].mflops,
        "best_full_mflops": sum(points[best].stage_flops) / 1e6,
        "threads": costs.profile.host.threads,
    }


def export(result: QueryResult, run: Path, out: Path, fmt: str) -> Path:
    """The answer's bundle in ``fmt`` (``exitnas export --format``)."""
    return write_bundle(out, fmt, lambda folder: export_query_result(result, run, folder))


def answer_row(result: QueryResult) -> dict[str, Any]:
    answer = result.answer
    return {
        "pareto_index": answer.point.index,
        "config": describe(answer.point.config),
        "rule": answer.rule.rule,
        "val_accuracy": answer.accuracy,
        "mflops": answer.mflops,
        "predicted_ms": answer.latency_ms,
        "latency_source": answer.latency_source,
    }


def ms_per_image(eager, onnx, images: torch.Tensor, batch: int, rounds: int) -> dict:
    """Median ms per image of the torch and the ONNX bundle's ``predict`` on ``images`` at
    ``batch``, timed in alternating rounds (both already warm)."""
    as_numpy = images.numpy()
    seconds = alternate(
        {
            "torch": lambda: eager.predict(images, batch),
            "onnx": lambda: onnx.predict(as_numpy, batch),
        },
        rounds,
        warmup=False,
    )
    return {name: s * 1e3 / len(images) for name, s in seconds.items()}


def differing(a, b) -> int:
    """Images whose exit or label differs between two predictions."""
    return int(((a.labels != b.labels) | (a.exits != b.exits)).sum())


def speed(args, run: Path, study, images: torch.Tensor, labels: np.ndarray, tmp: Path) -> list:
    """Part 1: torch eager against ONNX Runtime on the bundles of the FLOPs budgets."""
    front = front_costs(run, study, args.url, args.device)
    low, top = front["cheapest_mflops"], front[f"best_{args.up_to}_mflops"]
    budgets = args.budgets_mflops or [low + f * (top - low) for f in args.fractions]
    print(
        f"speed: {len(budgets)} MFLOPs budgets (front from the cheapest achievable {low:.4g} to "
        f"the most accurate point's {args.up_to} {top:.4g} MFLOPs), {args.threads} thread(s) "
        "for both runtimes"
    )
    big, small = images[: args.images], images[: args.batch1_images]
    big_np, small_np = big.numpy(), small.numpy()
    torch.set_num_threads(args.threads)
    rows = []
    for i, budget in enumerate(tqdm(budgets, desc="speed: budgets", unit="bundle")):
        try:
            result = query_run(
                run, Budget("mflops", budget), device=args.device, storage=args.storage
            )
        except BudgetError as err:
            tqdm.write(f"skipped {budget:.4g} MFLOPs: {err}")
            rows.append({"budget_mflops": budget, "skipped": str(err)})
            continue
        out = export(result, run, tmp / f"speed-{i}", "both")
        eager, onnx = exitnas.load(out), load_onnx(out, threads=args.threads)
        # the agreement check doubles as both runtimes' warm-up
        pt, po = eager.predict(big, args.batch), onnx.predict(big_np, args.batch)
        p1t, p1o = eager.predict(small, 1), onnx.predict(small_np, 1)
        batched = ms_per_image(eager, onnx, big, args.batch, args.rounds)
        single = ms_per_image(eager, onnx, small, 1, args.rounds)
        row = {
            "budget_mflops": budget,
            **answer_row(result),
            "exits": len(eager.cumulative_flops),
            "exits_used": int((np.bincount(pt.exits) > 0).sum()),
            "test_accuracy_torch": float((pt.labels == labels[: len(big)]).mean()),
            "test_accuracy_onnx": float((po.labels == labels[: len(big)]).mean()),
            "test_mflops": float(pt.flops.mean() / 1e6),
            "differ_batch": differing(pt, po),
            "differ_batch1": differing(p1t, p1o),
            "batch1_torch_ms": single["torch"],
            "batch1_onnx_ms": single["onnx"],
            f"batch{args.batch}_torch_ms": batched["torch"],
            f"batch{args.batch}_onnx_ms": batched["onnx"],
        }
        row["batch1_ratio"] = row["batch1_onnx_ms"] / row["batch1_torch_ms"]
        row[f"batch{args.batch}_ratio"] = (
            row[f"batch{args.batch}_onnx_ms"] / row[f"batch{args.batch}_torch_ms"]
        )
        rows.append(row)
        tqdm.write(
            f"{budget:.4g} MFLOPs: onnx/torch {row['batch1_ratio']:.3f} at batch 1, "
            f"{row[f'batch{args.batch}_ratio']:.3f} at batch {args.batch}; "
            f"{row['differ_batch'] + row['differ_batch1']} images differ"
        )
    return rows


def ensure_profile(args, run: Path, study, runtime: str) -> bool:
    """Measure and store the profile of ``runtime`` (``--device`` for torch, ``--onnx-device``
    for onnx) when the study has none, or always with ``--reprofile``; True when measured."""
    device = args.device if runtime == "torch" else args.onnx_device
    known = device in open_store(args.url).list_devices(study.name)
    if known and not args.reprofile:
        return False
    print(
        f"measuring profile {device!r} of study {study.name!r} with {runtime} "
        f"({args.threads} threads, {args.profile_repeats} repeats) into {args.url}"
    )
    model, _, _ = open_run(run, args.storage)
    repeats = args.profile_repeats
    settings = ProfileSettings(
        repeats=repeats, passes=min(10, repeats), threads=args.threads, runtime=runtime
    )
    start = time.perf_counter()
    _, configs = profile_run(run, study, model, args.url, device, settings, replace=known)
    print(f"profiled {configs} configs with {runtime} in {time.perf_counter() - start:.0f} s")
    return True


def adherence(args, run: Path, study, images: torch.Tensor, runtime: str, tmp: Path) -> dict:
    """Part 2 for one runtime: latency budgets on its profile, measured at batch size 1."""
    device = args.device if runtime == "torch" else args.onnx_device
    front = front_costs(run, study, args.url, device)
    threads = front["threads"]
    top = front[f"best_{args.up_to}_ms"]
    spread = np.linspace(front["cheapest_ms"], top, args.latency_budgets)
    budgets = args.budgets_ms or [float(b) for b in spread]
    small = images[: args.batch1_images]
    small_np = small.numpy()
    torch.set_num_threads(threads)
    rows = []
    for i, budget in enumerate(tqdm(budgets, desc=f"budgets: {runtime}", unit="bundle")):
        try:
            result = query_run(run, Budget("ms", budget), device=device, storage=args.storage)
        except BudgetError as err:
            tqdm.write(f"skipped {budget:.4g} ms on {device!r}: {err}")
            rows.append({"budget_ms": budget, "skipped": str(err)})
            continue
        out = export(result, run, tmp / f"{runtime}-{i}", runtime)
        if runtime == "torch":
            predict = partial(exitnas.load(out).predict, small, 1)
        else:
            predict = partial(load_onnx(out, threads=threads).predict, small_np, 1)
        prediction = predict()  # warm-up; its exits give the test images' expected latency
        seconds = alternate({runtime: predict}, args.rounds, warmup=False)[runtime]
        measured = seconds * 1e3 / len(small)
        stage_ms = result.answer.stage_ms
        fractions = np.bincount(prediction.exits, minlength=len(stage_ms)) / len(small)
        row = {
            "budget_ms": budget,
            **answer_row(result),
            "predicted_test_ms": expected_ms(stage_ms, fractions),
            "measured_ms": measured,
            "measured_over_budget": measured / budget,
            "measured_over_predicted": measured / result.answer.latency_ms,
        }
        rows.append(row)
        tqdm.write(
            f"{runtime} {budget:.4g} ms: predicted {row['predicted_ms']:.4g}, measured "
            f"{measured:.4g} ({row['measured_over_budget']:.3f} x budget)"
        )
    torch.set_num_threads(args.threads)
    done = [r for r in rows if "measured_ms" in r]
    ratios = [r["measured_over_budget"] for r in done]
    over_10 = sum(r > OVER for r in ratios)
    return {
        "runtime": runtime,
        "device": device,
        "threads": threads,
        "front": front,
        "up_to": args.up_to,
        "top_ms": top,
        "rows": rows,
        "summary": {
            "budgets": len(done),
            "skipped": len(rows) - len(done),
            "over": sum(r > 1 for r in ratios),
            "over_10pct": over_10,
            "worst_over_budget": max(ratios, default=None),
            "median_over_predicted": statistics.median([r["measured_over_predicted"] for r in done])
            if done
            else None,
            "target_met": bool(done) and over_10 * 10 <= len(done),
        },
    }


def speed_summary(rows: list[dict], batch: int) -> dict:
    """Range of the onnx/torch ratios and the images whose exit or label differ."""
    done = [r for r in rows if "skipped" not in r]
    summary: dict[str, Any] = {
        "bundles": len(done),
        "images_differ": sum(r["differ_batch"] + r["differ_batch1"] for r in done),
    }
    for size in (1, batch):
        ratios = [r[f"batch{size}_ratio"] for r in done]
        summary[f"batch{size}_ratio_min"] = min(ratios, default=None)
        summary[f"batch{size}_ratio_max"] = max(ratios, default=None)
    return summary


def print_speed(rows: list[dict], summary: dict, batch: int) -> None:
    print(
        f"\n| budget MFLOPs | config | rule | test acc | test MFLOPs | differ | b=1 torch ms | "
        f"b=1 onnx ms | b=1 onnx/torch | b={batch} torch ms | b={batch} onnx ms | "
        f"b={batch} onnx/torch |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['budget_mflops']:.4g} | skipped: {r['skipped']} |")
            continue
        print(
            f"| {r['budget_mflops']:.4g} | {r['config']} | {r['rule']} | "
            f"{r['test_accuracy_torch']:.4f} | {r['test_mflops']:.4g} | "
            f"{r['differ_batch'] + r['differ_batch1']} | {r['batch1_torch_ms']:.4g} | "
            f"{r['batch1_onnx_ms']:.4g} | {r['batch1_ratio']:.3f} | "
            f"{r[f'batch{batch}_torch_ms']:.4g} | {r[f'batch{batch}_onnx_ms']:.4g} | "
            f"{r[f'batch{batch}_ratio']:.3f} |"
        )
    if summary["bundles"]:
        ranges = ", ".join(
            f"{summary[f'batch{size}_ratio_min']:.3f}-{summary[f'batch{size}_ratio_max']:.3f} at "
            f"batch {size}"
            for size in (1, batch)
        )
        print(
            f"\nonnx/torch ms per image over {summary['bundles']} bundles: {ranges} (target: "
            f"below 1); images with another exit or label: {summary['images_differ']} "
            "(target: 0)"
        )


def print_adherence(part: dict) -> None:
    front, s = part["front"], part["summary"]
    print(
        f"\n{part['runtime']} profile {part['device']!r} ({part['threads']} thread(s)): budgets "
        f"from the cheapest achievable {front['cheapest_ms']:.4g} ms to the most accurate "
        f"point's {part['up_to']} latency {part['top_ms']:.4g} ms"
    )
    print(
        "\n| budget ms | config | rule | predicted ms (val) | predicted ms (test exits) | "
        "measured ms | measured/budget | measured/predicted |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for r in part["rows"]:
        if "skipped" in r:
            print(f"| {r['budget_ms']:.4g} | skipped: {r['skipped']} |")
            continue
        print(
            f"| {r['budget_ms']:.4g} | {r['config']} | {r['rule']} | {r['predicted_ms']:.4g} | "
            f"{r['predicted_test_ms']:.4g} | {r['measured_ms']:.4g} | "
            f"{r['measured_over_budget']:.3f} | {r['measured_over_predicted']:.3f} |"
        )
    if s["budgets"]:
        verdict = "met" if s["target_met"] else "NOT met"
        print(
            f"\n{part['runtime']}: {s['over']} of {s['budgets']} budgets exceeded, "
            f"{s['over_10pct']} by more than 10 %, worst measured/budget "
            f"{s['worst_over_budget']:.3f}, median measured/predicted "
            f"{s['median_over_predicted']:.3f} (target at most 1 in 10 over by > 10 %: {verdict})"
        )


def main() -> None:
    args = parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = args.run
    _, study, args.url = open_run(run, args.storage)
    args.onnx_device = args.onnx_device or f"{args.device}-onnx"
    splits, _ = load_searched(study, run, args.url)
    images, labels = splits.test.images, splits.test.labels.numpy()
    args.images = min(args.images, len(images))
    args.batch1_images = min(args.batch1_images, len(images))
    print(
        f"run {run} ({study.name}), test split {len(images)} images: {args.images} at batch "
        f"{args.batch}, the first {args.batch1_images} at batch 1; median of {args.rounds} rounds"
    )
    result: dict[str, Any] = {
        "run": str(run),
        "study": study.name,
        "device": args.device,
        "onnx_device": args.onnx_device,
        "threads": args.threads,
        "images": args.images,
        "batch": args.batch,
        "batch1_images": args.batch1_images,
        "rounds": args.rounds,
        "host": {
            "platform": platform.platform(),
            "cpus": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
    with tempfile.TemporaryDirectory(prefix="onnx-runtime-") as folder:
        tmp = Path(folder)
        if "speed" not in args.skip:
            result["speed"] = speed(args, run, study, images, labels, tmp)
            result["speed_summary"] = speed_summary(result["speed"], args.batch)
            print_speed(result["speed"], result["speed_summary"], args.batch)
        if "budgets" not in args.skip:
            result["torch_profile_measured_here"] = ensure_profile(args, run, study, "torch")
            result["onnx_profile_measured_here"] = ensure_profile(args, run, study, "onnx")
            result["budgets"] = [
                adherence(args, run, study, images, runtime, tmp) for runtime in RUNTIMES
            ]
            for part in result["budgets"]:
                print_adherence(part)
    out = args.out or Path(__file__).with_name(f"onnx_runtime_{study.name}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
