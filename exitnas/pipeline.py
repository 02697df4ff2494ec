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

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["DEPLOY", "PipelineSummary", "add_run_parser", "run_pipeline"]

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


def run_pipeline(
    study: Any,
    run_dir: str | Path,
    *,
    device: str = LOCAL_DEVICE,
    trials: int | None = None,
    profile_settings: Any = None,
    progress: bool = True,
    rule: str | None = None,
) -> PipelineSummary:
    """Train, search, profile, fit the policy, export and report one study.

    Args:
        study: the :class:`~exitnas.spaces.StudyConfig`.
        run_dir: the run folder.
        device: name of this machine's device profile.
        trials: completed trials the study should hold (default ``search.trials``).
        profile_settings: :class:`~exitnas.policies.profile_cli.ProfileSettings` (defaults).
        progress: progress bars.
        rule: deploy only this exit rule (a confidence rule or ``learned``); by default the
            budget query chooses among each configuration's searched rule and the learned one.

    Returns:
        The :class:`PipelineSummary`.

    Raises:
        exitnas.errors.ExitnasError: anything the user can fix (data, budget, foreign run).
    """
    import optuna

    from exitnas.policies.costs import load_device_costs, with_latency
    from exitnas.policies.policy_cli import (
        DEFAULT_POLICY,
        export_query_result,
        fit_run_policy,
        query_run,
    )
    from exitnas.policies.profile import ProfileError
    from exitnas.policies.profile_cli import ProfileSettings, profile_run
    from exitnas.policies.query import Budget
    from exitnas.policies.study_policy import PolicyError
    from exitnas.reports.info import build_report_info
    from exitnas.reports.plot import write_report
    from exitnas.search.export import export_front_json, pareto_points
    from exitnas.search.runner import (
        completed_trials,
        evaluation_key,
        load_evaluator,
        load_searched,
        load_validation,
        open_run,
        run_search,
    )
    from exitnas.search.storage import open_store, resolve_storage_url
    from exitnas.supernet import train_supernet
    from exitnas.supernet.train import check_target
    from exitnas.threads import use_threads

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Path(run_dir)
    seconds: dict[str, float] = {}
    check_target(study, run)
    use_threads(study.training.num_threads)  # training and search check it again as they go
    clock = time.perf_counter()

    data = study.data
    splits = load_validation(study, progress)
    train_supernet(study, splits, run, progress=progress)
    seconds["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    url = resolve_storage_url(None, study.search.storage, run)
    wanted = study.search.trials if trials is None else trials
    complete = completed_trials(study, url)
    added = 0
    if complete < wanted:
        added = run_search(study, run, trials=wanted - complete, progress=progress).trials_added
    seconds["search"] = time.perf_counter() - clock

    clock = time.perf_counter()
    model, _, _ = open_run(run, None, data.path)  # the study file's search section is kept
    store = open_store(url)
    try:
        known = device in store.list_devices(study.name) and store.get_profile(study.name, device)
    except ProfileError:  # an unreadable (older format) profile: measure it again
        known = False
    if not known:
        profile_run(
            run, study, model, url, device, profile_settings or ProfileSettings(),
            replace=device in store.list_devices(study.name), progress=progress,
        )  # fmt: skip
    seconds["profile"] = time.perf_counter() - clock

    clock = time.perf_counter()
    stored = store.get_policy(study.name, DEFAULT_POLICY)
    key = evaluation_key(run, splits)
    policy_note = None
    if stored is None or stored.evaluation_key != key:
        try:
            fit_run_policy(run, study, url, replace=stored is not None, progress=progress)
        except PolicyError as err:  # e.g. every Pareto architecture has a single exit
            policy_note = f"no learned policy: {err}"
    seconds["policy"] = time.perf_counter() - clock

    clock = time.perf_counter()
    # the front the query answers from: the device search's when there is one; every number
    # below (front.json, answer.json, the bundle, the report, the table) is computed once here
    _, optuna_study = load_searched(study, run, url, device, progress=progress)
    costs = load_device_costs(store, study, device, url)
    points = with_latency(pareto_points(optuna_study, study.space), costs, study.space)
    default_budget = study.search.budget_ms is None and study.search.budget_mflops is None
    if study.search.budget_ms is not None:
        budget = Budget("ms", study.search.budget_ms)
    elif study.search.budget_mflops is not None:
        budget = Budget("mflops", study.search.budget_mflops)
    else:  # no default budget: the most accurate point's full cost
        budget = Budget("mflops", max(sum(p.stage_flops) for p in points) / 1e6)
    policy = None if policy_note else DEFAULT_POLICY
    result = query_run(
        run,
        budget,
        device=device,
        storage=url,
        data=data.path,
        policy=policy,
        rule=rule,
        progress=progress,
    )
    answer = result.answer
    document = result.to_dict()
    deploy = run / DEPLOY
    staging = run / f".{DEPLOY}.new"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    export_front_json(points, staging / "front.json")
    export_query_result(result, run, staging / "bundle")
    (staging / "answer.json").write_text(json.dumps(document, indent=2) + "\n")
    _replace_dir(staging, deploy)
    seconds["export"] = time.perf_counter() - clock

    clock = time.perf_counter()
    evaluator = load_evaluator(study, run, url, splits)
    info = build_report_info(
        optuna_study, study, evaluator, answer.point.index, answer.rule, result.policy
    )
    report = write_report(info, run / "report.html")
    seconds["report"] = time.perf_counter() - clock

    rows = [
        FrontRow(
            p.index,
            p.trial_number,
            p.accuracy,
            p.mflops,
            float(p.latency_ms),  # type: ignore[arg-type]  # set by with_latency
            sum(f > 0 for f in p.exit_fractions),
            p.rule.to_dict(),
        )
        for p in points
    ]
    return PipelineSummary(
        study_name=study.name,
        run_dir=run,
        device=device,
        trials_added=added,
        trials_complete=complete + added,
        front=tuple(rows),
        answer=document,
        default_budget=default_budget,
        bundle=deploy / "bundle",
        front_json=deploy / "front.json",
        report=report,
        policy_note=policy_note,
        seconds={k: round(v, 1) for k, v in seconds.items()},
    )


def _run(args: argparse.Namespace) -> int:
    from exitnas.spaces import load_study

    study = load_study(args.study).with_overrides(num_threads=args.threads)  # before torch

    from exitnas.policies.profile_cli import ProfileSettings
    from exitnas.search.interrupts import SearchInterrupted
    from exitnas.supernet import TrainingInterrupted

    if args.data is not None:
        study = replace(study, data=replace(study.data, path=str(args.data)))
    run = Path(args.out) if args.out else Path("runs") / study.name
    started = time.perf_counter()
    repeats = args.profile_repeats
    try:
        summary = run_pipeline(
            study,
            run,
            device=args.device,
            trials=args.trials,
            profile_settings=ProfileSettings(repeats=repeats, passes=min(10, repeats)),
            progress=not args.quiet,
            rule=args.rule,
        )
    except (TrainingInterrupted, SearchInterrupted) as stop:  # training checkpointed, or
        # the search's completed trials kept: the same command continues towards its target
        print(f"exitnas: {stop}; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary.table())
    print(f"exitnas run: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def add_run_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``exitnas run`` on the main parser's subcommands."""
    from exitnas.argtypes import add_threads_argument, at_least
    from exitnas.policies.policy_cli import add_rule_argument

    run = commands.add_parser(
        "run",
        help="the whole job: train, search, profile, fit the policy, export, report",
    )
    run.add_argument("study", type=Path, help="study YAML file, e.g. studies/quickstart.yaml")
    run.add_argument("--data", type=Path, help="image folder or tar tree; overrides data.path")
    run.add_argument("--out", type=Path, help="run folder (default: runs/<study name>)")
    run.add_argument(
        "--device",
        default=LOCAL_DEVICE,
        metavar="NAME",
        help=f"name of this machine's device profile (default {LOCAL_DEVICE})",
    )
    run.add_argument(
        "--trials",
        type=at_least(1),
        help="completed trials the study should hold (default: search.trials)",
    )
    run.add_argument(
        "--profile-repeats",
        type=at_least(1),
        default=20,
        metavar="N",
        help="timed runs per stage when profiling this machine (default 20; exitnas profile "
        "measures more carefully)",
    )
    add_threads_argument(run)
    add_rule_argument(run)
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)
    return run
