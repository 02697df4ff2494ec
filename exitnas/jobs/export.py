"""Exporting from a run: one Pareto point as a bundle, or the whole front as JSON.

A budget query's answer is exported by :func:`exitnas.jobs.query.export_answer`.

Example:
    >>> run = Run.open("runs/quickstart")
    >>> points = front(run)
    >>> export_point(run, select_point(points, "mflops<=40"), Path("bundles/q"), "torch")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exitnas.runs import Run
    from exitnas.search.front import ParetoPoint

__all__ = ["export_front", "export_point", "front"]


def front(run: Run, device: str | None = None) -> list[ParetoPoint]:
    """The run's Pareto points, cheapest first (of its device search when there is one).

    Args:
        device: prefer the search for this device (``search --device``), and give each point
            its expected latency on the device.
    """
    from exitnas.search.front import pareto_points, with_latency

    points = pareto_points(run.searched(device), run.study.space)
    if device is None:
        return points
    return with_latency(points, run.device_costs(device), run.study.space)


def export_front(run: Run, out: Path, device: str | None = None) -> list[ParetoPoint]:
    """Write the run's Pareto front as JSON (``export --pareto``); returns its points."""
    from exitnas.search.front import export_front_json

    points = front(run, device)
    export_front_json(points, out)
    return points


def export_point(
    run: Run,
    point: ParetoPoint,
    out: Path,
    fmt: str = "torch",
    *,
    policy: bytes | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle of one Pareto point (with the rule and thresholds it holds) at ``out``.

    Args:
        fmt: ``torch`` (safetensors, for ``exitnas.load``), ``onnx`` or ``both``.
        policy: skops bytes of the learned policy, when the point's rule is ``learned``.
        extra: more entries for the bundle's ``config.json`` (e.g. ``budget_query``).
    """
    from exitnas.deploy.write import export_bundle, write_bundle

    splits = run.splits
    return write_bundle(
        out,
        fmt,
        lambda folder: export_bundle(
            point,
            run.supernet,
            run.study,
            folder,
            weights_hash=run.weights_sha256,
            mean=splits.mean,
            std=splits.std,
            policy=policy,
            extra=extra,
        ),
    )
