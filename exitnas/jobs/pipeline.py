"""``exitnas run STUDY``: the whole job for one study file, end to end.

1. train the supernet (resumed from its checkpoint; a finished run is kept as it is);
2. search until the study holds ``search.trials`` completed trials (none added when it does);
3. profile this machine under a device name (kept when already profiled);
4. fit the learned exit policy (refitted when the supernet or data changed);
5. answer the study's default budget (``search.budget_mflops`` or ``search.budget_ms``; the
   most accurate configuration without one) and export its bundle, and the Pareto front as
   JSON, into ``RUN/deploy/``;
6. write ``RUN/report.html`` with the chosen point's trade-off;
7. print a summary table.

Steps 5 and 6 regenerate their outputs on every run (replacing the previous ones as a whole,
never half-written); steps 1 to 4 keep what is there. Re-running after a change of the study's
``search`` section therefore adds trials and refreshes the exports.

Example:
    exitnas run studies/quickstart.yaml
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exitnas.jobs.profile import ProfileSettings
    from exitnas.jobs.query import QueryResult
    from exitnas.runs import Run
    from exitnas.search.budget import Budget
    from exitnas.search.front import ParetoPoint
    from exitnas.spaces import StudyConfig

__all__ = ["DEPLOY", "PipelineSummary", "run_pipeline"]

DEPLOY = "deploy"  # RUN/deploy/: bundle/, front.json, answer.json
LOCAL_DEVICE = "local"  # device name of this machine's profile unless --device says otherwise


@dataclass(frozen=True)
class FrontRow:
    """One Pareto point in the summary table."""

    index: int
    trial_number: int
    accuracy: float  # validation accuracy under its searched rule
    mflops: float  # expected MFLOPs per image
    latency_ms: float  # expected ms per image on the profiled device
    exits_used: int  # exits at least one validation image leaves at
    rule: dict[str, Any]  # its searched exit rule (``ExitRule.to_dict()``)

    @classmethod
    def of(cls, point: ParetoPoint) -> FrontRow:
        """The row of a Pareto point whose latency is set (:func:`~exitnas.jobs.export.front`
        with a device)."""
        assert point.latency_ms is not None
        return cls(
            point.index,
            point.trial_number,
            point.accuracy,
            point.mflops,
            float(point.latency_ms),
            sum(f > 0 for f in point.exit_fractions),
            point.rule.to_dict(),
        )


@dataclass(frozen=True)
class PipelineSummary:
    """What ``exitnas run`` did and produced."""

    study_name: str
    run_dir: Path
    device: str
    trials_added: int
    trials_complete: int
    front: tuple[FrontRow, ...]
    answer: dict[str, Any]  # the budget query's answer, as in answer.json
    default_budget: bool  # the study set no budget: the most accurate point's full cost
    bundle: Path
    front_json: Path
    report: Path
    policy_note: str | None = None  # why no learned policy was fitted, if none was
    seconds: dict[str, float] = field(default_factory=dict)  # per step

    def table(self) -> str:
        """The summary as printed: the front, then the chosen bundle."""
        lines = [
            f"Pareto front of {self.study_name!r} ({self.trials_complete} trials, "
            f"{len(self.front)} points; latency on {self.device!r}, batch size 1):",
            "  point  trial  val acc   MFLOPs  latency ms  exits used",
        ]
        for row in self.front:
            lines.append(
                f"  {row.index:5d}  {row.trial_number:5d}  {row.accuracy:7.4f}  "
                f"{row.mflops:7.3f}  {row.latency_ms:10.3f}  {row.exits_used:10d}"
            )
        answer = self.answer
        expected = answer["expected"]
        budget = answer["budget"]
        latency = expected["latency_ms"]
        unit = {"mflops": "MFLOPs", "ms": "ms"}[budget["metric"]]
        wanted = (
            "no budget set (the most accurate point)"
            if self.default_budget
            else f"budget {budget['value']:g} {unit}/image"
        )
        point = self.front[answer["pareto_index"]]
        rule = answer["rule"]
        thresholds = ", ".join("never" if t is None else f"{t:.4g}" for t in rule["thresholds"])
        retuned = rule != point.rule
        how = f"thresholds ({thresholds}) calibrated for it" if retuned else "its own thresholds"
        lines.append(
            f"bundle {self.bundle} for {wanted}: point {answer['pareto_index']} "
            f"(trial {answer['trial_number']})'s configuration, rule {rule['rule']} at {how}: "
            f"val acc {expected['val_accuracy']:.4f}, {expected['mflops']:.3f} MFLOPs, "
            + (f"{latency:.3f} ms/image" if latency is not None else "latency n/a")
            + ", as predict gives on the validation split"
        )
        if self.policy_note:
            lines.append(self.policy_note)
        lines.append(f"front {self.front_json}; report {self.report}")
        steps = ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items())
        lines.append(f"time: {steps}")
        return "\n".join(lines)


def _replace_dir(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``, replacing a previous one as a whole."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


class _Stopwatch:
    """Seconds per step: ``lap(step)`` records the time since the previous lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, step: str) -> None:
        self.seconds[step] = round(time.perf_counter() - self._clock, 1)
        self._clock = time.perf_counter()


def _train(run: Run) -> None:
    """Train the supernet (resumed; kept when finished) on the splits the run then reuses."""
    from exitnas.search.objective import load_validation
    from exitnas.supernet import train_supernet

    run.splits = load_validation(run.study, run.progress)  # decoded once: training uses it too
    train_supernet(run.study, run.splits, run.path, progress=run.progress)


