"""Part 2 of ``onnx_runtime.py`` (budget adherence), and what both of its parts share.

- Budget adherence: for latency budgets spread over a study's front, ``policy query --budget-ms``
  answers on a torch profile and on an ONNX profile (measured first when the study has none:
  :func:`ensure_profile`), and each answer's bundle is timed at batch size 1 with the runtime
  its profile used (:func:`adherence`, :func:`print_adherence`).
- Shared with part 1 (speed): the front's cheapest and top costs (:func:`front_costs`), an
  answer's bundle (:func:`export`) and its row (:func:`answer_row`), and timing in alternating
  rounds (:func:`alternate`).

Run ``python benchmarks/onnx_runtime.py``; this module has no command line of its own.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from presets import describe
from tqdm.auto import tqdm

import exitnas
from exitnas.deploy import load_onnx
from exitnas.devices.costs import expected_ms
from exitnas.jobs.profile import ProfileSettings, profile_device
from exitnas.jobs.query import QueryResult, export_answer, query_budget
from exitnas.runs import Run
from exitnas.search.budget import Budget, BudgetError
from exitnas.search.front import pareto_points

OVER = 1.10  # "over by more than 10 %"


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


def front_costs(run: Run, device: str) -> dict[str, Any]:
    """The front a query on ``device`` chooses from (its device search's when there is one),
    with the cheapest achievable ms and the most accurate point's expected and full cost."""
    study, costs = run.study, run.device_costs(device)
    points = pareto_points(run.searched(device), study.space)
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


def export(result: QueryResult, out: Path, fmt: str) -> Path:
    """The answer's bundle in ``fmt`` (``exitnas export --format``)."""
    return export_answer(result, out, fmt)


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


def ensure_profile(args, run: Run, runtime: str) -> bool:
    """Measure and store the profile of ``runtime`` (``--device`` for torch, ``--onnx-device``
    for onnx) when the study has none, or always with ``--reprofile``; True when measured."""
    device = args.device if runtime == "torch" else args.onnx_device
    study = run.study
    known = device in run.store.list_devices(study.name)
    if known and not args.reprofile:
        return False
    print(
        f"measuring profile {device!r} of study {study.name!r} with {runtime} "
        f"({args.threads} threads, {args.profile_repeats} repeats) into {args.url}"
    )
    repeats = args.profile_repeats
    settings = ProfileSettings(
        repeats=repeats, passes=min(10, repeats), threads=args.threads, runtime=runtime
    )
    start = time.perf_counter()
    _, configs = profile_device(run, device, settings, replace=known)
    print(f"profiled {configs} configs with {runtime} in {time.perf_counter() - start:.0f} s")
    return True


def adherence(args, run: Run, images: torch.Tensor, runtime: str, tmp: Path) -> dict:
    """Part 2 for one runtime: latency budgets on its profile, measured at batch size 1."""
    device = args.device if runtime == "torch" else args.onnx_device
    front = front_costs(run, device)
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
            result = query_budget(run, Budget("ms", budget), device=device)
        except BudgetError as err:
            tqdm.write(f"skipped {budget:.4g} ms on {device!r}: {err}")
            rows.append({"budget_ms": budget, "skipped": str(err)})
            continue
        out = export(result, tmp / f"{runtime}-{i}", runtime)
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
