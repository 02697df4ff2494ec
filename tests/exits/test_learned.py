"""The learned exit policy, the oracle and trade-off curves on synthetic per-exit logits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from exitnas.exits import (
    FEATURES,
    LearnedExitPolicy,
    TradeoffCurve,
    area_between,
    calibrate_thresholds,
    exit_features,
    oracle_exits,
    tradeoff_curve,
)
from exitnas.exits.rules import softmax

STAGE_FLOPS = (100.0, 50.0, 50.0, 50.0)  # cumulative: 100, 150, 200, 250


def synthetic(
    rng: np.random.Generator, num_exits: int = 4, num_samples: int = 600, num_classes: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(E, N, K)`` whose later exits are more accurate and whose confidence is telling.

    Each sample has a difficulty; exit k gets it right when the difficulty is below the exit's
    accuracy, with a larger logit boost the easier the sample. Wrong exits pick a random wrong
    class with a smaller boost.
    """
    labels = rng.integers(num_classes, size=num_samples)
    difficulty = rng.uniform(size=num_samples)
    accuracy = np.linspace(0.5, 0.9, num_exits)
    logits = rng.normal(size=(num_exits, num_samples, num_classes))
    samples = np.arange(num_samples)
    for k in range(num_exits):
        correct = difficulty < accuracy[k]
        wrong = (labels + rng.integers(1, num_classes, size=num_samples)) % num_classes
        boost = np.where(correct, 2.0 + 4.0 * (accuracy[k] - difficulty), 1.5)
        logits[k, samples, np.where(correct, labels, wrong)] += boost + rng.normal(
            scale=0.5, size=num_samples
        )
    return logits, labels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Gradient boosting on 1,800 rows is 10x faster on one OpenMP thread than on a busy two."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray]:
    # 2,000 samples: 6,000 exit decisions, what the default boosting is regularised for
    return synthetic(np.random.default_rng(0), num_samples=2000)


@pytest.fixture(scope="module")
def val() -> tuple[np.ndarray, np.ndarray]:
    return synthetic(np.random.default_rng(1))


@pytest.fixture(scope="module")
def fitted(train) -> LearnedExitPolicy:
    return LearnedExitPolicy(random_state=0).fit(*train)


def test_features_on_a_hand_made_case() -> None:
    logits = np.array([[[2.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]], [[3.0, 0.0, 0.0]]])  # preds 0, 1, 0
    features = exit_features(logits)
    assert features.shape == (3, 1, len(FEATURES))
    column = {name: features[:, 0, i] for i, name in enumerate(FEATURES)}
    probs = softmax(logits)[:, 0]  # (E, K)
    top = probs.max(axis=-1)
    np.testing.assert_allclose(column["max_probability"], top)
    np.testing.assert_allclose(column["margin"], top - np.sort(probs, axis=-1)[:, -2])
    entropy = -(probs * np.log(probs)).sum(axis=-1)
    np.testing.assert_allclose(column["entropy_confidence"], 1 - entropy / np.log(3))
    np.testing.assert_array_equal(column["agrees_with_previous"], [0, 0, 0])
    np.testing.assert_array_equal(column["agreement_fraction"], [0, 0, 0.5])
    np.testing.assert_allclose(column["previous_max_probability"], [0, top[0], top[:2].max()])
    np.testing.assert_array_equal(column["exit_position"], [0, 0.5, 1])


def test_features_agreement_and_bad_shapes() -> None:
    logits = np.tile(np.array([1.0, 0.0]), (4, 2, 1))  # every exit predicts class 0
    features = exit_features(logits)
    assert features.shape == (4, 2, len(FEATURES))
    for name in ("agrees_with_previous", "agreement_fraction"):
        np.testing.assert_array_equal(features[:, 0, FEATURES.index(name)], [0, 1, 1, 1])
    with pytest.raises(ValueError, match="exits, samples, classes"):
        exit_features(np.zeros((2, 3)))


def test_estimator_contract(train) -> None:
    policy = LearnedExitPolicy(target="final", random_state=3)
    params = policy.get_params()
    assert params == {"estimator": None, "target": "final", "random_state": 3}
    assert vars(policy) == params  # no logic and no other attributes in __init__
    copy = clone(policy)
    assert copy.get_params() == params and copy is not policy
    assert policy.set_params(target="correct") is policy and policy.target == "correct"
    with pytest.raises(NotFittedError):
        policy.score_samples(train[0])
    assert policy.fit(*train) is policy
    assert policy.n_features_in_ == len(FEATURES)
    assert policy.classes_.tolist() == [0, 1]
    assert not hasattr(clone(policy), "estimator_")


