"""One interface for every exit rule: per-exit scores, compared with per-exit thresholds.

A sample leaves at the first exit whose score reaches that exit's threshold (the last exit
takes every sample left). The confidence rules (:class:`ConfidencePolicy`: max-softmax,
entropy, margin) score an exit from its own logits; the learned policy
(:class:`~exitnas.exits.policy.StudyPolicy`) scores it from the logits of every exit so far.
Both serve :class:`ExitPolicy`, so calibration, budget queries, reports and the runtime
(``ExitModel.predict``) ask :func:`exit_policy` for the rule's scorer instead of branching on
its name.

Example:
    >>> scorer = exit_policy("entropy")
    >>> taken = exit_indices(scorer.scores(logits), thresholds)  # (E, N, K) -> (N,)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from exitnas.exits.rules import LEARNED, RULES, confidences, softmax

if TYPE_CHECKING:
    from exitnas.exits.policy import StudyPolicy

__all__ = ["ConfidencePolicy", "ExitPolicy", "exit_policy"]


class ExitPolicy(Protocol):
    """What an exit rule offers: scores in [0, 1]; a higher score leaves sooner."""

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Scores ``(E, N)`` of every exit from all exits' logits ``(E, N, K)``."""
        ...

    def validation_scores(self, logits: np.ndarray) -> np.ndarray:
        """Scores ``(E, N)`` to calibrate thresholds on, for the validation samples the rule
        was fitted on (out of fold for a learned rule; :meth:`scores` for a fixed one)."""
        ...

    def score_exit(self, logits: np.ndarray, num_exits: int) -> np.ndarray:
        """Scores ``(N,)`` of the last of the exits given, from their logits ``(k, N, K)``
        (run time, after stage ``k``), in a configuration of ``num_exits`` exits."""
        ...


class ConfidencePolicy:
    """A confidence rule: an exit's score is the confidence of its own prediction.

    Args:
        rule: ``max_softmax``, ``entropy`` (1 - normalised entropy) or ``margin`` (top-1 minus
            top-2 probability).
    """

    def __init__(self, rule: str):
        if rule not in RULES:
            raise ValueError(f"confidence rule {rule!r} is not allowed; allowed: {RULES}")
        self.rule = rule

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return confidences(softmax(np.asarray(logits)), self.rule)

    def validation_scores(self, logits: np.ndarray) -> np.ndarray:
        return self.scores(logits)  # nothing was fitted: nothing to hold out

    def score_exit(self, logits: np.ndarray, num_exits: int) -> np.ndarray:
        return confidences(softmax(np.asarray(logits)[-1:]), self.rule)[0]

    def __repr__(self) -> str:
        return f"ConfidencePolicy({self.rule!r})"


def exit_policy(rule: str, learned: StudyPolicy | None = None) -> ExitPolicy:
    """The scorer of exit rule ``rule``: a :class:`ConfidencePolicy`, or ``learned`` for the
    ``learned`` rule.

    Raises:
        ValueError: ``learned`` rule without a policy, or an unknown rule.
    """
    if rule != LEARNED:
        return ConfidencePolicy(rule)
    if learned is None:
        raise ValueError("the learned exit rule needs its fitted policy")
    return learned
