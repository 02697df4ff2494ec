"""The Pareto front of a searched study: its points, selecting one, and the front as JSON.

:func:`front_trials` reads the non-dominated trials once, told apart by the configuration an
image can actually reach (:func:`reachable`: an exit with threshold 0 takes every image), and
every count of the front (search summary, report, front.json, ``exitnas run``'s table) comes
from it. :func:`pareto_points` turns them into :class:`ParetoPoint` records, cheapest first;
:func:`select_point` picks one by ``--select`` constraints or index; :func:`with_latency` adds
a device's expected latency. Bundles are written by :mod:`exitnas.deploy.write`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import optuna

import exitnas
from exitnas.devices.costs import DeviceCosts, expected_ms
from exitnas.errors import ExitnasError
from exitnas.exits.rules import ExitRule
from exitnas.search.encoding import trial_config
from exitnas.search.objective import TRIAL_ATTR
from exitnas.spaces import SearchSpace, SubnetConfig
from exitnas.supernet import count_flops
from exitnas.supernet.checkpoint import atomic_write_text

__all__ = [
    "FRONT_FORMAT",
    "ExportError",
    "ParetoPoint",
    "export_front_json",
    "front_trials",
    "pareto_points",
    "reachable",
    "read_front_json",
    "select_point",
]

FRONT_FORMAT = 1  # version of the front JSON (export --pareto, RUN/deploy/front.json)
SELECT_FORMS = "accuracy|flops|mflops followed by <=, <, >= or > and a number, comma-separated"
_CONSTRAINT = re.compile(r"^\s*(accuracy|mflops|flops)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


class ExportError(ExitnasError):
    """No point to export, a selection nothing satisfies, or an output that already exists."""


@dataclass(frozen=True)
class ParetoPoint:
    """One point of a study's Pareto front."""

    index: int  # position in the front, sorted by MFLOPs ascending
    trial_number: int  # the Optuna trial it comes from
    config: SubnetConfig
    rule: ExitRule
    accuracy: float  # validation accuracy under ``rule``
    mflops: float  # expected MFLOPs per image under ``rule``
    exit_fractions: tuple[float, ...]  # share of validation samples leaving at each exit
    stage_flops: tuple[int, ...]  # analytic FLOPs per image of each stage
    latency_ms: float | None = None  # expected ms per image on the device of a device search

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "trial_number": self.trial_number,
            "config": self.config.to_dict(),
            "rule": self.rule.to_dict(),
            "accuracy": self.accuracy,
            "mflops": self.mflops,
            "exit_fractions": list(self.exit_fractions),
            "stage_flops": list(self.stage_flops),
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParetoPoint:
        return cls(
            index=int(data["index"]),
            trial_number=int(data["trial_number"]),
            config=SubnetConfig.from_dict(data["config"]),
            rule=ExitRule.from_dict(data["rule"]),
            accuracy=float(data["accuracy"]),
            mflops=float(data["mflops"]),
            exit_fractions=tuple(float(f) for f in data["exit_fractions"]),
            stage_flops=tuple(int(f) for f in data["stage_flops"]),
            latency_ms=None if data.get("latency_ms") is None else float(data["latency_ms"]),
        )


def front_trials(
    optuna_study: optuna.Study, space: SearchSpace | None = None
) -> list[optuna.trial.FrozenTrial]:
    """The study's Pareto-optimal trials, one per distinct point, in trial-number order.

    Optuna's ``best_trials`` keeps every trial of a point that was sampled again, and trials
    whose configurations differ only after an exit that every image leaves at (threshold 0)
    are the same model at the same cost. The first trial of each point stands for it: points
    are told apart by their reachable configuration, exit rule and thresholds
    (:func:`reachable`; by parameters when no ``space`` is given). Every count of "points on
    the Pareto front" (search summary, report, front JSON, ``exitnas run``'s table) is ``len``
    of this list.
    """
    seen: set[str] = set()
    trials = []
    for trial in sorted(optuna_study.best_trials, key=lambda t: t.number):
        if space is None:
            key = json.dumps(trial.params, sort_keys=True, default=str)
        else:
            config, rule = reachable(*trial_config(trial, space), space)
            key = json.dumps([config.key(), rule.to_dict()], sort_keys=True)
        if key not in seen:
            seen.add(key)
            trials.append(trial)
    return trials


def reachable(
    config: SubnetConfig, rule: ExitRule, space: SearchSpace
) -> tuple[SubnetConfig, ExitRule]:
    """The part of ``config`` that images reach under ``rule``, as a configuration of its own.

    An exit (not the last) whose threshold is 0 or less takes every image (confidences and
    policy scores are never negative), so the exits after it never run. The result ends
    there; a branch that no longer reaches a keep layer keeps all its tokens, and a single
    branch has nothing to reuse. Same predictions and the same cost as ``(config, rule)``.
    """
    cut = next((k for k, t in enumerate(rule.thresholds) if t <= 0), len(rule.thresholds))
    if cut == len(rule.thresholds):
        return config, rule
    exits = config.exits[: cut + 1]
    last = exits[-1][0]
    branches = []
    for b, branch in enumerate(config.branches[: last + 1]):
        kept = tuple(e for i, e in exits if i == b)
        keeps = any(layer <= kept[-1].layer for layer in space.keep_layers)
        branches.append(
            dc_replace(branch, exits=kept, keep_rate=branch.keep_rate if keeps else 1.0)
        )
    reuse = config.reuse if len(branches) > 1 else True
    return SubnetConfig(tuple(branches), reuse), ExitRule(rule.rule, rule.thresholds[:cut])