def test_reproducible_and_pluggable(train, val) -> None:
    first = LearnedExitPolicy(random_state=7).fit(*train).score_samples(val[0])
    second = LearnedExitPolicy(random_state=7).fit(*train).score_samples(val[0])
    np.testing.assert_array_equal(first, second)
    for policy in (
        LearnedExitPolicy(LogisticRegression(max_iter=500), random_state=0),
        LearnedExitPolicy(random_state=np.random.default_rng(0), target="final"),
    ):
        scores = policy.fit(*train).score_samples(val[0])
        assert scores.shape == (4, 600) and ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(ValueError, match="target"):
        LearnedExitPolicy(target="bogus").fit(*train)


def test_scores(fitted, val) -> None:
    scores = fitted.score_samples(val[0])
    assert scores.shape == (4, 600)
    np.testing.assert_array_equal(scores[-1], 1.0)
    correct = val[0].argmax(axis=-1) == val[1]
    # Scores rank correct predictions above wrong ones at every early exit, at least as well
    # as the max-softmax confidence does (better where earlier exits add evidence).
    confidence = softmax(val[0]).max(axis=-1)
    for k in range(3):
        learned, baseline = (
            roc_auc_score(correct[k], scores[k]),
            roc_auc_score(correct[k], confidence[k]),
        )
        assert learned > 0.7 and learned >= baseline - 0.01
        if k > 0:
            assert learned > baseline + 0.02
    # At run time only the first exits have run: same scores as offline for those exits.
    partial = fitted.score_samples(val[0][:2], num_exits=4)
    np.testing.assert_allclose(partial, scores[:2])
    # Another configuration with fewer exits is scored too (features do not depend on E).
    assert fitted.score_samples(val[0][:3]).shape == (3, 600)


def test_pooled_fit_over_architectures(train) -> None:
    logits, labels = train
    pooled = LearnedExitPolicy(random_state=0).fit([logits, logits[1:]], labels)
    assert pooled.score_samples(logits).shape == logits.shape[:2]
    with pytest.raises(ValueError, match="at least one architecture"):
        LearnedExitPolicy().fit([], labels)


def test_pipeline_estimator_is_seeded(train) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=5))
    first = LearnedExitPolicy(pipeline, random_state=4).fit(*train)
    second = LearnedExitPolicy(pipeline, random_state=4).fit(*train)
    assert first.estimator_.get_params()["randomforestclassifier__random_state"] is not None
    np.testing.assert_array_equal(first.score_samples(train[0]), second.score_samples(train[0]))


@pytest.mark.parametrize("right", [True, False])
def test_one_class_at_fit(right: bool) -> None:
    logits = np.tile(np.array([3.0, 0.0]), (3, 20, 1))  # every exit predicts class 0
    labels = np.zeros(20, dtype=int) if right else np.ones(20, dtype=int)
    policy = LearnedExitPolicy(random_state=0).fit(logits, labels)
    assert policy.classes_.tolist() == [int(right)]
    scores = policy.score_samples(logits)
    np.testing.assert_array_equal(scores[:-1], float(right))
    np.testing.assert_array_equal(scores[-1], 1.0)


def test_calibration_meets_budget(fitted, val) -> None:
    logits, labels = val
    for budget in (100.0, 140.0, 180.0, 220.0, 250.0):
        shared = fitted.calibrate(logits, labels, STAGE_FLOPS, budget, refine=False)
        refined = fitted.calibrate(logits, labels, STAGE_FLOPS, budget)
        assert shared.shape == refined.shape == (3,)
        acc_shared, flops_shared, _ = fitted.evaluate(logits, labels, STAGE_FLOPS, shared)
        acc, flops, fractions = fitted.evaluate(logits, labels, STAGE_FLOPS, refined)
        assert flops <= budget and flops_shared <= budget
        assert acc >= acc_shared  # refinement starts from the shared threshold
        assert fractions.shape == (4,) and fractions.sum() == pytest.approx(1.0)
        taken = fitted.exits(logits, refined)
        assert taken.shape == (600,) and np.bincount(taken, minlength=4)[0] / 600 == fractions[0]
    with pytest.raises(ValueError, match=r"cheapest achievable expected cost 100 FLOPs"):
        fitted.calibrate(logits, labels, STAGE_FLOPS, 99.0)


