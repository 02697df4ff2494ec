"""``LearnedExitPolicy`` keeps scikit-learn's estimator contract.

The constructor stores its parameters and nothing else, fitted state lives in attributes
ending with ``_``, the calibration is stored on the estimator, and ``get_params`` /
``set_params`` / ``clone`` round-trip (what grid searches and pipelines rely on).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from exitnas.exits.learned import LearnedExitPolicy

STAGE_FLOPS = [100.0, 60.0, 40.0]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(3, 300, 4))
    logits[1:, np.arange(300), labels] += np.array([[1.5], [3.0]])  # later exits know more
    return logits, labels


def _policy() -> LearnedExitPolicy:
    return LearnedExitPolicy(LogisticRegression(C=0.5), target="oracle", random_state=3)


def test_the_constructor_stores_its_parameters_and_nothing_else() -> None:
    policy = _policy()
    params = policy.get_params(deep=False)
    assert set(params) == {"estimator", "target", "random_state"}
    assert vars(policy) == params
    assert policy.get_params()["estimator__C"] == 0.5  # deep: the classifier's own


def test_get_params_set_params_and_clone_round_trip(data) -> None:
    logits, labels = data
    policy = _policy().fit(logits, labels)
    copy = clone(policy)
    assert copy is not policy and copy.estimator is not policy.estimator
    assert copy.get_params(deep=False).keys() == policy.get_params(deep=False).keys()
    assert copy.target == "oracle" and copy.random_state == 3
    assert copy.get_params()["estimator__C"] == 0.5
    with pytest.raises(NotFittedError):  # a clone is unfitted
        check_is_fitted(copy)
    assert copy.set_params(target="final", estimator__C=2.0) is copy
    assert copy.target == "final" and copy.estimator.C == 2.0
    assert policy.target == "oracle" and policy.estimator.C == 0.5  # the original is untouched
    np.testing.assert_array_equal(  # same parameters, same fit
        clone(policy).fit(logits, labels).score_samples(logits), policy.score_samples(logits)
    )


def test_fitted_state_lives_in_trailing_underscore_attributes(data) -> None:
    logits, labels = data
    policy = _policy()
    with pytest.raises(NotFittedError):
        policy.score_samples(logits)
    before = dict(vars(policy))
    policy.fit(logits, labels)
    added = set(vars(policy)) - set(before)
    assert added == {"estimator_", "classes_", "n_features_in_"}
    assert all(vars(policy)[name] is value for name, value in before.items())  # params as given
    check_is_fitted(policy)


def test_calibration_is_stored_on_the_estimator(data) -> None:
    logits, labels = data
    policy = _policy().fit(logits, labels)
    with pytest.raises(NotFittedError):  # no calibration yet
        policy.exits(logits)
    thresholds = policy.calibrate(logits, labels, STAGE_FLOPS, 160.0)
    np.testing.assert_array_equal(policy.thresholds_, thresholds)
    np.testing.assert_array_equal(policy.exits(logits), policy.exits(logits, thresholds))
    accuracy, flops, fractions = policy.evaluate(logits, labels, STAGE_FLOPS)
    given = policy.evaluate(logits, labels, STAGE_FLOPS, thresholds)
    assert (accuracy, flops) == given[:2]
    np.testing.assert_array_equal(fractions, given[2])
    assert not hasattr(clone(policy), "thresholds_")
    policy.fit(logits, labels)  # a new fit drops the old calibration
    assert not hasattr(policy, "thresholds_")
