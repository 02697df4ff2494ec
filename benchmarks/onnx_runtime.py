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
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import optuna
import torch
from onnx_runtime_budgets import (
    adherence,
    alternate,
    answer_row,
    ensure_profile,
    export,
    front_costs,
    print_adherence,
)
from tqdm.auto import tqdm

import exitnas
from exitnas.deploy import load_onnx
from exitnas.jobs.query import query_budget
from exitnas.runs import Run
from exitnas.search.budget import Budget, BudgetError

FRACTIONS = (0.3, 0.6, 1.0)  # speed budgets: from the cheapest (0) to the top (1) of the front
RUNTIMES = ("torch", "onnx")


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


def speed(args, run: Run, images: torch.Tensor, labels: np.ndarray, tmp: Path) -> list:
    """Part 1: torch eager against ONNX Runtime on the bundles of the FLOPs budgets."""
    front = front_costs(run, args.device)
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
            result = query_budget(run, Budget("mflops", budget), device=args.device)
        except BudgetError as err:
            tqdm.write(f"skipped {budget:.4g} MFLOPs: {err}")
            rows.append({"budget_mflops": budget, "skipped": str(err)})
            continue
        out = export(result, tmp / f"speed-{i}", "both")
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


def main() -> None:
    args = parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Run.open(args.run, args.storage)
    study, args.url = run.study, run.url
    args.onnx_device = args.onnx_device or f"{args.device}-onnx"
    splits = run.splits
    images, labels = splits.test.images, splits.test.labels.numpy()
    args.images = min(args.images, len(images))
    args.batch1_images = min(args.batch1_images, len(images))
    print(
        f"run {run.path} ({study.name}), test split {len(images)} images: {args.images} at batch "
        f"{args.batch}, the first {args.batch1_images} at batch 1; median of {args.rounds} rounds"
    )
    result: dict[str, Any] = {
        "run": str(run.path),
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
            result["speed"] = speed(args, run, images, labels, tmp)
            result["speed_summary"] = speed_summary(result["speed"], args.batch)
            print_speed(result["speed"], result["speed_summary"], args.batch)
        if "budgets" not in args.skip:
            result["torch_profile_measured_here"] = ensure_profile(args, run, "torch")
            result["onnx_profile_measured_here"] = ensure_profile(args, run, "onnx")
            result["budgets"] = [adherence(args, run, images, runtime, tmp) for runtime in RUNTIMES]
            for part in result["budgets"]:
                print_adherence(part)
    out = args.out or Path(__file__).with_name(f"onnx_runtime_{study.name}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