def _report(run: Run, device: str, result: QueryResult) -> Path:
    """``RUN/report.html``, its trade-off drawn for the deployed answer."""
    from exitnas.reports.info import build_report_info
    from exitnas.reports.plot import write_report

    chosen = result.answer.point.index, result.answer.rule, result.policy
    info = build_report_info(run.searched(device), run.study, run.evaluator, *chosen)
    return write_report(info, run.path / "report.html")


def _search(study: StudyConfig, run: Run, trials: int | None, progress: bool) -> tuple[int, int]:
    """Search until the study holds ``trials`` completed trials; (complete before, added)."""
    from exitnas.search.runner import run_search
    from exitnas.search.studies import completed_trials

    wanted = study.search.trials if trials is None else trials
    complete = completed_trials(study, run.url)
    if complete >= wanted:
        return complete, 0
    summary = run_search(study, run.path, trials=wanted - complete, progress=progress)
    return complete, summary.trials_added


def _profile(run: Run, device: str, settings: ProfileSettings | None, progress: bool) -> None:
    """Profile this machine as ``device`` unless a readable profile of it is stored."""
    from exitnas.devices.errors import ProfileError
    from exitnas.jobs.profile import ProfileSettings, profile_device

    name, store = run.study.name, run.store
    try:
        known = device in store.list_devices(name) and store.get_profile(name, device)
    except ProfileError:  # an unreadable (older format) profile: measure it again
        known = False
    if not known:
        replace = device in store.list_devices(name)
        profile_device(
            run, device, settings or ProfileSettings(), replace=replace, progress=progress
        )


def _fit(run: Run) -> str | None:
    """Fit the learned policy unless one fitted on these cached logits is stored; a note
    when none can be fitted."""
    from exitnas.exits.options import DEFAULT_POLICY, PolicyError
    from exitnas.jobs.fit import fit_policy

    stored = run.store.get_policy(run.study.name, DEFAULT_POLICY)
    if stored is None or stored.evaluation_key != run.evaluation_key:
        try:
            fit_policy(run, replace=stored is not None)
        except PolicyError as err:  # e.g. every Pareto architecture has a single exit
            return f"no learned policy: {err}"
    return None


def _default_budget(study: StudyConfig, points: list[ParetoPoint]) -> Budget:
    """The study's default budget; without one, the most accurate point's full cost."""
    from exitnas.search.budget import Budget

    if study.search.budget_ms is not None:
        return Budget("ms", study.search.budget_ms)
    if study.search.budget_mflops is not None:
        return Budget("mflops", study.search.budget_mflops)
    return Budget("mflops", max(sum(p.stage_flops) for p in points) / 1e6)


def _export(run: Run, points: list[ParetoPoint], result: QueryResult) -> Path:
    """Write front.json, the answer's bundle and answer.json into ``RUN/deploy/`` at once."""
    from exitnas.jobs.query import export_answer
    from exitnas.search.front import export_front_json

    deploy = run.path / DEPLOY
    staging = run.path / f".{DEPLOY}.new"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    export_front_json(points, staging / "front.json")
    export_answer(result, staging / "bundle")
    (staging / "answer.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    _replace_dir(staging, deploy)
    return deploy


def run_pipeline(
    study: StudyConfig,
    run_dir: str | Path,
    *,
    device: str = LOCAL_DEVICE,
    trials: int | None = None,
    profile_settings: ProfileSettings | None = None,
    progress: bool = True,
    rule: str | None = None,
) -> PipelineSummary:
    """Train, search, profile, fit the policy, export and report one study.

    Args:
        study: the study file.
        run_dir: the run folder.
        device: name of this machine's device profile.
        trials: completed trials the study should hold (default ``search.trials``).
        profile_settings: how to profile (defaults).
        progress: progress bars.
        rule: deploy only this exit rule (a confidence rule or ``learned``); by default the
            budget query chooses among each configuration's searched rule and the learned one.

    Returns:
        The :class:`PipelineSummary`.

    Raises:
        exitnas.errors.ExitnasError: anything the user can fix (data, budget, foreign run).
    """
    import optuna

    from exitnas.exits.options import DEFAULT_POLICY
    from exitnas.jobs.export import front
    from exitnas.jobs.query import query_budget
    from exitnas.runs import Run
    from exitnas.storage.urls import resolve_storage_url
    from exitnas.supernet.train import check_target
    from exitnas.threads import use_threads

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = Path(run_dir)
    check_target(study, path)
    use_threads(study.training.num_threads)  # training and search check it again as they go
    # the study file as it is (its search section may differ from the trained run's)
    run = Run(path, study, resolve_storage_url(None, study.search.storage, path), progress)
    lap = _Stopwatch()
    _train(run)
    lap("train")
    complete, added = _search(study, run, trials, progress)
    lap("search")
    _profile(run, device, profile_settings, progress)
    lap("profile")
    policy_note = _fit(run)
    lap("policy")
    # the front the query answers from: the device search's when there is one; every number
    # below (front.json, answer.json, the bundle, the report, the table) is computed once here
    points = front(run, device)
    default_budget = study.search.budget_ms is None and study.search.budget_mflops is None
    policy = None if policy_note else DEFAULT_POLICY
    result = query_budget(
        run, _default_budget(study, points), device=device, policy=policy, rule=rule
    )
    deploy = _export(run, points, result)
    lap("export")
    report = _report(run, device, result)
    lap("report")
    return PipelineSummary(
        study_name=study.name,
        run_dir=path,
        device=device,
        trials_added=added,
        trials_complete=complete + added,
        front=tuple(FrontRow.of(p) for p in points),
        answer=result.to_dict(),
        default_budget=default_budget,
        bundle=deploy / "bundle",
        front_json=deploy / "front.json",
        report=report,
        policy_note=policy_note,
        seconds=lap.seconds,
    )
