"""A learned exit policy on cached per-exit logits, in the spirit of BERxiT's learning-to-exit.

Instead of thresholding one hand-picked confidence (max-softmax, entropy, margin; see
:mod:`exitnas.search.rules`), a small scikit-learn classifier reads several cheap signals of every
exit (:func:`exit_features`) and predicts whether that exit's prediction can be trusted: either
"it is correct" (``target="correct"``, BERxiT's learning-to-exit), "it equals the last exit's
prediction" (``target="final"``, needs no labels beyond those of the last exit's own output), or
"leaving here loses nothing" (``target="oracle"``: the exit is correct, or no later exit is;
what the oracle decides, so the policy learns to imitate it).

Lifecycle of :class:`LearnedExitPolicy`:

1. ``fit(logits, labels)`` on a training split of cached validation logits ``(E, N, K)``;
2. ``calibrate(logits, labels, stage_flops, budget_flops)`` on a calibration split: per-exit
   thresholds on the policy's scores that maximise accuracy under an expected-FLOPs budget
   (MSDNet's budget calibration);
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

from exitnas.policies.options import TARGETS
from exitnas.search.rules import confidences, exit_indices, score_exits, softmax

__all__ = [
    "FEATURES",
    "TARGETS",
    "LearnedExitPolicy",
    "calibrate_thresholds",
    "default_estimator",
    "exit_features",
]

FEATURES = (
    "max_probability",  # largest class probability of this exit
    "margin",  # top-1 minus top-2 class probability
    "entropy_confidence",  # 1 - H(p) / log K: 1 for one-hot, 0 for uniform
    "agrees_with_previous",  # 1 if argmax equals the previous exit's argmax (0 at exit 0)
    "agreement_fraction",  # share of earlier exits whose argmax equals this one's (0 at exit 0)
    "previous_max_probability",  # running max of earlier exits' max probability (0 at exit 0)
    "exit_position",  # exit index / (E - 1), 0 for a single exit
    "ensemble_probability",  # mean over this and earlier exits of the predicted class's prob.
    "previous_class_probability",  # previous exit's probability of this prediction (0 at 0)
)


def _check_logits(logits: np.ndarray, min_exits: int = 1) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (exits, samples, classes); got shape {logits.shape}")
    if logits.shape[0] < min_exits or logits.shape[1] < 1 or logits.shape[2] < 2:
        raise ValueError(
            f"logits need >= {min_exits} exits, >= 1 sample and >= 2 classes; "
            f"got shape {logits.shape}"
        )
    return logits


def _check_labels(labels: np.ndarray, num_samples: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (num_samples,):
        raise ValueError(f"labels must have shape ({num_samples},); got {labels.shape}")
    return labels


def exit_features(logits: np.ndarray, num_exits: int | None = None) -> np.ndarray:
    """Per (exit, sample) features of the exits' predictions, columns named by :data:`FEATURES`.

    Args:
        logits: ``(E, N, K)`` logits of the first ``E`` exits.
        num_exits: exits of the whole configuration (default ``E``); at run time, when only
            the first exits have run, it keeps ``exit_position`` the same as offline.

    Returns:
        ``(E, N, F)`` float64 features, ``F = len(FEATURES)``; each one uses only this exit and
        earlier ones, so it is available when the decision at this exit is taken.

    Example:
        >>> logits = np.array([[[2.0, 0.0]], [[0.0, 2.0]]])  # 2 exits, 1 sample, 2 classes
        >>> float(exit_features(logits)[1, 0, FEATURES.index("agrees_with_previous")])
        0.0
    """
    logits = _check_logits(logits)
    num_given = logits.shape[0]
    num_exits = num_given if num_exits is None else num_exits
    if num_exits < num_given:
        raise ValueError(f"num_exits={num_exits} is below the {num_given} exits given")
    probs = softmax(logits)  # (E, N, K)
    max_prob = confidences(probs, "max_softmax")  # (E, N)
    preds = probs.argmax(axis=-1)  # (E, N)

    agrees_previous = np.zeros_like(max_prob)
    agrees_previous[1:] = preds[1:] == preds[:-1]

    same = preds[:, None, :] == preds[None, :, :]  # (E, E, N): exit i agrees with exit j
    earlier = np.tril(np.ones((num_given, num_given), dtype=bool), k=-1)  # j < i
    agreeing = (same & earlier[:, :, None]).sum(axis=1)  # (E, N)
    agreement_fraction = agreeing / np.maximum(np.arange(num_given), 1)[:, None]

    previous_max = np.zeros_like(max_prob)
    previous_max[1:] = np.maximum.accumulate(max_prob, axis=0)[:-1]

    position = np.arange(num_given, dtype=np.float64) / max(num_exits - 1, 1)
    position = np.broadcast_to(position[:, None], max_prob.shape)

    # probs[j, n, preds[i, n]]: every exit's probability of exit i's predicted class
    of_class = np.take_along_axis(probs[None], preds[:, None, :, None], axis=-1)[..., 0]
    upto = np.tril(np.ones((num_given, num_given)))  # j <= i
    ensemble = (of_class * upto[:, :, None]).sum(axis=1) / upto.sum(axis=1)[:, None]
    previous_of_class = np.zeros_like(max_prob)
    previous_of_class[1:] = of_class[np.arange(1, num_given), np.arange(num_given - 1)]

    columns = (
        max_prob,
        confidences(probs, "margin"),
        confidences(probs, "entropy"),
        agrees_previous,
        agreement_fraction,
        previous_max,
        position,
        ensemble,
        previous_of_class,
    )
    return np.stack(columns, axis=-1)  # (E, N, F)


def _candidates(scores: np.ndarray, num: int) -> np.ndarray:
    """Threshold candidates: score quantiles plus 0 (everyone exits) and inf (nobody does)."""
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, num)) if scores.size else []
    return np.unique(np.concatenate([[0.0, np.inf], quantiles]))


def calibrate_thresholds(
    scores: np.ndarray,
    correct: np.ndarray,
    stage_flops: Any,
    budget_flops: float,
    num_candidates: int = 64,
    refine: bool = True,
    num_starts: int = 3,
) -> np.ndarray:
    """Thresholds maximising accuracy subject to expected FLOPs <= ``budget_flops``.

    First one threshold shared by all exits is swept over the scores' quantiles (MSDNet /
    CF-ViT protocol); with ``refine``, each exit's threshold is then improved in turn, keeping
    the others fixed, until nothing improves (coordinate ascent), starting from the
    ``num_starts`` best shared thresholds and from "everyone at exit 0". Ties in accuracy go to
    the cheaper thresholds.

    Args:
        scores: ``(E, N)`` scores in [0, 1] (a confidence or a policy's score); higher exits sooner.
        correct: ``(E, N)`` whether each exit's prediction is correct.
        stage_flops: ``(E,)`` FLOPs per image of each stage.
        budget_flops: largest allowed expected FLOPs per image.
        num_candidates: quantiles of the scores tried as thresholds.
        refine: per-exit refinement after the shared sweep.
        num_starts: best shared thresholds the refinement starts from.

    Returns:
        ``(E - 1,)`` thresholds (``np.inf``: never exit there).

    Raises:
        ValueError: the budget is below the cheapest achievable expected cost (everyone at exit 0).

    Example:
        >>> scores = np.array([[0.9, 0.2], [1.0, 1.0]]); correct = np.ones((2, 2), dtype=bool)
        >>> calibrate_thresholds(scores, correct, [1.0, 1.0], 1.5).tolist()
        [0.0]
    """
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    correct = np.asarray(correct, dtype=bool)
    cumulative = np.cumsum(np.asarray(stage_flops, dtype=np.float64))
    if cumulative.shape != scores.shape[:1] or correct.shape != scores.shape:
        raise ValueError(
            f"scores {scores.shape}, correct {correct.shape} and stage_flops "
            f"{cumulative.shape} disagree on the number of exits"
        )
    cheapest = float(cumulative[0])
    if budget_flops < cheapest * (1 - 1e-12):
        raise ValueError(
            f"budget_flops={budget_flops:g} is below the cheapest achievable expected cost "
            f"{cheapest:g} FLOPs (every sample at exit 0)"
        )

    def key(thresholds: np.ndarray) -> tuple[float, float]:
        """(accuracy, -cost) to maximise; (-inf, -inf) when over budget."""
        outcome = score_exits(exit_indices(scores, thresholds), correct, cumulative)
        cost = outcome.expected_flops
        return (
            (outcome.accuracy, -cost) if cost <= budget_flops * (1 + 1e-12) else (-np.inf, -np.inf)
        )

    num_thresholds = scores.shape[0] - 1
    zeros = np.zeros(num_thresholds)  # everyone at exit 0: always within budget
    shared: dict[tuple[float, float], np.ndarray] = {}
    for t in _candidates(scores[:-1], num_candidates):
        trial = np.full(num_thresholds, t)
        shared.setdefault(key(trial), trial)
    # The best few shared thresholds (and exit 0 for all) seed the refinement: one greedy
    # start can stall in a local optimum that a smaller budget's search escaped.
    ranked = [k for k in sorted(shared, reverse=True) if k[0] > -np.inf]
    starts = [shared[k] for k in ranked[: num_starts if refine else 1]] + [zeros]

    best, best_key = zeros, key(zeros)
    for current in starts:
        current_key = key(current)
        improved = refine
        while improved:
            improved = False
            for k in range(num_thresholds):
                for t in _candidates(scores[k], num_candidates):
                    trial = current.copy()
                    trial[k] = t
                    trial_key = key(trial)
                    if trial_key > current_key:
                        current, current_key, improved = trial, trial_key, True
        if current_key > best_key:
            best, best_key = current, current_key
    return best


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
            array = _check_logits(array, min_exits=2)
            labels = _check_labels(labels, array.shape[1])
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
        logits = _check_logits(logits)
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
        logits = _check_logits(logits)
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
        """Per-exit thresholds on :meth:`score_samples` for a FLOPs budget.

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
        labels = _check_labels(labels, scores.shape[1])
        correct = np.asarray(logits).argmax(axis=-1) == labels[None, :]
        return calibrate_thresholds(
            scores, correct, stage_flops, budget_flops, num_candidates, refine
        )

    def exits(self, logits: np.ndarray, thresholds: Any) -> np.ndarray:
        """Exit taken by every sample: the first whose score reaches its threshold, else the last.

        Args:
            logits: ``(E, N, K)`` logits.
            thresholds: ``(E - 1,)`` thresholds.

        Returns:
            ``(N,)`` exit indices.
        """
        return exit_indices(self.score_samples(logits), thresholds)

    def evaluate(
        self, logits: np.ndarray, labels: np.ndarray, stage_flops: Any, thresholds: Any
    ) -> tuple[float, float, np.ndarray]:
        """Accuracy, expected FLOPs per image and share of samples leaving at each exit.

        Args:
            logits: ``(E, N, K)`` logits.
            labels: ``(N,)`` true classes.
            stage_flops: ``(E,)`` FLOPs per image of each stage.
            thresholds: ``(E - 1,)`` thresholds.

        Returns:
            ``(accuracy, expected_flops, exit_fractions)``, the last of shape ``(E,)``.
        """
        taken = self.exits(logits, thresholds)
        labels = _check_labels(labels, taken.size)
        correct = np.asarray(logits).argmax(axis=-1) == labels[None, :]
        cumulative = np.cumsum(np.asarray(stage_flops, dtype=np.float64))
        outcome = score_exits(taken, correct, cumulative)
        return outcome.accuracy, outcome.expected_flops, np.asarray(outcome.exit_fractions)
