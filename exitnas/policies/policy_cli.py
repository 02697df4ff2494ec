"""``exitnas policy``: fit the learned exit policy of a study, and answer budget queries.

- ``exitnas policy fit --study RUN`` pools the cached validation logits of the study's Pareto
  architectures, fits a cross-fitted :class:`~exitnas.policies.study_policy.StudyPolicy` and
  stores it (skops bytes) in the study's database.
- ``exitnas policy query --study RUN --device NAME --budget-ms 2.5`` (or ``--budget-mflops
  40``, device optional) prints, as JSON, the most accurate Pareto configuration and exit rule
  within the budget, thresholds calibrated on the validation split, with the expected accuracy,
  latency and FLOPs (:func:`~exitnas.policies.query.answer_budget`).

:func:`query_run` is the same query for ``exitnas export --budget-...``.

Example:
    exitnas policy fit --study runs/quickstart
    exitnas policy query --study runs/quickstart --device laptop --budget-ms 2.5
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exitnas.argtypes import add_threads_argument, at_least
from exitnas.policies.options import ESTIMATORS, TARGETS, PolicyError
from exitnas.threads import use_threads

__all__ = [
    "DEFAULT_POLICY",
    "QueryResult",
    "add_policy_parser",
    "budget_from_args",
    "export_query_result",
    "fit_run_policy",
    "query_run",
]

DEFAULT_POLICY = "learned"  # name the fitted policy is stored under


@dataclass(frozen=True)
class QueryResult:
    """A budget query on a run, with what exporting its answer needs."""

    answer: Any  # BudgetAnswer
    model: Any  # the supernet
    study: Any  # StudyConfig
    splits: Any  # DataSplits (normalisation)
    policy_name: str | None  # the stored policy offered to the query, if any
    policy: Any = None  # the StudyPolicy the answer's rule runs, when it is learned
    device_runtime: str | None = None  # what the device's profile was measured with

    def to_dict(self) -> dict[str, Any]:
        """The answer as ``policy query`` prints it and ``answer.json`` stores it.

        ``policy`` names the learned policy the chosen rule runs (None for a confidence rule);
        ``policy_offered`` the stored policy the query could choose; ``device_runtime`` what
        the device's profile timed (``torch``, ``onnxruntime <version> <provider>``): the
        latency holds for a bundle run the same way.
        """
        from exitnas.search.rules import LEARNED

        learned = self.answer.rule.rule == LEARNED
        return {
            **self.answer.to_dict(),
            "policy": self.policy_name if learned else None,
            "policy_offered": self.policy_name,
            "device_runtime": self.device_runtime,
        }


def _front_candidates(
    study: Any, run: Path, url: str, splits: Any, optuna_study: Any, costs: Any
) -> list[Any]:
    """Pareto points (one per configuration and rule) with their validation logits."""
    from exitnas.policies.query import Candidate
    from exitnas.search.export import pareto_points
    from exitnas.search.runner import load_evaluator

    evaluator = load_evaluator(study, run, url, splits)
    seen: set[tuple[str, str]] = set()
    candidates = []
    for point in pareto_points(optuna_study, study.space):
        key = (point.config.key(), point.rule.rule)
        if key in seen:
            continue
        seen.add(key)
        logits, _ = evaluator.logits(point.config)
        ms, measured = (None, None) if costs is None else costs.stage_ms(study.space, point.config)
        policy_ms = 0.0 if costs is None else costs.policy_ms
        candidates.append(Candidate(point, logits, ms, measured, policy_ms))
    return candidates


def _load_policy(store: Any, study: Any, name: str, key: str, required: bool) -> Any:
    """The stored policy ``name`` (checked against the evaluation key) and its record, or
    ``(None, None)``."""
    from exitnas.policies.study_policy import policy_from_bytes

    stored = store.get_policy(study.name, name)
    if stored is None:
        if required:
            raise PolicyError(
                f"study {study.name!r} has no fitted policy named {name!r}; run exitnas policy fit"
            )
        return None, None
    if stored.evaluation_key != key:
        raise PolicyError(
            f"policy {name!r} was fitted on other supernet weights or another validation "
            "split; fit it again: exitnas policy fit --replace"
        )
    return policy_from_bytes(stored.blob, f"stored policy {name!r}"), stored


def budget_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~exitnas.policies.query.Budget` of ``--budget-ms`` / ``--budget-mflops``."""
    from exitnas.policies.query import Budget, BudgetError

    if args.budget_ms is not None:
        if args.device is None:
            raise BudgetError("--budget-ms needs --device (a device profiled for this study)")
        return Budget("ms", args.budget_ms)
    return Budget("mflops", args.budget_mflops)


