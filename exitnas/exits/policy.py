"""One learned exit policy for a whole searched study: pooled, cross-fitted, stored safely.

``exitnas policy fit`` pools the cached validation logits of the study's Pareto architectures
(the features do not depend on the architecture, see
:func:`~exitnas.exits.features.exit_features`) and fits a :class:`LearnedExitPolicy` on them.
Thresholds are calibrated on the same validation split, so it also fits one policy per fold of
the samples (cross-fitting): :meth:`StudyPolicy.validation_scores` scores each validation sample
with the policy that never saw it, and calibration on those scores is honest. The policy that
ships in a bundle is the one fitted on every sample.

A policy is stored as bytes made by skops (``skops.io``), which rebuilds scikit-learn objects
without unpickling: :func:`policy_from_bytes` refuses any type outside a fixed allow-list.

Example:
    >>> policy = fit_study_policy([logits_a, logits_b], labels, random_state=0)
    >>> scores = policy.validation_scores(logits_a)  # (E, N), out of fold
    >>> blob = policy_to_bytes(policy); same = policy_from_bytes(blob)
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from exitnas.exits.learned import LearnedExitPolicy, default_estimator
from exitnas.exits.options import ESTIMATORS, TARGETS, PolicyError

__all__ = [
    "ESTIMATORS",
    "PolicyError",
    "StudyPolicy",
    "fit_study_policy",
    "make_estimator",
    "policy_from_bytes",
    "policy_to_bytes",
]

POLICY_FORMAT = 1
# Types skops may rebuild beyond its own default trust (scikit-learn's estimators, NumPy).
TRUSTED_TYPES = (
    "exitnas.exits.learned.LearnedExitPolicy",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


def make_estimator(name: str) -> Any:
    """The classifier of a named policy estimator (unfitted, seeded later by the policy).

    ``boosting``: gradient-boosted trees, regularised for a few thousand rows (the default);
    ``logistic``: standardised features and a logistic regression.
    """
    if name == "boosting":
        return default_estimator()
    if name == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    raise ValueError(f"estimator: {name!r} is not allowed; allowed: {ESTIMATORS}")


@dataclass(frozen=True)
class StudyPolicy:
    """A learned exit policy fitted on a study's validation logits, with its fold policies."""

    policy: LearnedExitPolicy  # fitted on every validation sample: what bundles run
    fold_policies: tuple[LearnedExitPolicy, ...]  # policy k never saw the samples of fold k
    folds: np.ndarray  # (N,) fold of every validation sample
    info: dict[str, Any] = field(default_factory=dict)  # estimator, target, rows, sources...

    def scores(self, logits: np.ndarray, num_exits: int | None = None) -> np.ndarray:
        """Scores of the deployed policy (the one fitted on every sample): ``(E, N)``."""
        return self.policy.score_samples(logits, num_exits)

    def score_exit(self, logits: np.ndarray, num_exits: int) -> np.ndarray:
        """Deployed scores ``(N,)`` of the last of the exits given (run time, after a stage)."""
        return self.policy.score_exit(logits, num_exits)

    def validation_scores(self, logits: np.ndarray) -> np.ndarray:
        """Out-of-fold scores ``(E, N)`` of validation logits ``(E, N, K)`` (same samples as
        at fit): what threshold calibration on the validation split should use."""
        logits = np.asarray(logits)
        if logits.ndim != 3 or logits.shape[1] != self.folds.size:
            raise ValueError(
                f"validation logits must be (exits, {self.folds.size}, classes); got {logits.shape}"
            )
        scores = np.ones(logits.shape[:2])
        for fold, policy in enumerate(self.fold_policies):
            rows = self.folds == fold
            scores[:, rows] = policy.score_samples(logits[:, rows])
        return scores


