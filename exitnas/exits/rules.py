"""Exit rules, evaluated on cached per-exit logits with vectorised NumPy.

A sample leaves at the first exit whose confidence reaches that exit's threshold; the last exit
takes everything left. Confidence is one of:

- ``max_softmax``: the largest class probability (MSDNet, CF-ViT);
- ``entropy``: ``1 - H(p) / log K`` (RAViT, BranchyNet), 1 for a one-hot prediction;
- ``margin``: the gap between the two largest probabilities.

An :class:`ExitRule` may also name ``learned``: the score of a fitted
:class:`~exitnas.policies.LearnedExitPolicy` (exported bundles carry the policy beside the rule).
A threshold of ``inf`` means "never exit here" (written as ``null`` in JSON).

The expected cost of a rule on a data set is ``mean_n cumsum(stage_costs)[exit_n]``: a sample
that leaves at exit k pays for stages 1..k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from exitnas.errors import ConfigError
from exitnas.spaces.study import EXIT_RULES

__all__ = [
    "LEARNED",
    "RULES",
    "ExitOutcome",
    "ExitRule",
    "ExitTable",
    "confidences",
    "exit_indices",
    "expected_cost",
    "score_exits",
    "softmax",
]

RULES = EXIT_RULES  # max_softmax, entropy, margin (named where study files are validated)
LEARNED = "learned"  # the score of a fitted LearnedExitPolicy: bundles and budget queries only


@dataclass(frozen=True)
class ExitRule:
    """A confidence rule and one threshold for every exit but the last."""

    rule: str  # one of RULES, or LEARNED
    thresholds: tuple[float, ...]  # one per exit except the last, in [0, 1] or inf (never)

    def __post_init__(self) -> None:
        if self.rule not in (*RULES, LEARNED):
            raise ConfigError(f"rule: {self.rule!r} is not allowed; allowed: {(*RULES, LEARNED)}")
        for t in self.thresholds:
            if not (0.0 <= t <= 1.0 or t == np.inf):
                raise ConfigError(f"thresholds: {t} must be in [0, 1] (or inf: never exit)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "thresholds": [None if t == np.inf else t for t in self.thresholds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitRule:
        thresholds = tuple(np.inf if t is None else float(t) for t in data["thresholds"])
        return cls(str(data["rule"]), thresholds)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed in float64 for stable confidences."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def confidences(probs: np.ndarray, rule: str) -> np.ndarray:
    """Confidence in [0, 1] of every exit's prediction: ``(E, N, K)`` -> ``(E, N)``."""
    if rule == "max_softmax":
        return probs.max(axis=-1)
    if rule == "margin":
        top2 = np.partition(probs, -2, axis=-1)[..., -2:]
        return top2[..., 1] - top2[..., 0]
    if rule == "entropy":
        entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=-1)
        return np.clip(1.0 - entropy / np.log(probs.shape[-1]), 0.0, 1.0)  # rounding: -2e-16
    raise ConfigError(f"rule: {rule!r} is not allowed; allowed: {RULES}")


def exit_indices(conf: np.ndarray, thresholds: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """Index of the exit each sample takes: ``(E, N)`` confidences -> ``(N,)``."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (conf.shape[0] - 1,):
        raise ValueError(f"{conf.shape[0]} exits need {conf.shape[0] - 1} thresholds")
    passes = np.ones(conf.shape, dtype=bool)
    passes[:-1] = conf[:-1] >= thresholds[:, None]
    return passes.argmax(axis=0)


@dataclass(frozen=True)
class ExitOutcome:
    """What an exit rule achieves on a labelled data set."""

    accuracy: float
    expected_flops: float  # per image
    exit_fractions: tuple[float, ...]  # share of samples leaving at each exit


def expected_cost(taken: np.ndarray, cumulative_cost: np.ndarray) -> float:
    """Mean cost per image when sample n leaves at ``taken[n]``, in the unit of
    ``cumulative_cost`` (``(E,)``, spent up to each exit: ms or MFLOPs)."""
    return float(cumulative_cost[taken].mean())


def score_exits(
    taken: np.ndarray, correct: np.ndarray, cumulative_flops: np.ndarray
) -> ExitOutcome:
    """Accuracy, expected FLOPs and exit distribution when sample n leaves at ``taken[n]``.

    Args:
        taken: ``(N,)`` exit index of each sample.
        correct: ``(E, N)`` whether each exit's prediction is right.
        cumulative_flops: ``(E,)`` FLOPs per image spent up to each exit.
    """
    counts = np.bincount(taken, minlength=correct.shape[0])
    return ExitOutcome(
        accuracy=float(correct[taken, np.arange(taken.size)].mean()),
        expected_flops=expected_cost(taken, cumulative_flops),
        exit_fractions=tuple((counts / taken.size).tolist()),
    )


class ExitTable:
    """Everything needed to score exit rules on one architecture's cached logits.

    Built once per architecture (predictions, correctness, confidences per rule); scoring a rule
    is then a few vectorised NumPy operations over ``(num_exits, num_samples)`` arrays.

    Args:
        logits: ``(E, N, K)`` logits of every exit on the data set.
        labels: ``(N,)`` true classes.
        stage_flops: ``(E,)`` FLOPs per image of each stage (``count_flops``).
    """

    def __init__(self, logits: np.ndarray, labels: np.ndarray, stage_flops) -> None:
        probs = softmax(logits)
        self.num_exits, self.num_samples = probs.shape[:2]
        self.correct = probs.argmax(axis=-1) == np.asarray(labels)[None, :]  # (E, N)
        self.cumulative_flops = np.cumsum(np.asarray(stage_flops, dtype=np.float64))
        self._confidences = {rule: confidences(probs, rule) for rule in RULES}

    def confidence(self, rule: str) -> np.ndarray:
        return self._confidences[rule]

    def exits(self, rule: ExitRule) -> np.ndarray:
        """Exit index of every sample under ``rule``."""
        return exit_indices(self._confidences[rule.rule], rule.thresholds)

    def score(self, rule: ExitRule) -> ExitOutcome:
        """Accuracy, expected FLOPs and exit distribution of ``rule``."""
        return score_exits(self.exits(rule), self.correct, self.cumulative_flops)
