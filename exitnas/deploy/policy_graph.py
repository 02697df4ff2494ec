"""A learned exit policy's classifier as an ONNX graph, in float64.

The ONNX runtime computes the policy's features in NumPy (``exit_features``) and the classifier's
probability of "exit here" with ONNX Runtime. Scores are compared with thresholds calibrated on
scikit-learn's float64 scores, which often equal a score exactly, so the graph works in float64:

- a ``StandardScaler`` + ``LogisticRegression`` pipeline (or any classifier skl2onnx converts in
  double) goes through ``skl2onnx.to_onnx`` with a double input;
- ``HistGradientBoostingClassifier`` (the default policy) is written as one ``TreeEnsemble``
  node (``ai.onnx.ml`` opset 5, double splits and leaves), then the baseline and a sigmoid:
  skl2onnx only writes float32 trees for it (``TreeEnsembleClassifier`` opset 1, thresholds
  rounded to float32, which moves samples across the thresholds) and, with current protobuf,
  fails on its boolean ``nodes_missing_value_tracks_true``;
- a constant policy (``DummyClassifier``: the target was constant at fit) needs no graph.

Every graph takes ``features`` ``(N, F)`` float64 and returns ``probabilities`` ``(N, 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exitnas.deploy.stage_graphs import OnnxExportError
from exitnas.exits.learned import FEATURES, LearnedExitPolicy

__all__ = ["export_policy_graph"]

POLICY_INPUT = "features"
POLICY_OUTPUT = "probabilities"
_OPSET = 18
_ML_OPSET = 5  # TreeEnsemble


def export_policy_graph(policy: LearnedExitPolicy, path: str | Path) -> dict[str, Any]:
    """Write ``policy``'s classifier to the ONNX file ``path`` (unless it is constant).

    Args:
        policy: a fitted :class:`~exitnas.policies.LearnedExitPolicy`.
        path: the ``.onnx`` file to write.

    Returns:
        The ``policy`` entry of ``onnx/stages.json``: ``features`` (column names), ``input``,
        ``output`` and ``positive_column``, or ``constant`` (the score of a constant policy);
        ``file`` is left for the caller to set.

    Raises:
        OnnxExportError: a classifier neither this module nor skl2onnx converts.
    """
    estimator = policy.estimator_
    classes = [int(c) for c in np.asarray(policy.classes_)]
    info: dict[str, Any] = {"features": list(FEATURES), "estimator": type(estimator).__name__}
    if 1 not in classes:  # fitted on negatives only: never exits
        return dict(info, constant=0.0)
    positive = classes.index(1)
    if type(estimator).__name__ == "DummyClassifier":
        return dict(info, constant=float(np.asarray(estimator.class_prior_)[positive]))
    if type(estimator).__name__ == "HistGradientBoostingClassifier":
        model = _hist_gradient_boosting(estimator)
        positive = 1  # the graph's columns: (1 - p, p)
    else:
        model = _skl2onnx(estimator)
    Path(path).write_bytes(model.SerializeToString())
    return dict(info, input=POLICY_INPUT, output=POLICY_OUTPUT, positive_column=positive)


def _skl2onnx(estimator: Any):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType

    try:
        return to_onnx(
            estimator,
            initial_types=[(POLICY_INPUT, DoubleTensorType([None, len(FEATURES)]))],
            options={id(estimator): {"zipmap": False}},
            target_opset={"": _OPSET, "ai.onnx.ml": 3},
        )
    except Exception as err:  # skl2onnx raises many types for unsupported models
        raise OnnxExportError(
            f"the exit policy's {type(estimator).__name__} does not convert to ONNX: "
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        ) from err


@dataclass
class _Forest:
    """Trees as ``TreeEnsemble``'s parallel attribute lists: internal nodes numbered over all
    trees (``features``, ``splits``, ``missing``, children), leaves likewise (``leaves``); a
    child is a leaf's number where its ``*_leaf`` flag is 1, else a node's."""

    roots: list[int] = field(default_factory=list)
    features: list[int] = field(default_factory=list)
    splits: list[float] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # 1: a missing value goes left (true)
    true_ids: list[int] = field(default_factory=list)
    true_leaf: list[int] = field(default_factory=list)
    false_ids: list[int] = field(default_factory=list)
    false_leaf: list[int] = field(default_factory=list)
    leaves: list[float] = field(default_factory=list)

    def add_tree(self, nodes: Any) -> None:
        """Append one of scikit-learn's tree predictors' ``nodes`` (left: ``value <= split``)."""
        leaf_at = {}
        for i, node in enumerate(nodes):
            if node["is_leaf"]:
                leaf_at[i] = len(self.leaves)
                self.leaves.append(float(node["value"]))
        internal = [i for i, node in enumerate(nodes) if not node["is_leaf"]]
        if not internal:  # a lone leaf: one split whose both sides are that leaf
            self.roots.append(len(self.features))
            self.features.append(0)
            self.splits.append(0.0)
            self.missing.append(0)
            self.true_ids.append(leaf_at[0])
            self.false_ids.append(leaf_at[0])
            self.true_leaf.append(1)
            self.false_leaf.append(1)
            return
        node_at = {i: len(self.features) + j for j, i in enumerate(internal)}
        self.roots.append(node_at[0])
        for i in internal:
            node = nodes[i]
            if node["is_categorical"]:
                raise OnnxExportError("a policy with categorical splits does not export")
            self.features.append(int(node["feature_idx"]))
            self.splits.append(float(node["num_threshold"]))
            self.missing.append(int(node["missing_go_to_left"]))
            for child, ids, flags in (
                (int(node["left"]), self.true_ids, self.true_leaf),
                (int(node["right"]), self.false_ids, self.false_leaf),
            ):
                is_leaf = bool(nodes[child]["is_leaf"])
                ids.append(leaf_at[child] if is_leaf else node_at[child])
                flags.append(int(is_leaf))

    def node(self, output: str) -> Any:
        """The ``TreeEnsemble`` node (double splits and leaves) summing the trees into
        ``output``."""
        from onnx import helper, numpy_helper

        modes = np.zeros(len(self.features), np.uint8)  # BRANCH_LEQ: true when value <= split
        return helper.make_node(
            "TreeEnsemble",
            [POLICY_INPUT],
            [output],
            domain="ai.onnx.ml",
            aggregate_function=1,  # SUM
            post_transform=0,  # NONE
            n_targets=1,
            tree_roots=self.roots,
            nodes_featureids=self.features,
            nodes_splits=numpy_helper.from_array(np.asarray(self.splits, np.float64), "splits"),
            nodes_modes=numpy_helper.from_array(modes, "modes"),
            nodes_truenodeids=self.true_ids,
            nodes_trueleafs=self.true_leaf,
            nodes_falsenodeids=self.false_ids,
            nodes_falseleafs=self.false_leaf,
            nodes_missing_value_tracks_true=self.missing,
            leaf_targetids=[0] * len(self.leaves),
            leaf_weights=numpy_helper.from_array(np.asarray(self.leaves, np.float64), "leaves"),
        )


def _hist_gradient_boosting(estimator: Any):
    """``p = sigmoid(baseline + sum of trees)`` of a binary ``HistGradientBoostingClassifier``
    as ``TreeEnsemble`` (double) -> Add -> Sigmoid -> ``[1 - p, p]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if getattr(estimator, "n_trees_per_iteration_", 1) != 1:
        raise OnnxExportError("only a binary HistGradientBoostingClassifier policy exports")
    forest = _Forest()
    for (predictor,) in estimator._predictors:
        forest.add_tree(predictor.nodes)
    baseline = float(np.asarray(estimator._baseline_prediction).ravel()[0])
    constants = [
        numpy_helper.from_array(np.array([baseline], np.float64), "baseline"),
        numpy_helper.from_array(np.array([1.0], np.float64), "one"),
    ]
    nodes = [
        forest.node("raw_sum"),
        helper.make_node("Add", ["raw_sum", "baseline"], ["raw"]),
        helper.make_node("Sigmoid", ["raw"], ["positive"]),
        helper.make_node("Sub", ["one", "positive"], ["negative"]),
        helper.make_node("Concat", ["negative", "positive"], [POLICY_OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "exitnas_policy",
        [helper.make_tensor_value_info(POLICY_INPUT, TensorProto.DOUBLE, [None, len(FEATURES)])],
        [helper.make_tensor_value_info(POLICY_OUTPUT, TensorProto.DOUBLE, [None, 2])],
        initializer=constants,
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", _OPSET),
            helper.make_opsetid("ai.onnx.ml", _ML_OPSET),
        ],
        producer_name="exitnas",
    )
    model.ir_version = 10  # what onnx 1.16 / onnxruntime 1.18 and later read
    onnx.checker.check_model(model)
    return model
