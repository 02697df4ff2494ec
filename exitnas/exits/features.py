"""What a learned exit policy reads: cheap per-exit signals of cached logits.

:func:`exit_features` turns the ``(E, N, K)`` logits of a configuration's exits into ``(E, N, F)``
features named by :data:`FEATURES`; each uses only its exit and earlier ones, so it is available
when the decision at that exit is taken. :func:`check_logits` and :func:`check_labels` validate
the arrays every exit policy takes.
"""

from __future__ import annotations

import numpy as np

from exitnas.exits.rules import confidences, softmax

__all__ = ["FEATURES", "check_labels", "check_logits", "exit_features"]

FEATURES = (
    "max_probability",  # largest class probability of this exit
    "margin",  # top-1 minus top-2 class probability
    "entropy_confidence",  # 1 - H(p) / log K: 1 for one-hot, 0 for uniform
    "agrees_with_previous",  # 1 if argmax equals the previous exit's argmax (0 at exit 0)
    "agreement_fraction",  # share of earlier exits whose argmax equals this one's (0 at exit 0)
    "previous_max_probability",  # running max of earlier exits' max probability (0 at exit 0)
    "exit_position",  # exit index / (E - 1), 0 for a single exit
    "ensemble_probability",  # mean over this and earlier exits of the predicted class's prob.
    "previous_class_probability",  # previous exit's probability of this prediction (0 at 0)
)


def check_logits(logits: np.ndarray, min_exits: int = 1) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (exits, samples, classes); got shape {logits.shape}")
    if logits.shape[0] < min_exits or logits.shape[1] < 1 or logits.shape[2] < 2:
        raise ValueError(
            f"logits need >= {min_exits} exits, >= 1 sample and >= 2 classes; "
            f"got shape {logits.shape}"
        )
    return logits


def check_labels(labels: np.ndarray, num_samples: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (num_samples,):
        raise ValueError(f"labels must have shape ({num_samples},); got {labels.shape}")
    return labels


def exit_features(logits: np.ndarray, num_exits: int | None = None) -> np.ndarray:
    """Per (exit, sample) features of the exits' predictions, columns named by :data:`FEATURES`.

    Args:
        logits: ``(E, N, K)`` logits of the first ``E`` exits.
        num_exits: exits of the whole configuration (default ``E``); at run time, when only
            the first exits have run, it keeps ``exit_position`` the same as offline.

    Returns:
        ``(E, N, F)`` float64 features, ``F = len(FEATURES)``; each one uses only this exit and
        earlier ones, so it is available when the decision at this exit is taken.

    Example:
        >>> logits = np.array([[[2.0, 0.0]], [[0.0, 2.0]]])  # 2 exits, 1 sample, 2 classes
        >>> float(exit_features(logits)[1, 0, FEATURES.index("agrees_with_previous")])
        0.0
    """
    logits = check_logits(logits)
    num_given = logits.shape[0]
    num_exits = num_given if num_exits is None else num_exits
    if num_exits < num_given:
        raise ValueError(f"num_exits={num_exits} is below the {num_given} exits given")
    probs = softmax(logits)  # (E, N, K)
    max_prob = confidences(probs, "max_softmax")  # (E, N)
    preds = probs.argmax(axis=-1)  # (E, N)

    agrees_previous = np.zeros_like(max_prob)
    agrees_previous[1:] = preds[1:] == preds[:-1]

    same = preds[:, None, :] == preds[None, :, :]  # (E, E, N): exit i agrees with exit j
    earlier = np.tril(np.ones((num_given, num_given), dtype=bool), k=-1)  # j < i
    agreeing = (same & earlier[:, :, None]).sum(axis=1)  # (E, N)
    agreement_fraction = agreeing / np.maximum(np.arange(num_given), 1)[:, None]

    previous_max = np.zeros_like(max_prob)
    previous_max[1:] = np.maximum.accumulate(max_prob, axis=0)[:-1]

    position = np.arange(num_given, dtype=np.float64) / max(num_exits - 1, 1)
    position = np.broadcast_to(position[:, None], max_prob.shape)

    # probs[j, n, preds[i, n]]: every exit's probability of exit i's predicted class
    of_class = np.take_along_axis(probs[None], preds[:, None, :, None], axis=-1)[..., 0]
    upto = np.tril(np.ones((num_given, num_given)))  # j <= i
    ensemble = (of_class * upto[:, :, None]).sum(axis=1) / upto.sum(axis=1)[:, None]
    previous_of_class = np.zeros_like(max_prob)
    previous_of_class[1:] = of_class[np.arange(1, num_given), np.arange(num_given - 1)]

    columns = (
        max_prob,
        confidences(probs, "margin"),
        confidences(probs, "entropy"),
        agrees_previous,
        agreement_fraction,
        previous_max,
        position,
        ensemble,
        previous_of_class,
    )
    return np.stack(columns, axis=-1)  # (E, N, F)
