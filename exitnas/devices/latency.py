"""Predicting a stage's latency on a device from what the stage does.

:class:`StageLatencyModel` learns, from a device profile's measured stages
(:func:`~exitnas.devices.profile.measure_stage_latencies`), the median latency of a stage from
its descriptive features (:func:`~exitnas.devices.profile.stage_features`), so a sub-network
can be priced in milliseconds without running it. Two regressors are available:

- ``"linear"`` (default): a non-negative linear model on physically meaningful cost terms,
  ``ms = a*FLOPs*B + b*tokens^2*blocks*B + c*tokens*blocks*B*embed_dim + d*blocks + e*B +
  f*opens + ... + head_type + intercept``, weighted by ``1/ms^2`` so it minimises *relative*
  error. The work coefficients are non-negative (times per unit of work), so it extrapolates
  to bigger stages and batches.
- ``"boosting"``: gradient-boosted trees on log-features, predicting log latency. More
  flexible, but it cannot extrapolate beyond the measured range.

On a 2-core CPU profile of the quickstart study (49 configs, batch sizes 1 and 32, 100 repeats
in 20 interleaved passes; see benchmarks/RESULTS.md) the held-out MdAPE over ten splits was
9.0% (7.4-11.2%) for the linear model and 8.3% (7.1-10.1%) for boosting; the linear model
also extrapolates to bigger stages and batches, hence the default.

Example:
    >>> model = StageLatencyModel().fit(profile.timings)
    >>> ms = model.predict(stage_features(space, config, batch_size=32)).sum()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils.validation import check_is_fitted

from exitnas.devices.profile import StageFeatures, StageTiming
from exitnas.spaces.config import HEAD_TYPES

__all__ = ["StageLatencyModel", "latency_design"]

METHODS = ("linear", "boosting")


def latency_design(stages: Sequence[StageFeatures], method: str = "linear") -> np.ndarray:
    """The design matrix of ``stages`` for one of the regressors.

    Args:
        stages: described (or measured) stages.
        method: ``"linear"``: cost terms in natural units (GFLOPs, mega-token-blocks...);
            ``"boosting"``: log-scaled descriptive features.

    Returns:
        ``(len(stages), n_features)`` float array.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {METHODS}")
    rows = []
    for s in stages:
        bs, blocks, tokens = float(s.batch_size), float(s.blocks), float(s.tokens)
        heads = [float(s.head == h) for h in HEAD_TYPES]
        opens = float(s.opens_branch)
        refines = opens * float(s.refine_fraction > 0)
        if method == "linear":
            rows.append(
                [
                    s.flops * bs / 1e9,  # GFLOPs run: compute-bound time
                    tokens**2 * blocks * bs / 1e6,  # attention matrices (softmax, memory)
                    tokens * blocks * bs * s.embed_dim / 1e6,  # norms, activations (memory)
                    blocks,  # per-block dispatch overhead
                    bs,  # per-image overhead
                    opens,  # branch embedding overhead
                    opens * bs * s.grid**2 / 1e3,  # resizing and patchifying the images
                    s.keeps,  # token keeping: top-k, gathers, fusion (per step)
                    s.keeps * bs * tokens / 1e3,  # ... and the tokens they move
                    float(s.reuses),  # reusing the previous branch's class token
                    refines,  # CF-ViT: choosing informative tokens, re-splitting them
                    refines * bs * tokens / 1e3,
                    *heads,  # per-head dispatch overhead
                ]
            )
        else:
            rows.append(
                [
                    np.log(s.flops * bs),
                    np.log(tokens**2 * blocks * bs + 1.0),
                    np.log(bs),
                    blocks,
                    tokens,
                    s.grid,
                    opens,
                    s.keep_rate,
                    s.refine_fraction,
                    s.embed_dim,
                    s.keeps,
                    float(s.reuses),
                    *heads,
                ]
            )
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


