"""``exitnas policy``: fit the learned exit policy of a run, and answer budget queries.

- ``exitnas policy fit --study RUN`` fits and stores the run's learned exit policy
  (:func:`~exitnas.jobs.fit.fit_policy`).
- ``exitnas policy query --study RUN --device NAME --budget-ms 2.5`` (or ``--budget-mflops
  40``, device optional) prints, as JSON, the most accurate Pareto configuration and exit rule
  within the budget (:func:`~exitnas.jobs.query.query_budget`).

Example:
    exitnas policy fit --study runs/quickstart
    exitnas policy query --study runs/quickstart --device laptop --budget-ms 2.5
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from exitnas.cli.options import add_run_arguments, add_threads_argument, at_least, open_run
from exitnas.exits.options import DEFAULT_POLICY, ESTIMATORS, TARGETS
from exitnas.threads import use_threads

if TYPE_CHECKING:
    from exitnas.search.budget import Budget

__all__ = ["add_budget_arguments", "add_policy_parser", "add_rule_argument", "budget_from_args"]


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The :class:`~exitnas.search.budget.Budget` of ``--budget-ms`` / ``--budget-mflops``."""
    from exitnas.search.budget import Budget, BudgetError

    if args.budget_ms is not None:
        if args.device is None:
            raise BudgetError("--budget-ms needs --device (a device profiled for this study)")
        return Budget("ms", args.budget_ms)
    return Budget("mflops", args.budget_mflops)


def _fit(args: argparse.Namespace) -> int:
    from exitnas.jobs.fit import fit_policy

    use_threads(args.threads)
    run = open_run(args)
    study, url = run.study, run.url
    policy = fit_policy(
        run,
        name=args.name,
        estimator=args.estimator,
        target=args.target,
        folds=args.folds,
        replace=args.replace,
    )
    info = policy.info
    scores = (
        f"; out-of-fold ROC-AUC of 'exit k is correct': learned {info['auc_learned']:.4f}, "
        f"max-softmax {info['auc_max_softmax']:.4f}"
        if "auc_learned" in info
        else ""
    )
    print(
        f"policy {args.name!r} of study {study.name!r}: {args.estimator} on {info['rows']} exit "
        f"decisions ({info['architectures']} Pareto architectures x {info['samples']} "
        f"validation images){scores} -> {url}"
    )
    return 0


def _query(args: argparse.Namespace) -> int:
    import optuna

    from exitnas.jobs.query import query_budget

    use_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = budget_from_args(args)  # a budget's mistake first, before the run is opened
    result = query_budget(
        open_run(args),
        budget,
        device=args.device,
        policy=None if args.no_policy else args.name,
        rule=args.rule,
    )
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def add_budget_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """``--device``, ``--budget-ms`` / ``--budget-mflops`` of ``exitnas policy query``."""
    parser.add_argument(
        "--device", metavar="NAME", help="a device profiled for the study (exitnas profile)"
    )
    budget = parser.add_mutually_exclusive_group(required=required)
    budget.add_argument(
        "--budget-ms",
        type=float,
        metavar="MS",
        help="expected latency per image on --device (batch size 1)",
    )
    budget.add_argument(
        "--budget-mflops", type=float, metavar="MFLOPS", help="expected MFLOPs per image"
    )


def add_rule_argument(parser: argparse.ArgumentParser) -> None:
    """``--rule``: offer only one exit rule to a budget query (``policy query``, ``export
    --budget-...``, ``run``)."""
    from exitnas.spaces.study import EXIT_RULES

    parser.add_argument(
        "--rule",
        choices=(*EXIT_RULES, DEFAULT_POLICY),
        help="deploy only this exit rule, calibrated for the budget (default: the most "
        "accurate of each configuration's searched rule and the learned policy)",
    )


def add_policy_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``exitnas policy {fit,query}`` on the main parser's subcommands."""
    policy = commands.add_parser(
        "policy", help="fit the learned exit policy; query the best configuration for a budget"
    )
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = actions.add_parser("fit", help="fit the learned exit policy on validation logits")
    query = actions.add_parser(
        "query", help="the most accurate configuration and exit rule within a budget (JSON)"
    )
    for parser in (fit, query):
        add_run_arguments(parser)
        parser.add_argument(
            "--name", default=DEFAULT_POLICY, help=f"policy name (default {DEFAULT_POLICY})"
        )
        add_threads_argument(parser, study_field=False)
    fit.add_argument("--estimator", choices=ESTIMATORS, default="boosting")
    fit.add_argument(
        "--target",
        choices=TARGETS,
        default="oracle",
        help="what the policy predicts: leaving at the exit loses nothing (oracle, default), "
        "the exit is correct, or it agrees with the last exit (final)",
    )
    fit.add_argument("--folds", type=at_least(2), default=2, help="cross-fitting folds")
    fit.add_argument("--replace", action="store_true", help="replace a stored policy")
    fit.set_defaults(handler=_fit)
    add_budget_arguments(query, required=True)
    query.add_argument("--no-policy", action="store_true", help="offer only the confidence rules")
    add_rule_argument(query)
    query.set_defaults(handler=_query)
    return policy
