"""Exit rules on cached logits: exits, accuracy, expected FLOPs, confidences."""

from __future__ import annotations

import numpy as np
import pytest

from exitnas.errors import ConfigError
from exitnas.exits import ExitRule, ExitTable
from exitnas.exits.rules import confidences, exit_indices, softmax


def test_exit_indices_take_the_first_confident_exit() -> None:
    conf = np.array([[0.9, 0.2, 0.5, 0.1], [0.1, 0.8, 0.4, 0.2], [0.0, 0.0, 0.0, 0.0]])
    assert exit_indices(conf, (0.5, 0.7)).tolist() == [0, 1, 0, 2]
    assert exit_indices(conf, (1.0, 1.0)).tolist() == [2, 2, 2, 2]
    assert exit_indices(conf, (0.0, 0.0)).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="3 exits need 2 thresholds"):
        exit_indices(conf, (0.5,))


def test_expected_flops_and_accuracy_by_hand() -> None:
    # 3 exits, 4 samples, 2 classes; stage costs 10, 20, 30 -> cumulative 10, 30, 60
    logits = np.array(
        [
            [[4.0, 0.0], [0.0, 0.1], [0.0, 0.1], [0.0, 4.0]],  # sample 0 and 3 confident here
            [[0.0, 1.0], [3.0, 0.0], [0.0, 0.1], [4.0, 0.0]],  # sample 1 confident here
            [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
        ]
    )
    labels = np.array([0, 0, 1, 1])
    table = ExitTable(logits, labels, [10, 20, 30])
    p = softmax(logits).max(-1)
    threshold = 0.9
    assert p[0, 0] > threshold and p[0, 3] > threshold and p[1, 1] > threshold
    outcome = table.score(ExitRule("max_softmax", (threshold, threshold)))
    # exits: sample0 -> 0 (right), sample1 -> 1 (right), sample2 -> 2 (right), sample3 -> 0 (right)
    assert outcome.exit_fractions == (0.5, 0.25, 0.25)
    assert outcome.expected_flops == pytest.approx((10 + 30 + 60 + 10) / 4)
    assert outcome.accuracy == 1.0
    everything_last = table.score(ExitRule("max_softmax", (1.0, 1.0)))
    assert everything_last.expected_flops == 60 and everything_last.accuracy == 0.5


def test_confidences_are_in_unit_range_and_order_predictions() -> None:
    probs = softmax(np.random.default_rng(0).normal(size=(3, 50, 7)) * 3)
    for rule in ("max_softmax", "entropy", "margin"):
        conf = confidences(probs, rule)
        assert conf.shape == (3, 50)
        assert (conf >= -1e-12).all() and (conf <= 1 + 1e-12).all()
    one_hot = softmax(np.array([[[50.0, 0.0, 0.0]]]))
    assert confidences(one_hot, "entropy")[0, 0] == pytest.approx(1.0)
    assert confidences(one_hot, "margin")[0, 0] == pytest.approx(1.0)


def test_rule_validation() -> None:
    with pytest.raises(ConfigError, match="rule: 'vote'"):
        ExitRule("vote", ())
    with pytest.raises(ConfigError, match="thresholds: 1.5"):
        ExitRule("margin", (1.5,))
    rule = ExitRule("entropy", (0.2, 0.4))
    assert ExitRule.from_dict(rule.to_dict()) == rule