def pareto_points(optuna_study: optuna.Study, space: SearchSpace) -> list[ParetoPoint]:
    """The study's Pareto front, one point per distinct parameter set, cheapest first.

    Args:
        optuna_study: a study searched by :func:`~exitnas.search.run_search`.
        space: the study's search space.

    Returns:
        Points sorted by MFLOPs ascending (then accuracy descending), ``index`` set to that order;
        in a device search (three objectives) the front is three-dimensional and each point
        has its ``latency_ms``.

    Raises:
        ExportError: the study has no completed trial.
    """
    complete = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ExportError(f"study {optuna_study.study_name!r} has no completed trials; run search")
    trials = front_trials(optuna_study, space)
    trials.sort(key=lambda t: (t.values[1], -t.values[0], t.number))
    points = []
    for index, trial in enumerate(trials):
        config, rule = trial_config(trial, space)
        attr = trial.user_attrs.get(TRIAL_ATTR, {})
        points.append(
            ParetoPoint(
                index=index,
                trial_number=trial.number,
                config=config,
                rule=rule,
                accuracy=float(trial.values[0]),
                mflops=float(trial.values[1]),
                exit_fractions=tuple(float(f) for f in attr.get("exit_fractions", ())),
                stage_flops=count_flops(space, config),
                latency_ms=float(trial.values[2]) if len(trial.values) > 2 else None,
            )
        )
    return points


def select_point(
    points: Sequence[ParetoPoint], select: str | None = None, index: int | None = None
) -> ParetoPoint:
    """Pick one point of a front: by index, by constraints, or the most accurate.

    Args:
        points: the front from :func:`pareto_points`.
        select: comma-separated constraints such as ``"mflops<=40,accuracy>=0.9"`` on
            ``accuracy``, ``flops`` (per image) or ``mflops``; the most accurate point meeting
            all of them is returned (the cheaper one among ties).
        index: a point's ``index`` (``--pareto-index``); not together with ``select``.

    Returns:
        The chosen point.

    Raises:
        ExportError: empty front, malformed selection, index out of range, or no point
            satisfying the selection.
    """
    if not points:
        raise ExportError("the Pareto front is empty; run exitnas search")
    if select is not None and index is not None:
        raise ExportError("give --select or --pareto-index, not both")
    if index is not None:
        if not 0 <= index < len(points):
            raise ExportError(
                f"--pareto-index {index} is out of range; valid: 0..{len(points) - 1}"
            )
        return points[index]
    constraints = _parse_select(select) if select is not None else []
    chosen = [p for p in points if all(_holds(p, *c) for c in constraints)]
    if not chosen:
        cheapest = min(points, key=lambda p: (p.mflops, -p.accuracy))
        best = max(points, key=lambda p: (p.accuracy, -p.mflops))
        raise ExportError(
            f"no Pareto point satisfies {select!r}; available: cheapest {cheapest.mflops:.4g} "
            f"MFLOPs (accuracy {cheapest.accuracy:.4f}), most accurate {best.accuracy:.4f} "
            f"({best.mflops:.4g} MFLOPs)"
        )
    return max(chosen, key=lambda p: (p.accuracy, -p.mflops, -p.index))


def _parse_select(select: str) -> list[tuple[str, str, float]]:
    constraints = []
    for part in select.split(","):
        match = _CONSTRAINT.match(part)
        value = _number(match.group(3)) if match else None
        if match is None or value is None:
            raise ExportError(f"--select: cannot read {part.strip()!r}; allowed: {SELECT_FORMS}")
        constraints.append((match.group(1), match.group(2), value))
    return constraints


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _holds(point: ParetoPoint, name: str, op: str, bound: float) -> bool:
    value = {"accuracy": point.accuracy, "mflops": point.mflops, "flops": point.mflops * 1e6}[name]
    if op == "<=":
        return value <= bound
    if op == "<":
        return value < bound
    if op == ">=":
        return value >= bound
    return value > bound


def export_front_json(points: Sequence[ParetoPoint], path: str | Path) -> Path:
    """Write the whole front to the JSON file ``path`` (atomically, never overwriting).

    Args:
        points: the front from :func:`pareto_points`.
        path: new JSON file.

    Returns:
        ``path``.

    Raises:
        ExportError: ``path`` already exists.
    """
    path = Path(path)
    if path.exists():
        raise ExportError(f"{path} already exists; choose another --out or remove it")
    document = {
        "format": FRONT_FORMAT,
        "exitnas_version": exitnas.__version__,
        "points": [p.to_dict() for p in points],
    }
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return path


def read_front_json(path: str | Path) -> list[ParetoPoint]:
    """Read a front written by :func:`export_front_json`.

    Raises:
        ExportError: unreadable file or unknown format version.
    """
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read front {path}: {err}") from None
    if document.get("format") != FRONT_FORMAT:
        raise ExportError(
            f"{path}: front format {document.get('format')!r} is not supported; "
            f"supported: {FRONT_FORMAT}"
        )
    return [ParetoPoint.from_dict(p) for p in document["points"]]


def with_latency(
    points: Sequence[ParetoPoint], costs: DeviceCosts, space: SearchSpace
) -> list[ParetoPoint]:
    """``points`` with ``latency_ms`` set from ``costs`` (the device's current profile).

    A device search's trials carry the latency of the profile at search time; this recomputes
    it, so that the front JSON, the printed table and a budget answer agree on one profile.
    """
    return [
        replace(
            p,
            latency_ms=expected_ms(
                costs.rule_stage_ms(space, p.config, p.rule.rule), p.exit_fractions
            ),
        )
        for p in points
    ]
