"""Every exit rule behind one interface: :func:`exit_policy`."""

from __future__ import annotations

import numpy as np
import pytest

from exitnas.exits.policy import fit_study_policy
from exitnas.exits.rules import LEARNED, RULES, confidences, softmax
from exitnas.exits.scoring import ConfidencePolicy, exit_policy


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 50, 4))


@pytest.mark.parametrize("rule", RULES)
def test_a_confidence_rule_scores_each_exit_from_its_own_logits(logits, rule: str) -> None:
    scorer = exit_policy(rule)
    assert isinstance(scorer, ConfidencePolicy)
    expected = confidences(softmax(logits), rule)
    np.testing.assert_array_equal(scorer.scores(logits), expected)
    np.testing.assert_array_equal(scorer.validation_scores(logits), expected)
    for k in range(1, 4):  # at run time, from the exits so far: only the last one counts
        np.testing.assert_array_equal(scorer.score_exit(logits[:k], 3), expected[k - 1])


def test_the_learned_rule_is_its_policy(logits) -> None:
    labels = np.random.default_rng(1).integers(0, 4, 50)
    policy = fit_study_policy([logits], labels, estimator="logistic")
    scorer = exit_policy(LEARNED, policy)
    assert scorer is policy
    np.testing.assert_array_equal(scorer.score_exit(logits[:2], 3), policy.scores(logits)[1])
    with pytest.raises(ValueError, match="needs its fitted policy"):
        exit_policy(LEARNED)
    with pytest.raises(ValueError, match="not allowed"):
        exit_policy("loudest")
