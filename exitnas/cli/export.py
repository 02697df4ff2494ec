"""The ``exitnas export`` subcommand: a bundle of one Pareto point, or the whole front as JSON.

With ``--budget-ms`` (and ``--device``) or ``--budget-mflops`` the bundle is the answer of the
budget query (:func:`~exitnas.jobs.query.query_budget`): the chosen configuration with its
calibrated exit rule, and the learned policy when that rule is the one chosen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from exitnas.cli.options import add_run_arguments, add_threads_argument, open_run
from exitnas.cli.policy import add_rule_argument, budget_from_args
from exitnas.threads import use_threads

__all__ = ["add_export_parser", "run_export"]


def add_export_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``exitnas export`` on the subparsers object ``commands``.

    Args:
        commands: what ``ArgumentParser.add_subparsers`` returned.

    Returns:
        The ``export`` parser (its handler is set as ``handler``).
    """
    export = commands.add_parser(
        "export", help="export a Pareto point as a deployable bundle, or the front as JSON"
    )
    add_run_arguments(export)
    export.add_argument(
        "--out", type=Path, required=True, help="bundle folder (or JSON file with --pareto)"
    )
    which = export.add_mutually_exclusive_group()
    which.add_argument(
        "--select", help='constraints, e.g. "mflops<=40,accuracy>=0.9" (default: most accurate)'
    )
    which.add_argument("--pareto-index", type=int, help="point index, cheapest first")
    which.add_argument("--pareto", action="store_true", help="write the whole front as JSON")
    which.add_argument(
        "--budget-ms",
        type=float,
        metavar="MS",
        help="the budget query's answer: expected latency per image on --device",
    )
    which.add_argument(
        "--budget-mflops",
        type=float,
        metavar="MFLOPS",
        help="the budget query's answer: expected MFLOPs per image",
    )
    export.add_argument(
        "--device",
        metavar="NAME",
        help="a device profiled for the study: with --budget-..., or with --pareto for each "
        "point's expected latency",
    )
    export.add_argument(
        "--no-policy", action="store_true", help="budget query: offer only confidence rules"
    )
    add_rule_argument(export)
    export.add_argument(
        "--format",
        choices=("torch", "onnx", "both"),
        default="torch",
        help="bundle contents: safetensors weights for exitnas.load (torch, default), one ONNX "
        "graph per stage with a runtime needing only NumPy and ONNX Runtime (onnx; the "
        "onnx extra), or both",
    )
    add_threads_argument(export, study_field=False)
    export.set_defaults(handler=run_export)
    return export


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``exitnas export``; prints one summary line and returns 0."""
    import optuna

    from exitnas.deploy.write import check_out_dir
    from exitnas.jobs.export import export_front, export_point, front
    from exitnas.search.front import ExportError, select_point

    use_threads(args.threads)
    if args.budget_ms is not None or args.budget_mflops is not None:
        return _export_budget(args)
    if args.rule is not None:
        raise ExportError("--rule goes with --budget-ms or --budget-mflops")
    if args.device is not None and not args.pareto:
        raise ExportError("--device goes with --pareto, --budget-ms or --budget-mflops")
    run = open_run(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.pareto:
        points = export_front(run, args.out, args.device)
        on = "" if args.device is None else f", latency on {args.device!r}"
        print(f"Pareto front of {run.study.name!r}: {len(points)} points{on} -> {args.out}")
        return 0
    points = front(run)
    point = select_point(points, args.select, args.pareto_index)
    out = check_out_dir(args.out)
    export_point(run, point, out, args.format)
    print(
        f"exported point {point.index} of {len(points)} (trial {point.trial_number}): "
        f"accuracy {point.accuracy:.4f}, {point.mflops:.4g} MFLOPs/image -> {out}{_as(args)}"
    )
    return 0


def _as(args: argparse.Namespace) -> str:
    return {"torch": "", "onnx": " (ONNX)", "both": " (safetensors + ONNX)"}[args.format]


def _export_budget(args: argparse.Namespace) -> int:
    """``--budget-...``: export the budget query's answer."""
    import optuna

    from exitnas.deploy.write import check_out_dir
    from exitnas.exits.options import DEFAULT_POLICY
    from exitnas.jobs.query import export_answer, query_budget

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = check_out_dir(args.out)  # before the query's work
    budget = budget_from_args(args)  # a budget's mistake first, before the run is opened
    result = query_budget(
        open_run(args),
        budget,
        device=args.device,
        policy=None if args.no_policy else DEFAULT_POLICY,
        rule=args.rule,
    )
    export_answer(result, out, args.format)
    runtime = result.device_runtime
    onnx = (runtime or "").startswith("onnxruntime")
    if runtime is not None and args.format != "both" and onnx != (args.format == "onnx"):
        print(
            f"exitnas: note: device {args.device!r} was profiled with {runtime}, this bundle "
            f"runs with {'ONNX Runtime' if args.format == 'onnx' else 'torch'}: its latency "
            "will differ from the answer's (profile it with --runtime "
            f"{'onnx' if args.format == 'onnx' else 'torch'}, or export --format both)",
            file=sys.stderr,
        )
    answer = result.answer
    latency = f", {answer.latency_ms:.3g} ms/image on {args.device}" if answer.latency_ms else ""
    print(
        f"exported the answer to {answer.budget.flag()}: point {answer.point.index} "
        f"(trial {answer.point.trial_number}), rule {answer.rule.rule}, validation accuracy "
        f"{answer.accuracy:.4f}, {answer.mflops:.4g} MFLOPs/image{latency} -> {out}{_as(args)}"
    )
    return 0
