"""Fitting the learned exit policy of a run (``exitnas policy fit``).

The cached validation logits of the run's Pareto architectures are pooled, a cross-fitted
:class:`~exitnas.exits.policy.StudyPolicy` is fitted on them and stored (skops bytes) in the
study's database, under a name, with the evaluation key it was fitted on.

Example:
    >>> policy = fit_policy(Run.open("runs/quickstart"), estimator="logistic")
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from exitnas.exits.options import DEFAULT_POLICY, PolicyError
from exitnas.jobs.query import front_candidates

if TYPE_CHECKING:
    from exitnas.exits.policy import StudyPolicy
    from exitnas.runs import Run

__all__ = ["fit_policy"]


def fit_policy(
    run: Run,
    *,
    name: str = DEFAULT_POLICY,
    estimator: str = "boosting",
    target: str = "oracle",
    folds: int = 2,
    replace: bool = False,
) -> StudyPolicy:
    """Fit the learned exit policy of a searched run and store it (``exitnas policy fit``).

    Returns:
        The fitted :class:`~exitnas.exits.policy.StudyPolicy`; its ``info`` holds
        out-of-fold ROC-AUCs of the learned scores and of max-softmax for "exit k is correct".

    Raises:
        ProfileExistsError: a policy of that name exists and ``replace`` is False.
        PolicyError: no Pareto architecture with two exits or more.
    """
    import numpy as np
    import optuna
    from sklearn.metrics import roc_auc_score

    from exitnas.exits.policy import fit_study_policy, policy_to_bytes
    from exitnas.exits.rules import confidences, softmax
    from exitnas.storage.store import ProfileExistsError, StoredPolicy, check_names

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, store = run.study, run.store
    check_names(study.name, name, "policy")
    run.searched()  # a missing study is reported first
    if store.get_policy(study.name, name) is not None and not replace:
        raise ProfileExistsError(
            f"study {study.name!r} already has a policy named {name!r}; pass --replace"
        )
    candidates = front_candidates(run)
    logits = list({c.point.config.key(): c.logits for c in candidates}.values())
    labels = run.splits.val.labels.numpy()
    key = run.evaluation_key
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
