"""A learned exit policy on cached per-exit logits, in the spirit of BERxiT's learning-to-exit.

Instead of thresholding one hand-picked confidence (max-softmax, entropy, margin; see
:mod:`exitnas.exits.rules`), a small scikit-learn classifier reads several cheap signals of every
exit (:func:`~exitnas.exits.features.exit_features`) and predicts whether that exit's prediction
can be trusted: either "it is correct" (``target="correct"``, BERxiT's learning-to-exit), "it
equals the last exit's prediction" (``target="final"``, needs no labels beyond those of the last
exit's own output), or "leaving here loses nothing" (``target="oracle"``: the exit is correct,
or no later exit is; what the oracle decides, so the policy learns to imitate it).

Lifecycle of :class:`LearnedExitPolicy`:

1. ``fit(logits, labels)`` on a training split of cached validation logits ``(E, N, K)``;
2. ``calibrate(logits, labels, stage_flops, budget_flops)`` on a calibration split: per-exit
   thresholds on the policy's scores that maximise accuracy under an expected-FLOPs budget
   (MSDNet's budget calibration, :mod:`exitnas.exits.calibrate`);
3. ``exits(logits, thresholds)`` / ``evaluate(...)`` on any split with the same exits.

A sample leaves at the first exit whose score reaches that exit's threshold; the last exit takes
everything left. A threshold of ``np.inf`` means "never exit here".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils.validation import check_is_fitted

from exitnas.exits.calibrate import calibrate_thresholds
from exitnas.exits.features import FEATURES, check_labels, check_logits, exit_features
from exitnas.exits.options import TARGETS
from exitnas.exits.rules import exit_indices, score_exits

# FEATURES, TARGETS, calibrate_thresholds and exit_features are re-exported: callers and
# benchmarks import them from here.
__all__ = [
    "FEATURES",
    "TARGETS",
    "LearnedExitPolicy",
    "calibrate_thresholds",
    "default_estimator",
    "exit_features",
]


def _targets(preds: np.ndarray, labels: np.ndarray, target: str) -> np.ndarray:
    """``(E, N)`` booleans: what the policy learns to predict at each exit."""
    if target == "final":
        return preds == preds[-1][None, :]
    correct = preds == labels[None, :]
    if target == "correct":
        return correct
    later = np.zeros_like(correct)  # some exit after this one is correct
    later[:-1] = np.flip(np.logical_or.accumulate(np.flip(correct[1:], 0), axis=0), 0)
    return correct | ~later


def default_estimator(random_state: Any = None) -> HistGradientBoostingClassifier:
    """The policy's default classifier: gradient-boosted trees, regularised (small trees, a
    slow learning rate, 40 rows a leaf) so that a few thousand exit decisions do not overfit."""
    return HistGradientBoostingClassifier(
        max_iter=150,
        learning_rate=0.05,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        random_state=random_state,
    )


class LearnedExitPolicy(BaseEstimator):
    """Learned exit policy: a classifier scores how far each exit's prediction can be trusted.

    Args:
        estimator: an unfitted scikit-learn classifier with ``predict_proba``; ``None`` uses
            :func:`default_estimator` (regularised gradient-boosted trees, for a few thousand
            exit decisions); give ``LogisticRegression`` for very small splits. It is cloned
            at fit.
        target: ``"correct"`` (the exit's prediction is correct), ``"oracle"`` (correct, or
            no later exit is correct: leaving loses nothing) or ``"final"`` (it equals the
            last exit's prediction).
        random_state: seed, ``numpy.random.Generator`` or ``RandomState`` for the classifier
            (given to a user estimator only if its own ``random_state`` is ``None``).

    Attributes:
        estimator_: the fitted classifier.
        classes_: target classes seen at fit (``[0]``, ``[1]`` or ``[0, 1]``).
        n_features_in_: features per (exit, sample) the classifier reads, ``len(FEATURES)``.
        thresholds_: per-exit thresholds set by :meth:`calibrate` (absent before).

    The features do not depend on the number of exits or classes, so one policy serves every
    architecture of a study: fit it on several architectures' logits at once (a list), and
    score any configuration.

    Example:
        >>> policy = LearnedExitPolicy(random_state=0).fit(train_logits, train_labels)
        >>> thresholds = policy.calibrate(val_logits, val_labels, stage_flops, 2.0e8)
        >>> accuracy, flops, fractions = policy.evaluate(
        ...     test_logits, test_labels, stage_flops, thresholds)
    """

    def __init__(self, estimator: Any = None, target: str = "correct", random_state: Any = None):
        self.estimator = estimator
        self.target = target
        self.random_state = random_state

    def _seed(self) -> Any:
        if isinstance(self.random_state, np.random.Generator):
            return int(self.random_state.integers(np.iinfo(np.int32).max))
        return self.random_state

    def _make_estimator(self) -> Any:
        if self.estimator is None:
            return default_estimator(random_state=self._seed())
        estimator = clone(self.estimator)
        seed = None
        for name, value in estimator.get_params().items():  # also a Pipeline's steps
            if name.split("__")[-1] == "random_state" and value is None:
                seed = self._seed() if seed is None else seed
                estimator.set_params(**{name: seed})
        return estimator

    def fit(self, logits: Any, labels: np.ndarray) -> LearnedExitPolicy:
        """Fit the classifier on every exit but the last.

        Args:
            logits: ``(E, N, K)`` logits of a training split, ``E >= 2``, or a list of such
                arrays of several architectures on the same ``N`` samples (pooled).
            labels: ``(N,)`` true classes.

        Returns:
            self.
        """
        if self.target not in TARGETS:
            raise ValueError(f"target: {self.target!r} is not allowed; allowed: {TARGETS}")
        arrays = [logits] if isinstance(logits, np.ndarray) else list(logits)
        if not arrays:
            raise ValueError("fit needs the logits of at least one architecture")
        xs, ys = [], []
        for array in arrays:
            array = check_logits(array, min_exits=2)
            labels = check_labels(labels, array.shape[1])
            preds = array.argmax(axis=-1)  # (E, N)
            ys.append(_targets(preds, labels, self.target)[:-1].astype(np.int64).ravel())
            xs.append(exit_features(array)[:-1].reshape(-1, len(FEATURES)))
        x, y = np.concatenate(xs), np.concatenate(ys)

        if np.unique(y).size < 2:  # a constant target: predict it with probability 1
            self.estimator_ = DummyClassifier(strategy="prior").fit(x, y)
        else:
            self.estimator_ = self._make_estimator().fit(x, y)
        self.classes_ = np.asarray(self.estimator_.classes_)
        self.n_features_in_ = len(FEATURES)
        if hasattr(self, "thresholds_"):  # a calibration of an earlier fit no longer holds
            del self.thresholds_
        return self

    def score_samples(self, logits: np.ndarray, num_exits: int | None = None) -> np.ndarray:
        """Probability that each exit's prediction is correct (or final).

        Args:
            logits: ``(E, N, K)`` logits of the first ``E`` exits of a configuration.
            num_exits: the configuration's exits (default ``E``). When ``E`` is all of them,
                the last row is 1 (the last exit takes every sample left).

        Returns:
            ``(E, N)`` scores in [0, 1].
        """
        check_is_fitted(self)
        logits = check_logits(logits)
        num_given, num_samples = logits.shape[:2]
        num_exits = num_given if num_exits is None else num_exits
        scores = np.ones((num_given, num_samples))
        scored = num_given - (num_given == num_exits)  # rows needing the classifier
        if scored:
            x = exit_features(logits, num_exits)[:scored].reshape(-1, self.n_features_in_)
            scores[:scored] = self._positive_proba(x).reshape(scored, num_samples)
        return scores

    def _positive_proba(self, x: np.ndarray) -> np.ndarray:
        """The classifier's probability of the positive class for feature rows ``x``."""
        positive = np.flatnonzero(self.classes_ == 1)
        if not positive.size:  # fitted on negatives only
            return np.zeros(len(x))
        return self.estimator_.predict_proba(x)[:, positive[0]]

    def score_exit(self, logits: np.ndarray, num_exits: int) -> np.ndarray:
        """Scores ``(N,)`` of the last of the exits given (what a runtime needs after each
        stage): equal to ``score_samples(logits, num_exits)[-1]``, without scoring the others.

        Args:
            logits: ``(k, N, K)`` logits of the first ``k`` exits that ran.
            num_exits: exits of the whole configuration.
        """
        check_is_fitted(self)
        logits = check_logits(logits)
        if logits.shape[0] == num_exits:
            return np.ones(logits.shape[1])
        return self._positive_proba(exit_features(logits, num_exits)[-1])

    def calibrate(
        self,
        logits: np.ndarray,
        labels: np.ndarray,
        stage_flops: Any,
        budget_flops: float,
        num_candidates: int = 64,
        refine: bool = True,
    ) -> np.ndarray:
        """Per-exit thresholds on :meth:`score_samples` for a FLOPs budget, kept as
        ``thresholds_`` (what :meth:`exits` and :meth:`evaluate` use when given none).

        See :func:`calibrate_thresholds` (shared sweep, then per-exit coordinate ascent).

        Args:
            logits: ``(E, N, K)`` logits of a calibration split.
            labels: ``(N,)`` true classes.
            stage_flops: ``(E,)`` FLOPs per image of each stage.
            budget_flops: largest allowed expected FLOPs per image.
            num_candidates: quantiles of the scores tried as thresholds.
            refine: per-exit refinement after the shared sweep.

        Returns:
            ``(E - 1,)`` thresholds.

        Raises:
            ValueError: the budget is below the cheapest achievable expected cost.
        """
        scores = self.score_samples(logits)
        labels = check_labels(labels, scores.shape[1])
        correct = np.asarray(logits).argmax(axis=-1) == labels[None, :]
        self.thresholds_ = calibrate_thresholds(
            scores, correct, stage_flops, budget_flops, num_candidates, refine
        )
        return self.thresholds_

    def exits(self, logits: np.ndarray, thresholds: Any = None) -> np.ndarray:
        """Exit taken by every sample: the first whose score reaches its threshold, else the last.

        Args:
            logits: ``(E, N, K)`` logits.
            thresholds: ``(E - 1,)`` thresholds; None: the calibrated ``thresholds_``.

        Returns:
            ``(N,)`` exit indices.
        """
        if thresholds is None:
            check_is_fitted(self, "thresholds_")
            thresholds = self.thresholds_
        return exit_indices(self.score_samples(logits), thresholds)

    def evaluate(
        self, logits: np.ndarray, labels: np.ndarray, stage_flops: Any, thresholds: Any = None
    ) -> tuple[float, float, np.ndarray]:
        """Accuracy, expected FLOPs per image and share of samples leaving at each exit.

        Args:
            logits: ``(E, N, K)`` logits.
            labels: ``(N,)`` true classes.
            stage_flops: ``(E,)`` FLOPs per image of each stage.
            thresholds: ``(E - 1,)`` thresholds; None: the calibrated ``thresholds_``.

        Returns:
            ``(accuracy, expected_flops, exit_fractions)``, the last of shape ``(E,)``.
        """
        taken = self.exits(logits, thresholds)
        labels = check_labels(labels, taken.size)
        correct = np.asarray(logits).argmax(axis=-1) == labels[None, :]
        cumulative = np.cumsum(np.asarray(stage_flops, dtype=np.float64))
        outcome = score_exits(taken, correct, cumulative)
        return outcome.accuracy, outcome.expected_flops, np.asarray(outcome.exit_fractions)