def query_run(
    run: Path,
    budget: Any,
    *,
    device: str | None = None,
    storage: str | None = None,
    data: Path | None = None,
    policy: str | None = DEFAULT_POLICY,
    rule: str | None = None,
    progress: bool = True,
) -> QueryResult:
    """Answer a budget query on a trained and searched run.

    Args:
        run: the run folder.
        budget: the :class:`~exitnas.policies.query.Budget`.
        device: a device profiled for the study (needed for a budget in ms); its latencies are
            reported either way. Its device search (``search --device``) is used when present.
        storage, data: as for ``exitnas search``.
        policy: name of a stored learned policy to offer beside the confidence rules (used when
            fitted; ``None``: confidence rules only).
        rule: offer only this exit rule (``--rule``; see
            :func:`~exitnas.policies.query.answer_budget`).
        progress: a bar while images are decoded (a cold decoded-image cache).

    Raises:
        ExitnasError: unknown device, stale policy, impossible budget, missing study...
    """
    from exitnas.policies.query import answer_budget
    from exitnas.search.rules import LEARNED
    from exitnas.search.runner import evaluation_key, load_latency, load_searched, open_run
    from exitnas.search.storage import open_store

    model, study, url = open_run(run, storage, data)
    splits, optuna_study = load_searched(study, run, url, device, progress=progress)
    costs = load_latency(study, url, device)
    key = evaluation_key(run, splits)
    fitted, stored = (None, None)
    if policy is not None:
        required = rule == LEARNED
        fitted, stored = _load_policy(open_store(url), study, policy, key, required=required)
    candidates = _front_candidates(study, run, url, splits, optuna_study, costs)
    answer = answer_budget(
        candidates, splits.val.labels.numpy(), budget, policy=fitted, device=device, rule=rule
    )
    used = fitted if answer.rule.rule == LEARNED else None  # only offered when fitted
    runtime = None if costs is None else costs.profile.runtime
    offered = policy if stored else None
    return QueryResult(answer, model, study, splits, offered, used, runtime)


