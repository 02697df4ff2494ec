"""Choices and error types of the policies layer, importable without NumPy, scikit-learn or torch.

The command line builds its parsers from these and its handlers raise these errors, so
``exitnas --help`` and a usage error stay fast; :mod:`~exitnas.policies.learned`,
:mod:`~exitnas.policies.study_policy` and :mod:`~exitnas.policies.profile` re-export them.
"""

from __future__ import annotations

from exitnas.errors import ExitnasError

__all__ = ["ESTIMATORS", "TARGETS", "PolicyError", "ProfileError"]

TARGETS = ("correct", "final", "oracle")  # what a learned exit policy predicts
ESTIMATORS = ("boosting", "logistic")  # the classifiers of ``exitnas policy fit --estimator``


class PolicyError(ExitnasError):
    """A stored or shipped exit policy that is missing, corrupt, untrusted or stale."""


class ProfileError(ExitnasError, ValueError):
    """A device profile file is missing, corrupt, or not a device profile."""
