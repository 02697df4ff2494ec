"""The ``exitnas export`` subcommand: a bundle of one Pareto point, or the whole front as JSON.

With ``--budget-ms`` (and ``--device``) or ``--budget-mflops`` the bundle is the answer of the
budget query (:func:`~exitnas.policies.policy_cli.query_run`): the chosen configuration with its
calibrated exit rule, and the learned policy when that rule is the one chosen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exitnas.argtypes import add_threads_argument
from exitnas.policies.policy_cli import add_rule_argument
from exitnas.threads import use_threads

__all__ = ["add_export_parser", "run_export", "write_bundle"]


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
    export.add_argument(
        "--study", type=Path, required=True, help="run folder, e.g. runs/quickstart"
    )
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
    export.add_argument(
        "--storage", help="SQLAlchemy URL (default: the search's, sqlite:///RUN_DIR/study.db)"
    )
    export.add_argument("--data", type=Path, help="image folder or tar tree; overrides data.path")
    add_threads_argument(export, study_field=False)
    export.add_argument("--quiet", action="store_true", help="no progress bars")
    export.set_defaults(handler=run_export)
    return export


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``exitnas export``; prints one summary line and returns 0."""
    import optuna

    from exitnas.search.export import (
        ExportError,
        check_out_dir,
        export_bundle,
        export_front_json,
        pareto_points,
        select_point,
    )
    from exitnas.search.objective import file_sha256
    from exitnas.search.runner import load_searched, open_run
    from exitnas.supernet.train import WEIGHTS

    use_threads(args.threads)
    run = Path(args.study)
    if args.budget_ms is not None or args.budget_mflops is not None:
        return _export_budget(args, run)
    if args.rule is not None:
        raise ExportError("--rule goes with --budget-ms or --budget-mflops")
    if args.device is not None and not args.pareto:
        raise ExportError("--device goes with --pareto, --budget-ms or --budget-mflops")
    model, study, url = open_run(run, args.storage, args.data)
    splits, optuna_study = load_searched(study, run, url, args.device, progress=not args.quiet)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = pareto_points(optuna_study, study.space)
    if args.pareto:
        on = ""
        if args.device is not None:  # each point's expected latency on the device
            from exitnas.policies.costs import with_latency
            from exitnas.search.runner import load_latency

            points = with_latency(points, load_latency(study, url, args.device), study.space)
            on = f", latency on {args.device!r}"
        export_front_json(points, args.out)
        print(f"Pareto front of {study.name!r}: {len(points)} points{on} -> {args.out}")
        return 0
    point = select_point(points, args.select, args.pareto_index)
    weights_hash = file_sha256(run / WEIGHTS)
    out = check_out_dir(args.out)
    write_bundle(
        out,
        args.format,
        lambda folder: export_bundle(
            point, model, study, folder, weights_hash=weights_hash, mean=splits.mean, std=splits.std
        ),
    )
    print(
        f"exported point {point.index} of {len(points)} (trial {point.trial_number}): "
        f"accuracy {point.accuracy:.4f}, {point.mflops:.4g} MFLOPs/image -> {out}{_as(args)}"
    )
    return 0


def _as(args: argparse.Namespace) -> str:
    return {"torch": "", "onnx": " (ONNX)", "both": " (safetensors + ONNX)"}[args.format]


def write_bundle(out: Path, fmt: str, write: Callable[[Path], Path]) -> Path:
    """Write a bundle in ``fmt`` (``--format``) to ``out`` with ``write(folder)``, which writes
    the safetensors bundle.

    ``onnx`` and ``both`` write the safetensors bundle into a hidden sibling first and the
    ONNX bundle from it (:func:`exitnas.deploy.export_onnx`, every stage graph checked against
    torch), so a failed export leaves nothing at ``out``.
    """
    if fmt == "torch":
        return write(out)
    import shutil
    import tempfile

    from exitnas.deploy import export_onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".torch", dir=out.parent))
    try:
        written = write(staging / "bundle")
        return export_onnx(written, out, torch_files=fmt == "both")
    finally:
        shutil.rmtree(staging)


def _export_budget(args: argparse.Namespace, run: Path) -> int:
    """``--budget-...``: export the budget query's answer."""
    import optuna

    from exitnas.policies.policy_cli import (
        DEFAULT_POLICY,
        budget_from_args,
        export_query_result,
        query_run,
    )
    from exitnas.search.export import check_out_dir

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = check_out_dir(args.out)  # before the query's work
    result = query_run(
        run,
        budget_from_args(args),
        device=args.device,
        storage=args.storage,
        data=args.data,
        policy=None if args.no_policy else DEFAULT_POLICY,
        rule=args.rule,
        progress=not args.quiet,
    )
    write_bundle(out, args.format, lambda folder: export_query_result(result, run, folder))
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