def fit_run_policy(
    run: Path,
    study: Any,
    url: str,
    *,
    name: str = DEFAULT_POLICY,
    estimator: str = "boosting",
    target: str = "oracle",
    folds: int = 2,
    replace: bool = False,
    progress: bool = True,
) -> Any:
    """Fit the learned exit policy of a searched run and store it (``exitnas policy fit``).

    Returns:
        The fitted :class:`~exitnas.policies.study_policy.StudyPolicy`; its ``info`` holds
        out-of-fold ROC-AUCs of the learned scores and of max-softmax for "exit k is correct".

    Raises:
        ProfileExistsError: a policy of that name exists and ``replace`` is False.
        PolicyError: no Pareto architecture with two exits or more.
    """
    import numpy as np
    import optuna
    from sklearn.metrics import roc_auc_score

    from exitnas.policies.study_policy import fit_study_policy, policy_to_bytes
    from exitnas.search.rules import confidences, softmax
    from exitnas.search.runner import evaluation_key, load_searched
    from exitnas.search.storage import open_store
    from exitnas.search.store import ProfileExistsError, StoredPolicy, check_names

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_names(study.name, name, "policy")
    splits, optuna_study = load_searched(study, run, url, progress=progress)
    store = open_store(url)
    if store.get_policy(study.name, name) is not None and not replace:
        raise ProfileExistsError(
            f"study {study.name!r} already has a policy named {name!r}; pass --replace"
        )
    candidates = _front_candidates(study, run, url, splits, optuna_study, None)
    logits = list({c.point.config.key(): c.logits for c in candidates}.values())
    labels = splits.val.labels.numpy()
    key = evaluation_key(run, splits)
    try:
        policy = fit_study_policy(
            logits,
            labels,
            estimator=estimator,
            target=target,
            folds=folds,
            random_state=study.seed,
            info={"evaluation_key": key, "study": study.name},
        )
    except ValueError as err:
        raise PolicyError(f"cannot fit a policy on study {study.name!r}: {err}") from None
    # How well scores rank right and wrong predictions at early exits, out of fold.
    learned, softmax_conf, correct = [], [], []
    for array in (a for a in logits if a.shape[0] > 1):
        learned.append(policy.validation_scores(array)[:-1].ravel())
        softmax_conf.append(confidences(softmax(array), "max_softmax")[:-1].ravel())
        correct.append((array.argmax(-1) == labels[None, :])[:-1].ravel())
    y = np.concatenate(correct)
    if 0 < y.mean() < 1:
        policy.info["auc_learned"] = float(roc_auc_score(y, np.concatenate(learned)))
        policy.info["auc_max_softmax"] = float(roc_auc_score(y, np.concatenate(softmax_conf)))
    stored = StoredPolicy(
        study.name,
        name,
        key,
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
        json.dumps(policy.info, sort_keys=True),
        policy_to_bytes(policy),
    )
    store.put_policy(stored, replace=replace)
    return policy


def export_query_result(result: QueryResult, run: Path, out: Path) -> Path:
    """Write the bundle of a budget query's answer (its config, calibrated rule, policy).

    The bundle's ``config.json`` records the answer's expected validation accuracy, MFLOPs,
    latency and exit fractions, and the whole answer under ``budget_query``: what the bundle's
    ``predict`` gives on the validation split (with the learned rule, the deployed policy's
    figures; the out-of-fold ones it was chosen on are under ``budget_query.out_of_fold``).
    """
    from dataclasses import replace

    from exitnas.policies.study_policy import policy_to_bytes
    from exitnas.search.export import export_bundle
    from exitnas.search.objective import file_sha256
    from exitnas.supernet.train import WEIGHTS

    answer, used = result.answer, result.policy
    point = replace(
        answer.point,
        rule=answer.rule,
        accuracy=answer.accuracy,
        mflops=answer.mflops,
        exit_fractions=answer.exit_fractions,
        latency_ms=answer.latency_ms,
    )
    return export_bundle(
        point,
        result.model,
        result.study,
        out,
        weights_hash=file_sha256(run / WEIGHTS),
        mean=result.splits.mean,
        std=result.splits.std,
        policy=None if used is None else policy_to_bytes(used, deployed_only=True),
        extra={"budget_query": result.to_dict()},
    )


def _fit(args: argparse.Namespace) -> int:
    from exitnas.search.runner import open_run

    use_threads(args.threads)
    run = Path(args.study)
    _, study, url = open_run(run, args.storage, args.data)
    policy = fit_run_policy(
        run,
        study,
        url,
        name=args.name,
        estimator=args.estimator,
        target=args.target,
        folds=args.folds,
        replace=args.replace,
        progress=not args.quiet,
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

    use_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = query_run(
        Path(args.study),
        budget_from_args(args),
        device=args.device,
        storage=args.storage,
        data=args.data,
        policy=None if args.no_policy else args.name,
        rule=args.rule,
        progress=not args.quiet,
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
        parser.add_argument(
            "--study", type=Path, required=True, metavar="RUN_DIR", help="run folder"
        )
        parser.add_argument(
            "--name", default=DEFAULT_POLICY, help=f"policy name (default {DEFAULT_POLICY})"
        )
        parser.add_argument(
            "--storage", metavar="URL", help="SQLAlchemy URL (default: the search's)"
        )
        parser.add_argument(
            "--data",
            type=Path,
            metavar="PATH",
            help="image folder or tar tree; overrides data.path",
        )
        add_threads_argument(parser, study_field=False)
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
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
