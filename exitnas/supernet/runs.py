"""Reading a trained supernet back from its run folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from exitnas.errors import CheckpointError, ConfigError
from exitnas.spaces import StudyConfig
from exitnas.supernet.checkpoint import load_weights
from exitnas.supernet.supervit import SuperViT
from exitnas.supernet.train import DESCRIPTION, WEIGHTS, build_supernet

__all__ = ["load_supernet"]


def load_supernet(
    run_dir: str | Path, study: StudyConfig | None = None, map_location: str = "cpu"
) -> tuple[SuperViT, StudyConfig]:
    """Load the trained supernet of a run folder (``runs/<study>``).

    Args:
        run_dir: folder written by ``exitnas train``.
        study: if given, the run must have been trained for this study.
        map_location: device for the weights.

    Returns:
        The supernet in eval mode and the study it was trained for.

    Raises:
        CheckpointError: the folder holds no finished supernet, its files are corrupt, or it
            was trained for a different study.
    """
    run = Path(run_dir)
    path = run / DESCRIPTION
    if not path.is_file():
        raise CheckpointError(f"no trained supernet in {run} (missing {DESCRIPTION}); run train")
    try:
        description = json.loads(path.read_text())
        trained = StudyConfig.from_dict(description["study"])
    except (OSError, ValueError, KeyError, ConfigError) as err:
        raise CheckpointError(f"{path} is unreadable or corrupt ({err})") from None
    if not description.get("training", {}).get("complete"):
        raise CheckpointError(f"{run} holds an unfinished training run; run train to finish it")
    if study is not None and study.key() != trained.key():
        raise CheckpointError(
            f"{run} was trained for another study: {trained.key_differences(study)} "
            "(here: the run, there: the study file)"
        )
    tensors, meta = load_weights(run / WEIGHTS)
    if meta.get("study_key") != trained.key():
        raise CheckpointError(f"{run / WEIGHTS} does not belong to {path} (study key mismatch)")
    model = build_supernet(trained)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{run / WEIGHTS} does not fit the study's supernet: {first}"
        ) from None
    return model.to(torch.device(map_location)).eval(), trained