def test_calibrate_thresholds_hand_made() -> None:
    scores = np.array([[0.9, 0.2], [1.0, 1.0]])
    correct = np.array([[True, False], [True, True]])
    np.testing.assert_array_equal(calibrate_thresholds(scores, correct, [1.0, 1.0], 1.0), [0.0])
    # Budget 1.5 lets sample 1 go on to exit 1, where it is right: threshold between 0.2 and 0.9.
    (threshold,) = calibrate_thresholds(scores, correct, [1.0, 1.0], 1.5)
    assert 0.2 < threshold <= 0.9


def test_oracle_exits() -> None:
    # Exit predictions per sample: s0 right at 0; s1 right at 2 only; s2 never right.
    logits = np.zeros((3, 3, 2))
    logits[:, 0, 0] = [1, 1, 1]
    logits[:, 1, 0] = [1, 1, -1]
    logits[:, 2, 0] = [-1, -1, -1]
    labels = np.array([0, 1, 0])
    np.testing.assert_array_equal(oracle_exits(logits, labels), [0, 2, 2])
    np.testing.assert_array_equal(oracle_exits(logits, labels, [1, 1, 1], 1.0), [0, 0, 0])
    np.testing.assert_array_equal(oracle_exits(logits, labels, [1, 1, 1], 5 / 3), [0, 2, 0])
    with pytest.raises(ValueError, match="cheapest achievable expected cost 1 FLOPs"):
        oracle_exits(logits, labels, [1, 1, 1], 0.5)


def test_tradeoff_curves(fitted, val) -> None:
    budgets = [110.0, 140.0, 170.0, 200.0, 230.0]
    curves = tradeoff_curve(fitted, *val, STAGE_FLOPS, budgets)
    for curve in (curves.max_softmax, curves.learned, curves.oracle):
        assert curve.budgets == tuple(budgets)
        assert all(
            f <= b for f, b in zip(curve.flops, budgets, strict=True)
        )  # measured on calibration data
    for soft, learned, oracle in zip(
        curves.max_softmax.accuracy, curves.learned.accuracy, curves.oracle.accuracy, strict=True
    ):
        assert learned >= soft - 0.02
        assert oracle >= max(soft, learned)
    assert area_between(curves.learned, curves.max_softmax) >= -0.01
    assert area_between(curves.oracle, curves.learned) > 0


def test_tradeoff_on_a_test_split(train, val) -> None:
    policy = LearnedExitPolicy(random_state=0).fit(*val)
    curves = tradeoff_curve(policy, *val, STAGE_FLOPS, [150.0, 200.0], *train, refine=True)
    assert len(curves.learned.accuracy) == 2 and all(0 < a <= 1 for a in curves.oracle.accuracy)
    with pytest.raises(ValueError, match="both"):
        tradeoff_curve(policy, *val, STAGE_FLOPS, [150.0], test_logits=train[0])


def test_area_between() -> None:
    a = TradeoffCurve("a", (0.0, 10.0), (0.0, 10.0), (0.5, 0.7))
    b = TradeoffCurve("b", (0.0, 20.0), (0.0, 20.0), (0.4, 0.8))  # 0.6 at 10 FLOPs
    assert area_between(a, b) == pytest.approx(0.1)
    assert area_between(a, b, normalize=False) == pytest.approx(1.0)
    assert area_between(b, a) == pytest.approx(-0.1)
    far = TradeoffCurve("far", (30.0, 40.0), (30.0, 40.0), (0.5, 0.6))
    with pytest.raises(ValueError, match="do not overlap"):
        area_between(a, far)


def test_oracle_target_is_the_oracles_decision() -> None:
    from exitnas.exits.learned import _targets

    preds = np.array([[0, 1, 2], [1, 1, 0], [1, 0, 0]])  # (exits, samples)
    labels = np.array([1, 1, 9])  # sample 2: no exit is ever right
    # sample 0 is wrong at exit 0 but right later: leaving at exit 0 loses; elsewhere nothing is
    np.testing.assert_array_equal(
        _targets(preds, labels, "oracle"), [[False, True, True], [True, True, True], [True] * 3]
    )
    np.testing.assert_array_equal(_targets(preds, labels, "correct"), preds == labels)
    np.testing.assert_array_equal(_targets(preds, labels, "final"), preds == preds[-1])
