"""A study's learned policy: pooled over architectures, cross-fitted, stored without pickle."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio

from exitnas.exits.learned import LearnedExitPolicy
from exitnas.exits.options import PolicyError
from exitnas.exits.policy import (
    StudyPolicy,
    fit_study_policy,
    make_estimator,
    policy_from_bytes,
    policy_to_bytes,
)
from exitnas.storage.store import ProfileExistsError, StoredPolicy
from exitnas.storage.urls import open_store


def _logits(rng: np.random.Generator, exits: int, labels: np.ndarray) -> np.ndarray:
    """Exits that get better with depth: the true class gets a growing bonus."""
    logits = rng.normal(size=(exits, labels.size, 5))
    logits[:, np.arange(labels.size), labels] += np.linspace(0.5, 3.0, exits)[:, None]
    return logits


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    return [_logits(rng, 3, labels), _logits(rng, 2, labels), _logits(rng, 1, labels)], labels


@pytest.fixture(scope="module")
def fitted(data) -> StudyPolicy:
    logits, labels = data
    return fit_study_policy(logits, labels, folds=3, random_state=5, info={"note": "test"})


def test_folds_and_out_of_fold_scores(data, fitted: StudyPolicy) -> None:
    logits, labels = data
    assert np.bincount(fitted.folds).tolist() == [100, 100, 100]
    assert fitted.info["architectures"] == 2  # the single-exit one has nothing to decide
    assert fitted.info["rows"] == 2 * 300 + 1 * 300 and fitted.info["note"] == "test"
    scores = fitted.validation_scores(logits[0])
    # fold k's rows are scored by a policy fitted without them, the same as refitting by hand
    rows = fitted.folds == 1
    by_hand = LearnedExitPolicy(make_estimator("boosting"), "oracle", random_state=5 + 1 + 1)
    by_hand.fit([a[:, ~rows] for a in logits[:2]], labels[~rows])
    np.testing.assert_allclose(scores[:, rows], by_hand.score_samples(logits[0][:, rows]))
    assert not np.allclose(scores, fitted.scores(logits[0]))  # differs from in-sample scores
    with pytest.raises(ValueError, match=r"\(exits, 300, classes\)"):
        fitted.validation_scores(logits[0][:, :10])


def test_bad_fits(data) -> None:
    logits, labels = data
    with pytest.raises(ValueError, match="two exits or more"):
        fit_study_policy([logits[2]], labels)
    with pytest.raises(ValueError, match="target"):
        fit_study_policy(logits, labels, target="bogus")
    with pytest.raises(ValueError, match="estimator"):
        fit_study_policy(logits, labels, estimator="bogus")


@pytest.mark.parametrize("estimator", ["boosting", "logistic"])
def test_bytes_round_trip(data, estimator: str) -> None:
    logits, labels = data
    policy = fit_study_policy(logits, labels, estimator=estimator)
    again = policy_from_bytes(policy_to_bytes(policy))
    np.testing.assert_array_equal(again.scores(logits[0]), policy.scores(logits[0]))
    np.testing.assert_array_equal(
        again.validation_scores(logits[1]), policy.validation_scores(logits[1])
    )
    deployed = policy_from_bytes(policy_to_bytes(policy, deployed_only=True))
    assert deployed.fold_policies == () and deployed.info == policy.info
    np.testing.assert_array_equal(deployed.scores(logits[0]), policy.scores(logits[0]))


class Crafted:
    """A type outside the allow-list: loading it could run arbitrary code."""


def test_untrusted_or_corrupt_bytes_are_refused(fitted: StudyPolicy, tmp_path: Path) -> None:
    crafted = sio.dumps({"policy": Crafted(), "fold_policies": [], "folds": [], "info": "{}"})
    with pytest.raises(PolicyError, match="types exitnas does not load: .*Crafted"):
        policy_from_bytes(crafted, "crafted.skops")
    with pytest.raises(PolicyError, match="not a readable exit policy"):
        policy_from_bytes(b"\x80\x04K\x01.")  # a pickle
    blob = policy_to_bytes(fitted, deployed_only=True)
    with pytest.raises(PolicyError):
        policy_from_bytes(blob[: len(blob) // 2])  # truncated
    # a well-formed skops file of another format version
    path = tmp_path / "other.skops"
    sio.dump(
        {"policy": fitted.policy, "fold_policies": [], "folds": [], "info": '{"format": 99}'},
        path,
        compression=zipfile.ZIP_DEFLATED,
    )
    with pytest.raises(PolicyError, match="policy format 99"):
        policy_from_bytes(path.read_bytes())


def test_store_round_trip_and_replace(fitted: StudyPolicy, tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'study.db'}")
    record = StoredPolicy("s", "learned", "k" * 64, "2026-01-01T00:00:00+00:00", "{}", b"1")
    store.put_policy(record)
    assert store.get_policy("s", "learned") == record
    assert store.get_policy("s", "other") is None and store.get_policy("t", "learned") is None
    newer = StoredPolicy("s", "learned", "k" * 64, "2026-01-02T00:00:00+00:00", "{}", b"2")
    with pytest.raises(ProfileExistsError, match="--replace"):
        store.put_policy(newer)
    assert store.get_policy("s", "learned") == record  # untouched
    store.put_policy(newer, replace=True)
    assert store.get_policy("s", "learned") == newer


def test_a_policy_stored_before_the_exits_package_still_loads() -> None:
    """Policies written when the class lived in ``exitnas.policies.learned`` (run databases
    and bundles made before the re-layering) load, and score as they did then."""
    data = Path(__file__).parent / "data"
    blob = (data / "policy-old-module-path.skops").read_bytes()
    assert b"exitnas.policies.learned" in zipfile.ZipFile(io.BytesIO(blob)).read("schema.json")
    policy = policy_from_bytes(blob)
    assert isinstance(policy.policy, LearnedExitPolicy)
    rng = np.random.default_rng(0)  # the logits the stored scores were computed on
    labels = rng.integers(0, 5, 60)
    logits = rng.normal(size=(3, 60, 5))
    logits[:, np.arange(60), labels] += np.linspace(0.5, 3.0, 3)[:, None]
    expected = np.load(data / "policy-old-module-path-scores.npy")
    np.testing.assert_array_equal(policy.scores(logits), expected)
