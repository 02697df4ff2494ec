"""Choices and the error type of the exits layer, importable without NumPy, scikit-learn or torch.

The command line builds its parsers from these and its handlers raise these errors, so
``exitnas --help`` and a usage error stay fast; :mod:`~exitnas.exits.learned` and
:mod:`~exitnas.exits.policy` re-export them.
"""

from __future__ import annotations

from exitnas.errors import ExitnasError

__all__ = ["ESTIMATORS", "TARGETS", "PolicyError"]

TARGETS = ("correct", "final", "oracle")  # what a learned exit policy predicts
ESTIMATORS = ("boosting", "logistic")  # the classifiers of ``exitnas policy fit --estimator``


class PolicyError(ExitnasError):
    """A stored or shipped exit policy that is missing, corrupt, untrusted or stale."""


DEFAULT_POLICY = "learned"  # name the fitted policy is stored under