class StageLatencyModel(RegressorMixin, BaseEstimator):
    """Regressor of a stage's median latency (ms) from its features (scikit-learn estimator).

    Fit on measured :class:`~exitnas.devices.profile.StageTiming` records; predict from
    :class:`~exitnas.devices.profile.StageFeatures` (timings are features too).

    Args:
        method: ``"linear"`` (non-negative linear cost model) or ``"boosting"``.
        n_estimators: trees of the boosting model.
        random_state: seed of the boosting model's subsampling.

    Attributes:
        regressor_: the fitted scikit-learn regressor.
        n_features_in_: columns of the design matrix.
    """

    def __init__(self, method: str = "linear", n_estimators: int = 300, random_state=None):
        self.method = method
        self.n_estimators = n_estimators
        self.random_state = random_state

    def fit(self, timings: Sequence[StageTiming], y: Any = None) -> StageLatencyModel:
        """Fit on measured stages.

        Args:
            timings: measured stages; their ``median_ms`` is the target.
            y: optional targets (ms) overriding the timings' medians.

        Returns:
            self.
        """
        if not len(timings):
            raise ValueError("StageLatencyModel.fit needs at least one timing")
        target = np.asarray(
            [t.median_ms for t in timings] if y is None else y, dtype=np.float64
        ).ravel()
        if target.shape[0] != len(timings) or np.any(target <= 0):
            raise ValueError("latency targets must be positive, one per timing")
        x = latency_design(timings, self.method)
        if self.method == "linear":
            regressor: Any = LinearRegression(positive=True)
            regressor.fit(x, target, sample_weight=1.0 / target**2)
        else:
            regressor = GradientBoostingRegressor(
                n_estimators=self.n_estimators,
                learning_rate=0.05,
                max_depth=3,
                subsample=0.8,
                random_state=self.random_state,
            )
            regressor.fit(x, np.log(target))
        self.regressor_ = regressor
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, stages: Sequence[StageFeatures]) -> np.ndarray:
        """Predicted median latency (ms) of each stage.

        Args:
            stages: described stages (``stage_features``) or measured ones.

        Returns:
            ``(len(stages),)`` array of milliseconds, positive.
        """
        check_is_fitted(self, "regressor_")
        if not len(stages):
            return np.zeros(0)
        x = latency_design(stages, self.method)
        pred = self.regressor_.predict(x)
        if self.method == "boosting":
            return np.exp(pred)
        return np.maximum(pred, 1e-6)

    def evaluate(
        self,
        timings: Sequence[StageTiming],
        test_fraction: float = 0.3,
        random_state: int = 0,
        n_splits: int = 1,
    ) -> dict[str, Any]:
        """Held-out error: fit a clone on some stages, predict the others.

        Whole stages are held out (every batch size of a stage goes to the same side; stages
        with identical features in different configs count as one), so the error measures
        prediction of unseen stages, not of unseen batch sizes.

        Args:
            timings: measured stages.
            test_fraction: fraction of distinct stages held out.
            random_state: seed of the splits.
            n_splits: random splits; the reported MdAPE is their median.

        Returns:
            ``{"mdape": median over splits of median |pred - true| / true (a fraction: 0.05 is
            5%), "mdape_splits": [...], "n_train": ..., "n_test": ...}``, counts in timings
            of the first split.
        """
        signatures = [t.signature() for t in timings]
        ids = {sig: i for i, sig in enumerate(dict.fromkeys(signatures))}
        groups = np.asarray([ids[sig] for sig in signatures])
        if len(ids) < 2:
            raise ValueError("evaluate needs timings of at least two distinct stages")
        splitter = GroupShuffleSplit(
            n_splits=n_splits, test_size=test_fraction, random_state=random_state
        )
        errors, counts = [], []
        for train, test in splitter.split(np.zeros(len(timings)), groups=groups):
            model = clone(self).fit([timings[i] for i in train])
            held = [timings[i] for i in test]
            true = np.asarray([t.median_ms for t in held])
            errors.append(float(np.median(np.abs(model.predict(held) - true) / true)))
            counts.append((len(train), len(test)))
        return {
            "mdape": float(np.median(errors)),
            "mdape_splits": errors,
            "n_train": counts[0][0],
            "n_test": counts[0][1],
        }