def fit_study_policy(
    logits: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    estimator: str = "boosting",
    target: str = "oracle",
    folds: int = 2,
    random_state: int = 0,
    info: dict[str, Any] | None = None,
) -> StudyPolicy:
    """Fit a policy on several architectures' validation logits, plus one per sample fold.

    Args:
        logits: ``(E_i, N, K)`` logits of each architecture on the same ``N`` samples
            (architectures with a single exit are skipped: nothing to decide).
        labels: ``(N,)`` true classes.
        estimator: one of :data:`ESTIMATORS`.
        target: one of :data:`~exitnas.exits.learned.TARGETS`.
        folds: sample folds for the out-of-fold policies (at least 2).
        random_state: seed of the fold split and the classifiers.
        info: extra provenance kept with the policy.

    Returns:
        The fitted :class:`StudyPolicy`.

    Raises:
        ValueError: no architecture with two exits or more, or fewer samples than folds.
    """
    if target not in TARGETS:
        raise ValueError(f"target: {target!r} is not allowed; allowed: {TARGETS}")
    arrays = [np.asarray(a) for a in logits if np.asarray(a).shape[0] >= 2]
    if not arrays:
        raise ValueError("no architecture with two exits or more to learn exiting from")
    labels = np.asarray(labels)
    if folds < 2 or labels.size < folds:
        raise ValueError(f"need at least 2 folds and as many samples ({labels.size}, {folds})")
    rng = np.random.default_rng(random_state)
    fold_of = np.empty(labels.size, dtype=np.int64)
    fold_of[rng.permutation(labels.size)] = np.arange(labels.size) % folds

    def fit(rows: np.ndarray, seed: int) -> LearnedExitPolicy:
        policy = LearnedExitPolicy(make_estimator(estimator), target, random_state=seed)
        return policy.fit([a[:, rows] for a in arrays], labels[rows])

    fold_policies = tuple(fit(fold_of != k, random_state + 1 + k) for k in range(folds))
    meta = {
        "format": POLICY_FORMAT,
        "estimator": estimator,
        "target": target,
        "folds": folds,
        "random_state": random_state,
        "architectures": len(arrays),
        "samples": int(labels.size),
        "rows": int(sum((a.shape[0] - 1) * a.shape[1] for a in arrays)),
    }
    meta.update(info or {})
    return StudyPolicy(fit(np.ones(labels.size, bool), random_state), fold_policies, fold_of, meta)


def policy_to_bytes(policy: StudyPolicy, *, deployed_only: bool = False) -> bytes:
    """Serialise with skops (no pickle); :func:`policy_from_bytes` reads it back.

    Args:
        policy: the policy.
        deployed_only: leave out the fold policies (what a bundle needs: it never calibrates).
    """
    return sio.dumps(
        {
            "policy": policy.policy,
            "fold_policies": [] if deployed_only else list(policy.fold_policies),
            "folds": np.zeros(0, np.int64) if deployed_only else policy.folds,
            "info": json.dumps(policy.info, sort_keys=True),
        },
        compression=zipfile.ZIP_DEFLATED,
    )


# modules a stored policy may name that were renamed since: old run folders and bundles open
_RENAMED_MODULES = {'"exitnas.policies.learned"': '"exitnas.exits.learned"'}


def _current_names(blob: bytes) -> bytes:
    """The skops file with the module names of :data:`_RENAMED_MODULES` brought up to date
    (only ``schema.json`` names modules; anything unreadable is left to skops to report)."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as source:
            schema = source.read("schema.json").decode()
            if not any(old in schema for old in _RENAMED_MODULES):
                return blob
            for old, new in _RENAMED_MODULES.items():
                schema = schema.replace(old, new)
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
                for item in source.infolist():
                    data = schema.encode() if item.filename == "schema.json" else source.read(item)
                    target.writestr(item, data)
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError):
        return blob
    return out.getvalue()


def policy_from_bytes(blob: bytes, where: str = "policy") -> StudyPolicy:
    """Rebuild a policy from :func:`policy_to_bytes`'s output, trusting only known types.

    Raises:
        PolicyError: not a skops file, corrupt, of another format, or it names a type outside
            scikit-learn, NumPy and :data:`TRUSTED_TYPES` (nothing is executed then).
    """
    blob = _current_names(blob)
    try:
        untrusted = sio.get_untrusted_types(data=blob)
    except Exception as err:  # zip/JSON errors of a corrupt file: report, never raise further
        raise PolicyError(f"{where} is not a readable exit policy ({type(err).__name__})") from None
    unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unknown:
        raise PolicyError(f"{where} names types exitnas does not load: {', '.join(unknown)}")
    try:
        data = sio.loads(blob, trusted=list(untrusted))
        info = json.loads(data["info"])
        policy = StudyPolicy(
            data["policy"], tuple(data["fold_policies"]), np.asarray(data["folds"]), info
        )
    except Exception as err:
        raise PolicyError(f"{where} is corrupt ({type(err).__name__}: {err})") from None
    if info.get("format") != POLICY_FORMAT or not isinstance(policy.policy, LearnedExitPolicy):
        raise PolicyError(
            f"{where} has policy format {info.get('format')!r}; this exitnas reads {POLICY_FORMAT}"
        )
    return policy
